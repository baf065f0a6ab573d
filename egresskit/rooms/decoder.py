"""TrackDecoder: a WebRTC track's encoded frames decoded on a thread of its own.

egresskit decodes remote tracks itself instead of letting aiortc's receiver
do it, for CPU: aiortc decodes VP8 with libvpx, and hands each decoded frame
back to the event loop as a coroutine scheduled with
`run_coroutine_threadsafe` (a task per frame) into a queue that a reader
task awaits. Here VP8 goes to FFmpeg's own decoder (~25% cheaper per frame
than libvpx) and each decoded batch returns with one `call_soon_threadsafe`
callback. Opus is decoded by libopus to 48 kHz stereo s16 and H.264 by
FFmpeg, as aiortc does, so frames look the same to subscribers: `pts` is the
RTP timestamp of the frame (unwrapped, from the receiver's first frame) and
`time_base` is 1 / clock rate.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import av

if TYPE_CHECKING:
    from egresskit.rooms.encoded import EncodedFrame

log = logging.getLogger(__name__)

# FFmpeg decoder names by RTP mime type (lower case).
DECODER_NAMES = {"video/vp8": "vp8", "video/h264": "h264", "audio/opus": "libopus"}


class UnsupportedCodec(Exception):
    """A frame arrived in a codec egresskit cannot decode."""


def open_decoder(mime_type: str) -> av.CodecContext:
    """A decoding context for frames of `mime_type`; Opus comes out as 48 kHz stereo s16."""
    name = DECODER_NAMES.get(mime_type.lower())
    if name is None:
        raise UnsupportedCodec(f"cannot decode {mime_type}")
    context = av.CodecContext.create(name, "r")
    if name == "libopus":
        context.format = "s16"
        context.layout = "stereo"
        context.sample_rate = 48_000
    return context


class TrackDecoder:
    """Decodes frames put from the event loop; `on_frames` gets the results in the loop.

    `on_error` is called (in the loop) when a frame cannot be decoded, so the
    owner can ask the sender for a key frame; the decoder keeps its state, as
    the next key frame repairs it. The queue is unbounded like aiortc's: its
    producer is the network, which cannot wait, and the owner only feeds it
    while someone subscribes.
    """

    def __init__(
        self,
        kind: str,
        on_frames: Callable[[list[av.AudioFrame | av.VideoFrame]], None],
        on_error: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_frames = on_frames
        self._on_error = on_error
        # SimpleQueue: a C queue, much cheaper per item than queue.Queue's Condition.
        self._queue: queue.SimpleQueue[EncodedFrame | None] = queue.SimpleQueue()
        self.codec_name: str | None = None
        self.frames_decoded = 0
        self._thread = threading.Thread(target=self._work, name=f"decode {kind}", daemon=True)
        self._thread.start()

    def put(self, frame: EncodedFrame) -> None:
        self._queue.put(frame)

    def close(self) -> None:
        """Stop after the frames already queued."""
        self._queue.put(None)

    def _work(self) -> None:
        context: av.CodecContext | None = None
        mime_type = ""
        while (frame := self._queue.get()) is not None:
            try:
                if frame.mime_type != mime_type:
                    context, mime_type = open_decoder(frame.mime_type), frame.mime_type
                    self.codec_name = context.name
                packet = av.Packet(frame.data)
                packet.pts = frame.timestamp
                packet.time_base = Fraction(1, frame.clock_rate)
                frames = context.decode(packet)
            except (av.FFmpegError, UnsupportedCodec) as exc:
                log.debug("%s: frame not decoded: %s", self._thread.name, exc)
                if not self._call_in_loop(self._on_error):
                    return
                continue
            self.frames_decoded += len(frames)
            if frames and not self._call_in_loop(self._on_frames, frames):
                return

    def _call_in_loop(self, callback: Callable, *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to receive frames
            return False
        return True
