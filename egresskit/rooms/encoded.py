"""Encoded frames of a WebRTC track, taken from aiortc's receiver; decoding only on demand.

aiortc has no public API for encoded media. Its `RTCRtpReceiver` depacketizes
RTP (VP8 and H.264 through `aiortc.codecs.depayload`; an Opus payload is the
frame), reassembles frames in its jitter buffer, unwraps RTP timestamps
(`TimestampMapper`: relative to the first frame, 32-bit wrap-around counted)
and puts each `(codec, JitterFrame)` on a private queue read by its decoder
thread. That thread constructs its decoder on the first frame it is given.

This module is where egresskit takes aiortc's receiver over (`egresskit.rooms.intake`
reaches its ICE sockets; `egresskit.rooms.media_packets` handles a tapped
receiver's media packets in its stead, and lists what else it reads), and
it touches:

- `RTCRtpReceiver._RTCRtpReceiver__decoder_queue` (name-mangled): replaced
  by a router that copies every reassembled frame to encoded subscribers and,
  while someone wants decoded frames, to egresskit's own `TrackDecoder`
  (see `egresskit.rooms.decoder` for why not aiortc's). aiortc's decoder
  thread, started by aiortc in `receive()`, only ever gets `None` (the
  receiver stopping), so it never constructs a decoder, and its track ends
  exactly as before.
- `RTCRtpReceiver._send_rtcp_pli(ssrc)`: asks the sender for a key frame.
- `RTCRtpReceiver._handle_rtcp_packet(packet)`, the coroutine its
  transport calls for RTCP: shadowed on the instance to give each sender
  report to the track's `TrackTimeline` (`egresskit.rooms.timeline`).
- `RTCRtpReceiver._RTCRtpReceiver__rtx_ssrc` (retransmission SSRCs, whose
  reports are not the media's), `_RTCRtpReceiver__timestamp_mapper._origin`
  (what aiortc subtracted to unwrap timestamps: adding it back gives the RTP
  timestamp; its `map` unwraps the frames handed on besides aiortc's, see
  `_VideoFrames`) and `_RTCRtpReceiver__jitter_buffer`: for audio replaced by
  `_AudioPackets`, which hands each Opus packet on as it arrives instead of
  holding four packets (80 ms) back (the timeline puts it in its place);
  for video by `_VideoFrames`, which hands a frame on as soon as it is
  complete and gives up on a missing packet after `MAX_PACKET_WAIT_S`.
  aiortc calls its `add(packet)` and expects `(pli_flag, JitterFrame or
  None)`; packets carry the depayloaded bytes in `_data`.
- `RTCRtpReceiver._RTCRtpReceiver__nack_generator` (video): replaced by
  `_LostPackets`, with aiortc's `add(packet) -> bool` and `missing` set,
  which prunes old losses only when a new one is found instead of on
  every packet.
- `RTCRtpReceiver._RTCRtpReceiver__remote_bitrate_estimator` (video):
  wrapped by `_GroupedBitrateEstimate`, with aiortc's `add(arrival_time_ms,
  abs_send_time, payload_size, ssrc) -> (bitrate, ssrcs) or None`, whose
  result aiortc sends as REMB; it estimates only while the track is decoded.
- `JitterFrame(data, timestamp)`, `.data` and `.timestamp`: the frame's
  bytes (H.264 as Annex B) and its unwrapped RTP timestamp.
- the `(codec, frame)` tuples aiortc queues, and `codec.mimeType` /
  `codec.clockRate` of the `RTCRtpCodecParameters` inside them.

Once tapped (`egresskit.rooms.media_packets.tap`), the receiver's media
packets reach these stand-ins as `MediaPacket`s, not aiortc's `RtpPacket`s:
they read only `sequence_number`, `timestamp`, `marker` and `_data`.

tests/test_track_egress.py proves this against the aiortc versions allowed in
pyproject.toml; widen that range only after those tests pass on a new one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import time
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RTP_HISTORY_SIZE, RtcpSrPacket, RtpPacket
from aiortc.utils import uint16_add, uint16_gt

from egresskit.pipeline.link import Link, LinkPolicy
from egresskit.rooms import arrival, media_packets
from egresskit.rooms.decoder import DecodedFrames, FramesCallback, TrackDecoder
from egresskit.rooms.timeline import SenderClock, TrackTimeline

log = logging.getLogger(__name__)

# While a subscriber waits for a key frame, ask again this often (the request or
# the key frame itself may be lost, and some senders ignore requests for a while).
KEYFRAME_REQUEST_INTERVAL_S = 1.0
# Encoded frames a subscriber may have queued; beyond that it restarts at a key frame.
ENCODED_QUEUE = 120

_H264_IDR = 5
# How long video waits for a missing packet (retransmission asked for by NACK)
# before skipping it and asking for a key frame: a packet lost for good would
# otherwise hold video back until 512 more packets had filled the buffer. A
# retransmission takes a round trip plus jitter; the wait stays well inside
# the composite's playout delay (PLAYOUT_DELAY_S, 0.5 s).
MAX_PACKET_WAIT_S = 0.25
# Video packets held at most while a missing one is awaited (aiortc holds 512).
MAX_BUFFERED = 512
_WRAP = 1 << 32
_HALF = 0x8000  # sequence numbers less than this ahead (mod 2**16) are newer (RFC 3550)
# Shortest interval between two REMB feedbacks to a sender (libwebrtc's too).
REMB_INTERVAL_MS = 200
# What a track nobody decodes tells its sender it may send (REMB), and how often:
# a cap above any camera's rate, so the sender's own loss-based control decides.
PASSTHROUGH_REMB_BPS = 20_000_000
PASSTHROUGH_REMB_INTERVAL_MS = 1000
# abs-send-time (RFC 5450 style 6.18 fixed point seconds, 24 bits): 5 ms, aiortc's group length
BURST_UNITS = 5 * (1 << 18) // 1000
_ABS_SEND_TIME_WRAP = 1 << 24
# Until the first frame says which codec arrives, the usual clock rate of each kind.
DEFAULT_CLOCK_RATES = {"audio": 48_000, "video": 90_000}
OPUS_RATE = 48_000  # Opus counts samples at 48 kHz whatever it encoded


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One reassembled frame, as the publisher encoded it.

    `timestamp` is in units of `clock_rate` (90 kHz for video, 48 kHz for
    Opus), counted from the receiver's first frame; a pause in sending is a
    jump in it, never a renumbering. `EncodedReceiver.time_of(timestamp)`
    says when the sender captured it.
    """

    data: bytes
    timestamp: int
    clock_rate: int
    keyframe: bool
    mime_type: str


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether a frame can be decoded on its own (audio frames always can)."""
    codec = mime_type.lower()
    if codec == "video/vp8":
        # RFC 6386 section 9.1: bit 0 of the frame tag is 0 for a key frame
        return bool(data) and not data[0] & 0x01
    if codec == "video/h264":
        return _H264_IDR in h264_nal_types(data)
    return True


def h264_nal_types(annex_b: bytes) -> set[int]:
    """The NAL unit types in an Annex B buffer (found by their start codes)."""
    types = set()
    start = annex_b.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(annex_b):
        types.add(annex_b[start + 3] & 0x1F)
        start = annex_b.find(b"\x00\x00\x01", start + 3)
    return types


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet, from its TOC byte (RFC 6716 section 3.1)."""
    if not packet:
        return 0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


class _Subscription:
    """An encoded subscriber; it receives frames from a key frame on."""

    __slots__ = ("link", "synced")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.synced = False


class _FrameRouter:
    """Stands in for aiortc's decoder queue (see the module docstring).

    aiortc calls `put` in the event loop thread; its decoder thread calls
    `get`, which reads aiortc's own queue and so only ever gets the end.
    """

    def __init__(self, receiver: EncodedReceiver, inner: queue.Queue) -> None:
        self.receiver: EncodedReceiver | None = receiver  # None once detached
        self.receiver_ends = True  # the receiver stopping closes the EncodedReceiver
        self._inner = inner

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        receiver = self.receiver
        if item is None:
            self._inner.put(None)
            if receiver is not None and self.receiver_ends:
                receiver.close()
            return
        if receiver is not None:
            receiver._route(*item)
            receiver._route_completed(item[0])

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.get(*args, **kwargs)


class _AudioPackets:
    """Stands in for aiortc's audio jitter buffer: every Opus packet is a frame, passed on at once.

    A packet older than one already passed on (reordered, or a duplicate)
    is dropped: frames must leave in order.
    """

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        if (
            self._last is not None
            and not 0 < (packet.sequence_number - self._last) & 0xFFFF < _HALF
        ):
            return False, None  # not newer (aiortc's uint16_gt, inline on the per-packet path)
        self._last = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


class _LostPackets:
    """Stands in for aiortc's NackGenerator: which packets are missing, for NACKs.

    The same bookkeeping, except that losses older than RTP_HISTORY_SIZE
    (which the sender no longer keeps) are pruned when a new loss is found,
    not on every packet: a receiver that lost many packets does not pay for
    them on each one that follows.
    """

    def __init__(self) -> None:
        self.max_seq: int | None = None
        self.missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        """Note a packet; True when it revealed new missing packets (send a NACK)."""
        seq = packet.sequence_number
        if self.max_seq is None:
            self.max_seq = seq
            return False
        gap = ((seq - self.max_seq) & 0xFFFF) - 1
        if not -1 < gap < _HALF - 1:  # not newer (uint16_gt, inline on the per-packet path)
            self.missing.discard(seq)
            return False
        self.max_seq = seq
        if not gap:
            return False
        self.missing.update(uint16_add(seq, -k) for k in range(1, min(gap, RTP_HISTORY_SIZE) + 1))
        oldest = uint16_add(seq, -RTP_HISTORY_SIZE)
        self.missing = {s for s in self.missing if not uint16_gt(oldest, s)}
        return True


class _GroupedBitrateEstimate:
    """aiortc's receive-side bandwidth estimate while a track is decoded; a fixed cap while not.

    Estimating: aiortc feeds its `RemoteBitrateEstimator` every video
    packet and sends a REMB whenever the estimate says so, which while it
    reads overuse (as a busy event loop's late reads do) is every packet:
    measured with 10 WHEP viewers, estimating and sending REMB took 40% of
    the receive path. Its inter-arrival filter puts packets sent within 5 ms
    of a group's first into that group anyway (a frame's packets, as a
    sender sends them together), so they are handed over as one: sizes
    summed, the last send time and arrival. The estimate works on the same
    groups (their starts known to within one burst) from a call per burst
    instead of per packet. REMB goes out at most every REMB_INTERVAL_MS, as
    libwebrtc's receivers do.

    Not estimating (a track only passed through, which nobody decodes):
    measured with 20 passthrough track egresses, the estimate was a tenth of
    the receive path, for a figure that only tells the sender to send less
    when this process reads late. Instead the sender hears PASSTHROUGH_REMB_BPS
    once every PASSTHROUGH_REMB_INTERVAL_MS: no delay-based limit, so it
    sends the quality it was asked for, and its loss-based control (from
    our receiver reports) still backs off when packets are lost.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator  # aiortc's RemoteBitrateEstimator
        self.estimating = True
        # first and last abs_send_time, last arrival (ms), size, ssrc of the burst so far
        self._pending: list[int] | None = None
        self._last_sent_ms = -PASSTHROUGH_REMB_INTERVAL_MS

    def stop_estimating(self) -> None:
        self.estimating = False

    def start_estimating(self) -> None:
        """Estimate afresh: what was measured before the pause says nothing of now."""
        if not self.estimating:
            self.estimator = type(self.estimator)()
            self._pending = None
            self.estimating = True

    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None:
        if not self.estimating:
            if arrival_time_ms - self._last_sent_ms < PASSTHROUGH_REMB_INTERVAL_MS:
                return None
            self._last_sent_ms = arrival_time_ms
            return PASSTHROUGH_REMB_BPS, [ssrc]
        pending = self._pending
        if (
            pending is not None
            and pending[4] == ssrc
            and (abs_send_time - pending[0]) % _ABS_SEND_TIME_WRAP < BURST_UNITS
        ):
            pending[1] = abs_send_time
            pending[2] = arrival_time_ms
            pending[3] += payload_size
            return None
        self._pending = [abs_send_time, abs_send_time, arrival_time_ms, payload_size, ssrc]
        if pending is None:
            return None
        remb = self.estimator.add(
            arrival_time_ms=pending[2], abs_send_time=pending[1], payload_size=pending[3],
            ssrc=pending[4],
        )  # fmt: skip
        if remb is None or arrival_time_ms - self._last_sent_ms < REMB_INTERVAL_MS:
            return None
        self._last_sent_ms = arrival_time_ms
        return remb


class _VideoFrames:
    """Stands in for aiortc's video jitter buffer: frames leave in order, once complete.

    A frame is complete when every packet from its first to the one with
    the marker bit (RFC 3550; the last of a video frame in WebRTC) is there,
    or when the next frame's first packet follows without a gap. That is one
    frame interval sooner than aiortc, which waits for the next frame, and
    each packet is looked at once instead of every buffered packet on every
    arrival.

    aiortc takes one frame per packet added; frames that completed together
    (a retransmission filling a hole that held several back) are handed on
    by `take`, which the receiver calls until it returns None: frames waiting
    behind each other would otherwise add up to a delay that never drains
    while each packet carries a frame.

    A missing packet (asked for again by aiortc's NACK), at the head frame's
    start or inside it (known once its last packet or a later frame's came),
    is waited for at most MAX_PACKET_WAIT_S, and at most MAX_BUFFERED packets
    are held; then the hole and the frame after it (which may have lost its
    start) are dropped, frames flow again, and a key frame is asked for (the
    PLI flag): pictures that referred to what was lost decode wrong until it
    comes.
    """

    def __init__(self) -> None:
        self._packets: dict[int, RtpPacket] = {}
        self._next: int | None = None  # sequence number of the next frame's first packet
        self._complete = 0  # packets of that frame known to be there, from _next on
        self._stuck_since: float | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        elif (ahead := (seq - self._next) & 0xFFFF) >= _HALF:
            return False, None  # a frame already handed on or skipped
        elif ahead >= MAX_BUFFERED:
            self._packets.clear()
            self._next, self._complete = seq, 0
            self._packets[seq] = packet
            return True, self.take()
        self._packets.setdefault(seq, packet)
        frame = self.take()
        if frame is not None:
            self._stuck_since = None
            return False, frame
        head = self._packets.get(self._next)
        if (
            self._stuck_since is None
            and head is not None
            and head.timestamp == packet.timestamp
            and not packet.marker
        ):
            return False, None  # the head frame is still arriving, nothing missing yet
        now = arrival.now()  # by arrival: the wait is the network's, not the read tick's
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since < MAX_PACKET_WAIT_S and len(self._packets) < MAX_BUFFERED:
            return False, None
        self._stuck_since = None
        self._skip_hole()
        return True, self.take()

    @property
    def waiting(self) -> bool:
        """Whether frames are held back by a missing packet (asked for again by NACK)."""
        return self._stuck_since is not None

    def take(self) -> JitterFrame | None:
        """The head frame if it is complete, removed from the buffer."""
        if self._next is None:
            return None
        packets = self._packets
        head = packets.get(self._next)
        if head is None:
            return None
        while True:
            seq = (self._next + self._complete) & 0xFFFF
            packet = packets.get(seq)
            if packet is None:
                return None
            if packet.timestamp != head.timestamp:
                break  # the next frame began right after this one
            self._complete += 1
            if packet.marker:
                break
        first = self._next
        frame_packets = [packets.pop((first + i) & 0xFFFF) for i in range(self._complete)]
        self._next, self._complete = (first + self._complete) & 0xFFFF, 0
        data = b"".join(p._data for p in frame_packets)  # type: ignore[attr-defined]
        return JitterFrame(data=data, timestamp=head.timestamp)

    def _skip_hole(self) -> None:
        """Move past the missing packets at the head and the frame that follows them."""
        assert self._next is not None
        ahead = sorted(uint16_add(seq, -self._next) for seq in self._packets)
        if not ahead:
            return
        first = self._packets[uint16_add(self._next, ahead[0])]
        skip = ahead[0]
        for distance in ahead:
            packet = self._packets[uint16_add(self._next, distance)]
            if packet.timestamp != first.timestamp:
                break
            skip = distance + 1
            del self._packets[uint16_add(self._next, distance)]
        self._next, self._complete = uint16_add(self._next, skip), 0


class EncodedReceiver:
    """Encoded frames of one aiortc receiver for subscribers; decoding while `decoding` is set.

    Decoded frames go to `on_decoded`, called in the event loop.

    Subscriber links are BLOCK links filled without waiting: a subscriber
    that falls `ENCODED_QUEUE` frames behind loses frames (counted on its
    link) and resumes at the next key frame, which is requested at once.

    `timeline` places every frame in time; tracks of one peer connection
    should share one `sender` clock so their frames stay aligned.

    Subscribers get EOS when `close()` is called and, with `end_with_receiver`,
    when the aiortc receiver stops. A room that says itself when a track
    ends (LiveKit's signalling) turns that off, so that a connection lost
    and replaced (`rebind`) does not end the track.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        sender: SenderClock | None = None,
        *,
        end_with_receiver: bool = True,
    ) -> None:
        self._end_with_receiver = end_with_receiver
        self._estimate: _GroupedBitrateEstimate | None = None
        self.on_decoded: FramesCallback | None = None
        self._decoder: TrackDecoder | None = None
        self._subscriptions: list[_Subscription] = []
        self._decoding = False
        self._decoder_synced = False
        self._last_request = 0.0
        self._requests: set[asyncio.Task[None]] = set()
        self._closed = False
        # Added to the receiver's timestamps: non-zero once the track continues on another
        # receiver (`rebind`), whose timestamps then follow on from the first one's.
        self._offset = 0
        self._last_frame: tuple[int, float] | None = None  # timestamp handed out, arrival
        self._follows: tuple[int, float] | None = None  # the same, of the previous receiver
        self.frames_received = 0  # reassembled frames, wanted or not
        self.frames_decoded = 0
        self._attach(receiver, sender)

    def _attach(self, receiver: RTCRtpReceiver, sender: SenderClock | None) -> None:
        """Take `receiver`'s frames, RTCP and buffers over (see the module docstring)."""
        self._receiver = receiver
        inner = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
        self._router = _FrameRouter(self, inner)
        if not self._end_with_receiver:
            self._router.receiver_ends = False
        receiver._RTCRtpReceiver__decoder_queue = self._router  # type: ignore[attr-defined]
        kind = receiver.track.kind if receiver.track is not None else "video"
        self.timeline = TrackTimeline(DEFAULT_CLOCK_RATES.get(kind, 90_000), sender)
        self._clock_rate_known = False
        receiver._handle_rtcp_packet = functools.partial(  # type: ignore[method-assign]
            self._rtcp_packet, receiver, receiver._handle_rtcp_packet
        )
        jitter_buffer = _AudioPackets() if kind == "audio" else _VideoFrames()
        receiver._RTCRtpReceiver__jitter_buffer = jitter_buffer  # type: ignore[attr-defined]
        self._video_frames = jitter_buffer if isinstance(jitter_buffer, _VideoFrames) else None
        self._estimate = None
        if kind == "video":
            receiver._RTCRtpReceiver__nack_generator = _LostPackets()  # type: ignore[attr-defined]
            estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
            if isinstance(estimator, _GroupedBitrateEstimate):  # a receiver tapped before
                estimator = estimator.estimator
            if estimator is not None:
                self._estimate = _GroupedBitrateEstimate(estimator)
                if not self._decoding:
                    self._estimate.stop_estimating()  # until someone decodes
                receiver._RTCRtpReceiver__remote_bitrate_estimator = self._estimate  # type: ignore[attr-defined]
        media_packets.tap(receiver)

    def detach(self) -> None:
        """Stop following the current receiver: its end is no longer this track's end.

        For a track that will continue on another receiver (`rebind`); until
        then subscribers stay, and get nothing.
        """
        self._router.receiver = None

    def rebind(self, receiver: RTCRtpReceiver, sender: SenderClock | None = None) -> None:
        """Continue on another aiortc receiver (the same track, after a new connection).

        Subscribers stay and resume at the new receiver's first key frame
        (asked for now); timestamps go on from the old receiver's as far as
        time went on between their frames, so a recording keeps its timeline
        across the change, with a pause for what was lost in between.
        """
        self.detach()
        self._follows = self._last_frame
        self._offset = 0
        self._attach(receiver, sender)
        self._decoder_synced = False
        for subscription in self._subscriptions:
            subscription.synced = False
        if self._subscriptions or self._decoding:
            self.request_keyframe(throttled=False)

    @property
    def decoder(self) -> TrackDecoder | None:
        """The decoder, once a frame had to be decoded."""
        return self._decoder

    @property
    def decoding(self) -> bool:
        return self._decoding

    @decoding.setter
    def decoding(self, wanted: bool) -> None:
        """Pass frames to the decoder (from the next key frame on) or stop doing so."""
        if wanted and not self._decoding:
            self._decoder_synced = False
            self.request_keyframe(throttled=False)
        if self._estimate is not None:
            # the bandwidth estimate is for tracks that are decoded (composited)
            if wanted:
                self._estimate.start_estimating()
            else:
                self._estimate.stop_estimating()
        self._decoding = wanted

    def subscribe(self, maxsize: int = ENCODED_QUEUE) -> Link:
        """A link of EncodedFrame from the next key frame on (requested now), EOS at the end."""
        link: Link = Link(maxsize, LinkPolicy.BLOCK, name="encoded")
        if self._closed:
            link.close_nowait()
            return link
        self._subscriptions.append(_Subscription(link))
        self.request_keyframe(throttled=False)
        return link

    def unsubscribe(self, link: Link) -> None:
        self._subscriptions = [s for s in self._subscriptions if s.link is not link]

    def close(self) -> None:
        """No more frames: every subscriber gets EOS."""
        self._closed = True
        if self._decoder is not None:
            self._decoder.close()
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            subscription.link.close_nowait()

    def request_keyframe(self, *, throttled: bool = True) -> None:
        """Send a PLI to the sender, at most once per KEYFRAME_REQUEST_INTERVAL_S if throttled."""
        now = time.monotonic()
        if throttled and now - self._last_request < KEYFRAME_REQUEST_INTERVAL_S:
            return
        sources = self._receiver.getSynchronizationSources()
        if not sources:
            return  # nothing received yet: the first frame asks again
        self._last_request = now
        for source in sources:
            task = asyncio.ensure_future(self._receiver._send_rtcp_pli(source.source))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _rtcp_packet(self, receiver: RTCRtpReceiver, handle: Any, packet: Any) -> None:
        if (
            receiver is self._receiver  # not one left by `rebind`
            and isinstance(packet, RtcpSrPacket)
            and packet.ssrc not in self._rtx_ssrcs()
        ):
            info = packet.sender_info
            self.timeline.sender_report(info.rtp_timestamp, info.ntp_timestamp, arrival.now())
        await handle(packet)

    def _rtx_ssrcs(self) -> dict[int, int]:
        return self._receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]

    def _rtp_timestamp(self, timestamp: int) -> int:
        """The RTP timestamp of an unwrapped one."""
        origin = self._receiver._RTCRtpReceiver__timestamp_mapper._origin  # type: ignore[attr-defined]
        return (timestamp + (origin or 0)) % _WRAP

    def time_of(self, timestamp: int) -> float:
        """The capture time (monotonic s) of a frame with this unwrapped timestamp (or pts)."""
        return self.timeline.time_of(self._rtp_timestamp(timestamp - self._offset))

    def _route(self, codec: Any, jitter_frame: Any) -> None:
        """Hand a frame to encoded subscribers, and to the decoder while decoding."""
        self.frames_received += 1
        if not self._clock_rate_known:
            self.timeline.clock_rate, self._clock_rate_known = codec.clockRate, True
        # frames are handed on as their last packet arrives: they were captured before that,
        # and an audio packet's first sample before its last one
        now = arrival.now()
        captured_by = now
        if codec.mimeType.lower() == "audio/opus":
            captured_by -= opus_samples(jitter_frame.data) / OPUS_RATE
        self.timeline.arrived(self._rtp_timestamp(jitter_frame.timestamp), captured_by)
        if self._follows is not None:
            last, last_arrival = self._follows
            self._follows = None
            elapsed = max(1, round((now - last_arrival) * codec.clockRate))
            self._offset = last + elapsed - jitter_frame.timestamp
        timestamp = jitter_frame.timestamp + self._offset
        self._last_frame = timestamp, now
        if not self._subscriptions and not self._decoding:
            return
        mime_type = codec.mimeType
        keyframe = is_keyframe(mime_type, jitter_frame.data)
        frame = EncodedFrame(
            bytes(jitter_frame.data), timestamp, codec.clockRate, keyframe, mime_type
        )
        waiting = False
        for subscription in self._subscriptions:
            if not subscription.synced:
                if not keyframe:
                    waiting = True
                    continue
                subscription.synced = True
            if not subscription.link.put_nowait(frame):
                subscription.synced = False
                waiting = True
        if self._decoding:
            self._decoder_synced = self._decoder_synced or keyframe
            if self._decoder_synced:
                self.frames_decoded += 1
                self._decoder_for().put(frame)
            else:
                waiting = True
        if waiting:
            self.request_keyframe()

    def _route_completed(self, codec: Any) -> None:
        """Route the frames that completed with the one aiortc handed on (see `_VideoFrames`)."""
        if self._video_frames is None:
            return
        mapper = self._receiver._RTCRtpReceiver__timestamp_mapper  # type: ignore[attr-defined]
        while (frame := self._video_frames.take()) is not None:
            frame.timestamp = mapper.map(frame.timestamp)
            self._route(codec, frame)

    def _decoder_for(self) -> TrackDecoder:
        if self._decoder is None:
            self._decoder = TrackDecoder(
                self._receiver.track.kind, self._decoded, self.request_keyframe
            )
        return self._decoder

    def _decoded(self, frames: DecodedFrames) -> None:
        if self.on_decoded is not None and self._decoding:
            self.on_decoded(frames)
