"""TrackDecoder: decoded frames of a WebRTC track, from its encoded ones.

egresskit decodes remote tracks itself instead of letting aiortc's receiver
do it, for CPU spent on the event loop: aiortc hands each decoded frame back
as a coroutine scheduled with `run_coroutine_threadsafe` (a task per frame)
into a queue that a reader task then awaits. Here each decoded batch
returns with one `call_soon_threadsafe` callback that fans it out.
The decoders are FFmpeg's own for VP8 and H.264 (aiortc uses libvpx for
VP8: both are exact VP8 decoders, so the pictures are the same, and FFmpeg's
took ~15% less CPU on bench/composite.py's four 640x360 inputs) and libopus
to 48 kHz stereo s16, as aiortc's. For subscribers:
`pts` is the RTP timestamp of the frame (unwrapped, from the receiver's
first frame) and `time_base` is 1 / clock rate. Except for Opus, whose pts
is moved back by the encoder's delay (`OPUS_ENCODER_DELAY`), so that it
says when the decoded samples were captured, as a video frame's does. bench/live_composite.py
measures the whole recording process (1.83-1.89x the offline ffmpeg
reference with aiortc's decoding, ~1.7x with this).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

import av

if TYPE_CHECKING:
    from egresskit.rooms.encoded import EncodedFrame

log = logging.getLogger(__name__)

# FFmpeg decoder names by RTP mime type (lower case).
DECODER_NAMES: dict[str, Literal["vp8", "h264", "libopus"]] = {
    "video/vp8": "vp8",
    "video/h264": "h264",
    "audio/opus": "libopus",
}


# An Opus encoder's output lags its input by its lookahead: the first decoded samples
# are the encoder's priming (the pre-skip of RFC 7845), and every sample after them
# comes out that much after the RTP timestamp of its packet. RTP does not say how much
# (RFC 7587 has no pre-skip); libopus in its VOIP and AUDIO modes, which libwebrtc,
# browsers and aiortc (through FFmpeg) use, has 312 samples at 48 kHz (6.5 ms).
# Measured: a flash and a beep sent together by aiortc decoded 6.4 ms apart without
# this, -0.4 ms with it.
OPUS_ENCODER_DELAY = 312
# What one encoded frame decodes to (often nothing yet), and who receives that in the loop.
DecodedFrames = Sequence[av.AudioFrame | av.VideoFrame]
FramesCallback = Callable[[DecodedFrames], None]


class UnsupportedCodec(Exception):
    """A frame arrived in a codec egresskit cannot decode."""


def open_decoder(mime_type: str) -> av.AudioCodecContext | av.VideoCodecContext:
    """A decoding context for frames of `mime_type`; Opus comes out as 48 kHz stereo s16."""
    name = DECODER_NAMES.get(mime_type.lower())
    if name is None:
        raise UnsupportedCodec(f"cannot decode {mime_type}")
    if name == "libopus":
        opus = av.CodecContext.create(name, "r")
        opus.format = "s16"
        opus.layout = "stereo"
        opus.sample_rate = 48_000
        return opus
    return av.CodecContext.create(name, "r")


class TrackDecoder:
    """Decodes one track's frames, put from the event loop; `on_frames` gets them in the loop.

    Video is decoded on a thread of its own. Audio is decoded as it is put,
    in the loop: a 20 ms Opus frame takes ~45 us to decode, less than
    handing it to a thread and back costs (two wake-ups and the GIL).

    `on_error` is called (in the loop) when a frame cannot be decoded, so the
    owner can ask the sender for a key frame; the decoder keeps its state, as
    the next key frame repairs it. The video queue is unbounded like aiortc's:
    its producer is the network, which cannot wait, and the owner only feeds
    it while someone subscribes.
    """

    def __init__(
        self,
        kind: str,
        on_frames: FramesCallback,
        on_error: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_frames = on_frames
        self._on_error = on_error
        self._context: av.AudioCodecContext | av.VideoCodecContext | None = None
        self._mime_type = ""
        self._time_base = Fraction(1, 90_000)  # 1 / the clock rate of the frames put
        self.name = f"decode {kind}"
        # SimpleQueue: a C queue, much cheaper per item than queue.Queue's Condition.
        self._queue: queue.SimpleQueue[EncodedFrame | None] | None = None
        if kind == "video":
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._work, name=self.name, daemon=True).start()

    @property
    def codec_name(self) -> str | None:
        return self._context.name if self._context is not None else None

    def put(self, frame: EncodedFrame) -> None:
        if self._queue is not None:
            self._queue.put(frame)
            return
        frames = self._decode(frame)
        if frames is None:
            self._on_error()
        elif frames:
            self._on_frames(frames)

    def close(self) -> None:
        """Stop after the frames already queued."""
        if self._queue is not None:
            self._queue.put(None)

    def _decode(self, frame: EncodedFrame) -> DecodedFrames | None:
        """The frames decoded from `frame` (often none yet), or None if it cannot be decoded."""
        try:
            context = self._context
            if context is None or frame.mime_type != self._mime_type:
                context = self._context = open_decoder(frame.mime_type)
                self._mime_type = frame.mime_type
            packet = av.Packet(frame.data)
            packet.pts = frame.timestamp
            if self._time_base.denominator != frame.clock_rate:
                self._time_base = Fraction(1, frame.clock_rate)
            packet.time_base = self._time_base
            frames = context.decode(packet)
        except (av.FFmpegError, UnsupportedCodec) as exc:
            log.debug("%s: frame not decoded: %s", self.name, exc)
            return None
        if context.name == "libopus":
            for decoded in frames:
                if decoded.pts is not None:
                    decoded.pts -= OPUS_ENCODER_DELAY
        return frames

    def _work(self) -> None:
        assert self._queue is not None
        while (frame := self._queue.get()) is not None:
            frames = self._decode(frame)
            if frames is None:
                delivered = self._call_in_loop(self._on_error)
            else:
                delivered = not frames or self._call_in_loop(self._on_frames, frames)
            if not delivered:
                return

    def _call_in_loop(self, callback: Callable, *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to receive frames
            return False
        return True
