"""Track egress without transcoding: a track's encoded frames written to a file as they came.

`EncodedTrackSource` turns the depacketized frames of one WebRTC track into
packets on the graph clock; `PassthroughFileWriter` muxes them: Opus into
Ogg, VP8 into WebM, H.264 into MP4. Nothing is decoded or encoded.
"""

from __future__ import annotations

import asyncio
import os
from fractions import Fraction

import av
from av.stream import Stream
from livekit.protocol import models

from egresskit.pipeline import EOS, Link, OutputPort, SourceClosed, Stage
from egresskit.rooms.encoded import OPUS_RATE, EncodedFrame, opus_samples
from egresskit.rooms.local import LocalTrack
from egresskit.stages.media import EncodedPacket
from egresskit.stages.muxer import MP4_OPTIONS, FileWriter, creation_time

# (container format, muxer options, stream codec) per source codec
PASSTHROUGH_FORMATS: dict[str, tuple[str, dict[str, str], str]] = {
    "video/h264": ("mp4", MP4_OPTIONS, "h264"),
    "video/vp8": ("webm", {}, "vp8"),
    "audio/opus": ("ogg", {}, "libopus"),
}
# The capture time of a track's first frame is estimated again this long after it
# arrived: by then the track's timeline (the smallest delay seen) has settled, also for
# a track published just before its egress started (estimates 10-60 ms late at first).
SETTLE_S = 5.0
# Packets arriving within this long go to the writer thread together.
WRITE_BATCH_S = 0.2


def passthrough_supported(mime_type: str) -> bool:
    return mime_type.lower() in PASSTHROUGH_FORMATS


class RtpTimeline:
    """RTP timestamps as one ever-increasing count.

    Each step is the difference to the previous timestamp modulo 2**32, read
    as signed, so a 32-bit wrap-around is a small step forward. That holds
    whether or not the timestamps were already unwrapped upstream.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self.position = 0

    def advance(self, timestamp: int) -> int:
        if self._last is not None:
            step = (timestamp - self._last) & 0xFFFFFFFF
            if step >= 1 << 31:
                step -= 1 << 32
            self.position += step
        self._last = timestamp
        return self.position


class EncodedTrackSource(Stage):
    """Source of one track's encoded frames as packets timed on the graph clock.

    The first frame (a key frame; see `LocalTrack.subscribe_encoded`) gets
    the graph time it arrived at; every later one keeps its RTP distance
    from it, so a pause in sending stays a pause in the file. A packet is
    sent once the next one arrives, which gives it its exact duration.
    Posts `SourceClosed` when the track is unpublished, which ends the
    graph by itself. Timed by the track's RTP clock, it cannot pause.
    """

    pausable = False

    def __init__(self, track: LocalTrack, *, name: str | None = None) -> None:
        super().__init__(name)
        self.track = track
        self.kind = "video" if track.kind == models.TrackType.VIDEO else "audio"
        self.output: OutputPort[EncodedPacket] = self.add_output("output")
        self._link: Link[EncodedFrame] | None = None
        self._timeline = RtpTimeline()
        self._origin: int | None = None
        self._first: tuple[int, float] | None = None  # first frame's timestamp, arrival
        self._settled = False
        # graph time the first frame was captured at (see SETTLE_S); None before it
        self.first_capture_s: float | None = None
        self._pending: av.Packet | None = None
        self._last_duration = 0
        self.frames_in = 0

    async def run(self) -> None:
        link = self._link = self.track.subscribe_encoded()
        try:
            async for frame in link:
                await self._emit(self._packet(frame))
                self.frames_in += 1
            self._settle()
            if self._pending is not None:
                self._pending.duration = self._last_duration
                await self.output.send(EncodedPacket(self.kind, self._pending))
                self._pending = None
        finally:
            self.track.unsubscribe_encoded(link)
        if not self.stopping.is_set():
            self.post(SourceClosed(self, "track unpublished"))

    def on_stop(self) -> None:
        super().on_stop()
        if self._link is not None:
            self.track.unsubscribe_encoded(self._link)
            self._link.close_nowait()

    def _packet(self, frame: EncodedFrame) -> av.Packet:
        position = self._timeline.advance(frame.timestamp)
        if self._origin is None or self._first is None:
            self._first = frame.timestamp, self.clock.now()
            self.first_capture_s = self._capture_of_first()
            self._origin = round(self.clock.now() * frame.clock_rate) - position
        elif self.clock.now() - self._first[1] >= SETTLE_S:
            self._settle()
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self._origin + position
        packet.time_base = Fraction(1, frame.clock_rate)
        packet.is_keyframe = frame.keyframe
        if self.kind == "audio":
            packet.duration = opus_samples(frame.data) * frame.clock_rate // OPUS_RATE
        return packet

    def _capture_of_first(self) -> float:
        """Graph time the first frame was captured at, as the track's timeline says now
        (its arrival for a track without one)."""
        assert self._first is not None
        receiver = self.track.encoded
        if receiver is None:
            return self._first[1]
        return self.clock.media_time(receiver.time_of(self._first[0]))

    def _settle(self) -> None:
        if self._first is not None and not self._settled:
            self.first_capture_s = self._capture_of_first()
            self._settled = True

    async def _emit(self, packet: av.Packet) -> None:
        pending, self._pending = self._pending, packet
        if pending is None:
            return
        if self.kind == "video":
            self._last_duration = max(1, (packet.pts or 0) - (pending.pts or 0))
            pending.duration = self._last_duration
        await self.output.send(EncodedPacket(self.kind, pending))

    def stats(self) -> dict[str, int]:
        dropped = self._link.dropped if self._link is not None else 0
        return {"frames_in": self.frames_in, "dropped": dropped}


class PassthroughFileWriter(FileWriter):
    """Muxes one track's packets into a file, opened at the first packet.

    Opening late lets the container take the picture size from the first
    key frame (read by FFmpeg's parser; nothing is decoded). The file is
    always closed in cleanup, so what arrived is kept also when the graph
    fails or is cancelled. Posts `FirstMedia` and `FileClosed` like the
    other file muxers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mime_type: str,
        *,
        source: EncodedTrackSource | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, name)
        self.source = source  # where the capture time of the first frame comes from
        self._presented_after_s = 0.0  # Opus pre-skip: decoders drop these first samples
        codec = mime_type.lower()
        if codec not in PASSTHROUGH_FORMATS:
            raise ValueError(f"cannot record {mime_type or 'this codec'} without transcoding")
        self.mime_type = codec
        self._stream: Stream | None = None

    def _open(self, first: av.Packet) -> None:
        format, options, codec = PASSTHROUGH_FORMATS[self.mime_type]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=format, options=options)
        try:
            stream: Stream
            if codec == "libopus":
                # Ogg needs the OpusHead header as stream extradata, which PyAV only
                # fills from a codec context: this encoder is opened for its header
                # (48 kHz stereo, as WebRTC negotiates Opus) and never encodes.
                stream = container.add_stream(codec, rate=OPUS_RATE, layout="stereo")
            else:
                width, height = picture_size(codec, bytes(first))
                stream = container.add_mux_stream(
                    codec, width=width, height=height, time_base=first.time_base
                )
            stream.time_base = first.time_base
            if codec == "libopus":
                stream.codec_context.open()  # now, for its OpusHead: bytes 10-11 are the
                # pre-skip, samples players drop before the first they present
                head = stream.codec_context.extradata or b""
                pre_skip = int.from_bytes(head[10:12], "little")
                self._presented_after_s = pre_skip / OPUS_RATE
            at = self.first_media_at_ns or self.clock.wall_ns(_seconds(first))
            container.metadata["creation_time"] = creation_time(at)
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream

    @property
    def first_media_at_ns(self) -> int:
        """The capture time of the source's first frame (settled), plus what players skip."""
        if self.source is None or self.source.first_capture_s is None:
            return super().first_media_at_ns
        return self.clock.wall_ns(self.source.first_capture_s + self._presented_after_s)

    def _write(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        for packet in packets:
            packet.stream = self._stream
            self._container.mux(packet)

    async def run(self) -> None:
        """Write packets in batches of up to WRITE_BATCH_S of arrivals (the first at once).

        A hand-over to the worker thread costs the event loop about as much
        as muxing the packet there, so each hand-over carries a batch; a
        fragmented MP4 is written a fragment (1 s) at a time anyway.
        """
        loop = asyncio.get_running_loop()
        batch: list[av.Packet] = []
        since = 0.0
        while (item := await self.input.recv()) is not EOS:
            if not batch:
                since = loop.time()
            batch.append(item.packet)
            if self._container is None or loop.time() - since >= WRITE_BATCH_S:
                await self._write_batch(batch)
                batch = []
        if batch:
            await self._write_batch(batch)
        await self._finish()

    async def _write_batch(self, packets: list[av.Packet]) -> None:
        if self._container is None:
            await self.offload(self._open, packets[0])
        await self.offload(self._write, packets)
        for packet in packets:
            self._written(_seconds(packet))


def _seconds(packet: av.Packet) -> float:
    return float((packet.pts or 0) * (packet.time_base or 1))


def picture_size(codec: str, keyframe: bytes) -> tuple[int, int]:
    """Width and height from a key frame's headers, read by FFmpeg's bitstream parser.

    The codec context is only a holder for the parser's results: it is never
    opened, so no decoder runs.
    """
    holder = av.CodecContext.create(codec, "r")
    assert isinstance(holder, av.VideoCodecContext), f"{codec} is not a video codec"
    holder.parse(keyframe)
    holder.parse(None)  # flush: the parser reads the headers once a frame is complete
    if not holder.width or not holder.height:
        raise ValueError(f"the first {codec} key frame carries no picture size")
    return holder.width, holder.height
