"""A WHIP publisher process for lip-sync tests: a white flash and a 1 kHz beep together.

Every `PERIOD_S` seconds, video turns white for `FLASH_S` and audio beeps
for as long, from the same media instant: both tracks are paced from one
shared start time, so flash n and beep n leave this process together.
Between flashes the picture is dark grey and the audio is silence.

A grey bar moves across the picture one step per frame, so a recording
that froze shows it.

Run as `python3 flash_beep.py BASE_URL ROOM TOKEN [JITTER_MS LOSS]`; it
prints "published" once the answer is applied and publishes until killed
(SIGTERM/SIGINT). With JITTER_MS and LOSS, media goes through a
`ImpairingRelay` on 127.0.0.1 that delays each RTP/RTCP packet sent to the
service by 0 to JITTER_MS (order kept, as on one network path) and drops
a LOSS fraction of them; besides, every `LOST_FOR_GOOD_EVERY_S` it loses one
video packet for good (every retransmission of it too), which only a key
frame repairs. On exit it then prints a JSON line: the media times (s) of
those losses and of the key frame requests (PLI/FIR) it received.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import signal
import sys
import time
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from publishers import whip_publish

PERIOD_S = 2.0
FLASH_S = 0.1
BEEP_HZ = 1000.0
FPS = 30
WIDTH, HEIGHT = 320, 180  # small: the encoder's delay stays small too
SAMPLE_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms
VIDEO_CLOCK = 90_000
DARK, WHITE, BAR = 40, 235, 128  # luma
BAR_WIDTH = 8
# Midway between two flashes, so the picture has recovered before the next one.
LOST_FOR_GOOD_EVERY_S, LOST_FOR_GOOD_PHASE_S = 2 * PERIOD_S, PERIOD_S / 4


class _SharedPace:
    """Media time zero for every track of the publisher."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def media_time(self) -> float:
        return time.monotonic() - self.start

    async def wait_for(self, media_time: float) -> None:
        delay = self.start + media_time - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def index_now(self, period: float) -> int:
        """The first frame index not yet due (a track starting late skips what it missed)."""
        return max(0, math.ceil((time.monotonic() - self.start) / period))


def flashing(media_time: float) -> bool:
    return (media_time % PERIOD_S) < FLASH_S - 1e-9


class FlashTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, pace: _SharedPace) -> None:
        super().__init__()
        self._pace = pace
        self._index: int | None = None
        self._images = {}
        for level in (DARK, WHITE):
            image = np.full((HEIGHT * 3 // 2, WIDTH), 128, np.uint8)  # yuv420p: Y, then U and V
            image[:HEIGHT] = level
            self._images[level] = image

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = self._pace.index_now(1 / FPS)
        index, self._index = self._index, self._index + 1
        media_time = index / FPS
        await self._pace.wait_for(media_time)
        image = self._images[WHITE if flashing(media_time) else DARK].copy()
        x = index * 2 % (WIDTH - BAR_WIDTH)
        image[:HEIGHT, x : x + BAR_WIDTH] = BAR
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = index * VIDEO_CLOCK // FPS
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class BeepTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, pace: _SharedPace) -> None:
        super().__init__()
        self._pace = pace
        self._index: int | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = self._pace.index_now(AUDIO_FRAME / SAMPLE_RATE)
        index, self._index = self._index, self._index + 1
        first = index * AUDIO_FRAME
        await self._pace.wait_for(first / SAMPLE_RATE)
        times = (first + np.arange(AUDIO_FRAME)) / SAMPLE_RATE
        on = (times % PERIOD_S) < FLASH_S - 1e-9
        samples = np.where(on, 0.5 * 32767 * np.sin(2 * np.pi * BEEP_HZ * times), 0)
        frame = av.AudioFrame.from_ndarray(
            samples.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first
        frame.time_base = Fraction(1, SAMPLE_RATE)
        return frame


class _Socket(asyncio.DatagramProtocol):
    """One relay socket on 127.0.0.1 standing in for `stands_for`."""

    def __init__(self, relay: ImpairingRelay, stands_for: tuple[str, int], toward_service: bool):
        self.relay = relay
        self.stands_for = stands_for
        self.toward_service = toward_service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay.forward(self, data, addr)


class ImpairingRelay:
    """A UDP relay between this publisher's ICE candidates and the service's, on 127.0.0.1.

    Each service candidate gets a socket the publisher sends to, each
    publisher candidate one the service sends to, so both sides see packets
    coming from the candidates they were given. Packets to the service that
    are RTP or RTCP (first byte 128-191) are delayed and dropped; STUN and
    DTLS pass untouched so the connection sets up.
    """

    CANDIDATE = re.compile(r"(a=candidate:\S+ \d+ udp \d+ )(\d+\.\d+\.\d+\.\d+) (\d+)", re.I)
    RTPMAP = re.compile(r"a=rtpmap:(\d+) ([\w-]+)/", re.I)

    def __init__(self, jitter_s: float, loss: float, pace: _SharedPace) -> None:
        self.jitter_s = jitter_s
        self.loss = loss
        self.pace = pace
        self._sockets: dict[tuple[str, int], _Socket] = {}  # by the address it stands for
        self._last_departure = 0.0
        self.delayed = self.dropped = 0
        # payload types of the answer's video section: media, and retransmissions (RTX)
        self._video_types: set[int] = set()
        self._rtx_types: set[int] = set()
        self._lost_for_good: set[int] = set()  # RTP timestamps
        self._lost_sequences: set[int] = set()
        self.lost_for_good_at: list[float] = []  # media times
        self._next_loss_at = LOST_FOR_GOOD_EVERY_S + LOST_FOR_GOOD_PHASE_S

    async def rewrite(self, sdp: str, toward_service: bool) -> str:
        """`sdp` with every IPv4 candidate replaced by a relay socket on 127.0.0.1 standing for it.

        Candidates are this machine's addresses (loopback or its own
        interfaces), so the relay's traffic never leaves the machine.
        """
        if toward_service:
            video = sdp[sdp.find("m=video") :] if "m=video" in sdp else ""
            for payload_type, name in self.RTPMAP.findall(video.split("m=audio")[0]):
                kind = self._rtx_types if name.lower() == "rtx" else self._video_types
                kind.add(int(payload_type))
        loop = asyncio.get_running_loop()
        ports = {}
        for match in self.CANDIDATE.finditer(sdp):
            address = (match.group(2), int(match.group(3)))
            if address not in self._sockets:
                _, socket = await loop.create_datagram_endpoint(
                    lambda a=address: _Socket(self, a, toward_service),
                    local_addr=("127.0.0.1", 0),
                )
                self._sockets[address] = socket
            ports[address] = self._sockets[address].transport.get_extra_info("sockname")[1]
        return self.CANDIDATE.sub(
            lambda m: f"{m.group(1)}127.0.0.1 {ports[(m.group(2), int(m.group(3)))]}", sdp
        )

    def forward(self, socket: _Socket, data: bytes, sender: tuple[str, int]) -> None:
        """A packet to `socket` from `sender`: out through the socket standing for the sender."""
        via = self._sockets.get(sender[:2])
        if via is None or via.transport is None:
            return
        if not socket.toward_service or not 128 <= data[0] < 192:
            via.transport.sendto(data, socket.stands_for)
            return
        if random.random() < self.loss or self._loses_for_good(data):
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        # strictly after the previous packet: asyncio's timer heap does not keep the
        # order of callbacks due at the same time (measured: 18 % of audio packets
        # reordered, which the receiver drops as it drops any audio packet older
        # than one it has passed on)
        departure = max(loop.time() + random.uniform(0, self.jitter_s), self._last_departure + 1e-6)
        self._last_departure = departure
        self.delayed += 1
        loop.call_at(departure, via.transport.sendto, data, socket.stands_for)

    def _loses_for_good(self, packet: bytes) -> bool:
        """Whether `packet` is the video packet lost now, or one lost before or its resending.

        The payload is encrypted (SRTP), so a retransmission (RTX, RFC 4588) is
        known by its header's timestamp, its original's: every packet of the frame
        that lost a packet is lost for good when resent.
        """
        payload_type = packet[1] & 0x7F
        timestamp = int.from_bytes(packet[4:8], "big")
        if payload_type in self._rtx_types:
            return timestamp in self._lost_for_good
        if payload_type not in self._video_types:
            return False
        sequence = int.from_bytes(packet[2:4], "big")
        if sequence in self._lost_sequences:  # resent without RTX
            return True
        now = self.pace.media_time()
        if now < self._next_loss_at:
            return False
        self._next_loss_at += LOST_FOR_GOOD_EVERY_S
        self._lost_for_good.add(timestamp)
        self._lost_sequences.add(sequence)
        self.lost_for_good_at.append(now)
        return True


async def main(base_url: str, room: str, token: str, jitter_ms: str = "", loss: str = "") -> None:
    pace = _SharedPace()
    filters = {}
    relay = None
    if jitter_ms:
        relay = ImpairingRelay(float(jitter_ms) / 1000, float(loss), pace)
        filters = {
            "offer_filter": lambda sdp: relay.rewrite(sdp, toward_service=False),
            "answer_filter": lambda sdp: relay.rewrite(sdp, toward_service=True),
        }
    session = await whip_publish(
        base_url, room, token, [FlashTrack(pace), BeepTrack(pace)], **filters
    )
    print("published", flush=True)
    requested_at: list[float] = []
    for sender in session.pc.getSenders():
        if sender.track is not None and sender.track.kind == "video":
            # aiortc calls this on every PLI or FIR it receives
            send_keyframe = sender._send_keyframe
            sender._send_keyframe = lambda s=send_keyframe: (
                requested_at.append(pace.media_time()),
                s(),
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await session.close()
    if relay is not None:
        report = {
            "start": pace.start,
            "lost_for_good": relay.lost_for_good_at,
            "keyframe_requests": requested_at,
        }
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
