"""Pre-encoded H.264 for passthrough tests and benchmarks.

`make_h264_file` encodes a moving test picture once into a raw Annex B
`.h264` file; `read_h264_packets` demuxes it into access units; and
`H264PacketTrack` hands those `av.Packet`s to aiortc, which packetizes them
into RTP as they are (no encoder runs on the publishing side either).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

VIDEO_CLOCK_RATE = 90_000


def make_h264_file(
    path: str | Path,
    *,
    seconds: float,
    fps: int = 30,
    width: int = 640,
    height: int = 360,
    bitrate_kbps: int = 1000,
    keyframe_interval_s: float = 1.0,
) -> Path:
    """Encode `seconds` of a moving gradient with noise (so it costs real bits) as Annex B."""
    path = Path(path)
    gop = max(1, round(keyframe_interval_s * fps))
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = Fraction(fps, 1)
    encoder.bit_rate = bitrate_kbps * 1000
    encoder.options = {
        "profile": "baseline",  # what WebRTC's H.264 (profile-level-id 42e01f) carries
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"
        f":vbv-maxrate={bitrate_kbps}:vbv-bufsize={bitrate_kbps}",
    }
    encoder.open()
    rng = np.random.default_rng(7)
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    with path.open("wb") as out:
        for index in range(round(seconds * fps)):
            shade = (ramp + index * 4) % 256
            image = np.repeat(shade[None, :, None], height, axis=0).repeat(3, axis=2)
            image += rng.normal(0, 12, image.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(
                np.clip(image, 0, 255).astype(np.uint8), format="rgb24"
            )
            frame.pts = index
            for packet in encoder.encode(frame):
                out.write(bytes(packet))
        for packet in encoder.encode(None):
            out.write(bytes(packet))
    return path


def read_h264_packets(path: str | Path) -> list[bytes]:
    """The access units of a raw H.264 file, in order, as FFmpeg's demuxer splits them."""
    with av.open(str(path), format="h264") as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


class H264PacketTrack(MediaStreamTrack):
    """Sends pre-encoded access units in real time, without re-encoding.

    Nothing is sent until `start()`. `pause_at`/`pause_s` hold back packet
    `pause_at` for that long, with its timestamp moved on by as much (a
    publisher that stopped sending for a while). With `loop`, the packets
    repeat for ever, timestamps running on; otherwise `finished` is set after
    the last one and the track then waits until it is stopped.
    """

    kind = "video"

    def __init__(
        self,
        packets: Sequence[bytes],
        *,
        fps: int = 30,
        loop: bool = False,
        pause_at: int | None = None,
        pause_s: float = 0.0,
    ) -> None:
        super().__init__()
        if not packets:
            raise ValueError("no packets to send")
        self.packets = packets
        self.fps = fps
        self.loop = loop
        self.pause_at = pause_at
        self.pause_s = pause_s
        self.sent = 0
        self.finished = asyncio.Event()
        self._go = asyncio.Event()
        self._t0: float | None = None

    def start(self) -> None:
        self._go.set()

    def _media_time(self, index: int) -> float:
        paused = self.pause_s if self.pause_at is not None and index >= self.pause_at else 0.0
        return index / self.fps + paused

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        await self._go.wait()
        index = self.sent
        if not self.loop and index >= len(self.packets):
            self.finished.set()
            await asyncio.Event().wait()  # cancelled when the sender stops
        if self._t0 is None:
            self._t0 = time.monotonic()
        media_time = self._media_time(index)
        delay = self._t0 + media_time - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.packets[index % len(self.packets)])
        packet.pts = round(media_time * VIDEO_CLOCK_RATE)
        packet.time_base = Fraction(1, VIDEO_CLOCK_RATE)
        self.sent = index + 1
        return packet
