"""File muxers: encoded packets into a container on local disk."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.pipeline import EOS, FirstMedia, InputPort, Stage, StageEvent
from egresskit.stages.media import (
    PLAYOUT_DELAY_S,
    EncodedInput,
    EncodedPacket,
    StreamHeader,
)
from egresskit.storage.paths import temporary_beside

log = logging.getLogger(__name__)

# Fragmented while recording, so a killed process leaves a playable file
# (1 s fragments flushed as written); rewritten with a normal index on close.
MP4_OPTIONS = {
    # use_metadata_tags: `creation_time` keeps its fraction of a second (mvhd has whole seconds)
    "movflags": "+hybrid_fragmented+use_metadata_tags",
    "frag_duration": "1000000",
    "flush_packets": "1",
    # AAC starts with priming samples at a negative time; shifting every stream to
    # hide them would stretch the first video frame, so keep them in an edit list.
    "avoid_negative_ts": "disabled",
}
# The same file rewritten with its index (moov) first; timestamps as they are.
FASTSTART_OPTIONS = {"movflags": "+faststart+use_metadata_tags", "avoid_negative_ts": "disabled"}


@dataclass(frozen=True, slots=True, eq=False)
class FileClosed(StageEvent):
    """A writer closed its file: it is complete on disk."""

    path: Path
    size: int


def creation_time(wall_ns: int) -> str:
    """A file's `creation_time`: the capture instant of its first media, UTC to the
    microsecond (MP4 keeps the fraction with `use_metadata_tags`; WebM always)."""
    return datetime.fromtimestamp(wall_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def private_packet(
    packet: av.Packet, stream: Stream, *, shift: Fraction = Fraction(0)
) -> av.Packet:
    """A copy of a shared packet for one container, `shift` seconds earlier.

    Every output of a graph receives the same packet objects, each on its own
    worker thread, and muxing rebases a packet's timestamps in place; so no
    muxer touches the shared packet, each muxes a copy of its own.
    """
    # PyAV copies from any buffer (its stub says bytes, which would copy twice)
    copy = av.Packet(memoryview(packet))  # type: ignore[arg-type]
    tb = packet.time_base
    offset = round(shift / tb) if shift else 0
    copy.time_base = tb
    copy.pts = None if packet.pts is None else packet.pts - offset
    copy.dts = None if packet.dts is None else packet.dts - offset
    copy.duration = packet.duration
    copy.is_keyframe = packet.is_keyframe
    copy.stream = stream
    return copy


class FileWriter(Stage):
    """What every stage that writes one media file shares: the path, the
    written-media bookkeeping, `FirstMedia` / `FileClosed` on the bus, and a
    container that is always closed in cleanup, also when the graph fails or
    is cancelled, so what reached the writer is never lost.
    """

    # How long after its capture media is placed on the graph clock (PLAYOUT_DELAY_S in a
    # composite; 0 for media timed at its capture): maps file time to the room's clock.
    capture_delay_s = 0.0

    def __init__(self, path: str | os.PathLike[str], name: str | None) -> None:
        super().__init__(name)
        self.path = Path(path)
        self.input: InputPort[Any] = self.add_input("input")  # what its subclass writes
        self._container: OutputContainer | None = None
        self.packets_written = 0
        self.first_pts_s: float | None = None
        self.last_pts_s = 0.0
        self._first_media_at_ns = 0

    @property
    def first_media_at_ns(self) -> int:
        """When the first media the file presents was captured (Unix ns), 0 before any.

        On the clock every egress of a room shares, the sender's capture times
        (`egresskit.rooms.timeline`): files of one room line up by it.
        """
        return self._first_media_at_ns

    def _close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def _written(self, seconds: float) -> None:
        """Account for one packet written at `seconds` of media time."""
        self.packets_written += 1
        self.last_pts_s = max(self.last_pts_s, seconds)
        if self.first_pts_s is None:
            self.first_pts_s = seconds
            start = max(0.0, seconds)  # nothing plays before time 0 (priming is edited out)
            self._first_media_at_ns = self.clock.wall_ns(start - self.capture_delay_s)
            self.post(FirstMedia(self))

    async def _finish(self) -> None:
        await self.offload(self._close)
        self.post(FileClosed(self, self.path, self.size))

    async def cleanup(self) -> None:
        if self._container is not None:
            await self.offload(self._close)

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def duration_s(self) -> float:
        return 0.0 if self.first_pts_s is None else self.last_pts_s - self.first_pts_s

    def stats(self) -> dict[str, float]:
        return {"packets": self.packets_written, "bytes": self.size, "duration_s": self.duration_s}


class FileMuxer(FileWriter):
    """Writes the packets on its input into one file, opened once every encoder feeding it
    has sent its StreamHeader (at once when the graph starts).

    Its encoders take composited frames, which show media PLAYOUT_DELAY_S after
    its capture; the file starts at graph time 0 (its `creation_time`), earlier
    packets being the audio encoder's priming, which the file's edit list hides.
    """

    capture_delay_s = PLAYOUT_DELAY_S

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: str,
        options: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(path, name)
        self.format = format
        self.options = dict(options or {})
        self._streams: dict[str, Stream] = {}

    def _open(self, headers: Mapping[str, StreamHeader]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=self.format, options=self.options)
        try:
            wall_ns = self.clock.wall_ns(-self.capture_delay_s)
            container.metadata["creation_time"] = creation_time(wall_ns)
            for kind, header in headers.items():
                self._streams[kind] = header.add_to(container)
        except BaseException:
            container.close()
            raise
        self._container = container

    def _write(self, item: EncodedPacket) -> None:
        assert self._container is not None
        self._container.mux(private_packet(item.packet, self._streams[item.kind]))

    def release(self) -> None:
        """The streams keep their (closed) container and its buffers alive."""
        self._streams.clear()

    async def run(self) -> None:
        packets = EncodedInput(self.input)
        headers = await packets.read_headers()
        if not headers:
            raise ValueError(f"{self.name}: no encoded stream reached the muxer")
        await self.offload(self._open, headers)
        while (item := await packets.recv()) is not EOS:
            if item.kind in self._streams:
                await self.offload(self._write, item)
                self._written(item.seconds)
        await self._finish()


class Mp4Muxer(FileMuxer):
    """An MP4 file that survives a crash of the recording process.

    With `faststart`, a clean stop rewrites the finished file with its index
    first (a copy of the packets, on the worker thread); `faststart_s` is the
    time that took. A failed or cancelled graph keeps the fragmented file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        faststart: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(path, format="mp4", options=MP4_OPTIONS, name=name)
        self.faststart = faststart
        self.faststart_s = 0.0

    async def _finish(self) -> None:
        if self.faststart and self.packets_written:
            await self.offload(self._close_with_index_first)
            self.post(FileClosed(self, self.path, self.size))
        else:
            await super()._finish()

    def _close_with_index_first(self) -> None:
        self._close()
        started = time.monotonic()
        try:
            remux_faststart(self.path)
        except (OSError, av.FFmpegError) as exc:
            log.warning(
                "%s: faststart failed, the file keeps its index at the end: %s", self.name, exc
            )
        self.faststart_s = time.monotonic() - started

    def stats(self) -> dict[str, float]:
        return super().stats() | ({"faststart_s": self.faststart_s} if self.faststart else {})


def remux_faststart(path: Path) -> None:
    """Rewrite a finished MP4 with `moov` before `mdat`, replacing it only once complete.

    FFmpeg's `faststart` cannot be combined with the fragmented writing that
    keeps a recording playable after a crash, so it is a second pass: every
    packet copied (nothing decoded) into a file beside, renamed over the original.
    """
    partial = temporary_beside(path)
    try:
        with (
            av.open(str(path)) as source,
            av.open(str(partial), "w", format="mp4", options=FASTSTART_OPTIONS) as target,
        ):
            target.metadata.update(source.metadata)
            streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
            for packet in source.demux():
                if packet.dts is None:  # the demuxer's end-of-stream flush packets
                    continue
                packet.stream = streams[packet.stream.index]
                target.mux(packet)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
