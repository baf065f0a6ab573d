"""HlsSegmenter: encoded packets into MPEG-TS segments and HLS playlists on local disk.

Segments are cut here, at video key frames, into one MPEG-TS container each,
rather than by FFmpeg's `segment`/`hls` muxers: cutting ourselves gives the
exact names the egress API asks for (INDEX or wall-clock TIMESTAMP
suffixes), a notification the moment each segment file is closed (so it can
be uploaded at once), and playlists written exactly as specified (EVENT
playlist with PROGRAM-DATE-TIME, sliding live window), atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.pipeline import EOS, InputPort, Stage, StageEvent
from egresskit.stages.media import EncodedInput, EncodedItem, EncodedPacket, StreamHeader
from egresskit.stages.muxer import private_packet
from egresskit.storage.paths import confine, write_atomically

LIVE_WINDOW = 5
# A key frame this close to the planned boundary (in frames) still cuts there.
CUT_TOLERANCE_FRAMES = 0.5

SegmentNamer = Callable[[int, datetime], str]


def index_names(prefix: str) -> SegmentNamer:
    """The default naming: `{prefix}_00000.ts`, `{prefix}_00001.ts`, ..."""
    return lambda index, _when: f"{prefix}_{index:05d}.ts"


@dataclass(frozen=True, slots=True)
class Segment:
    """One closed segment: where it is, when it starts (media and wall time), how long it is."""

    index: int
    path: Path
    start_s: float
    duration_s: float
    started_at_ns: int
    size: int
    discontinuity: bool = False  # the first segment after a resume (Graph.resume)

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True, eq=False)
class SegmentClosed(StageEvent):
    """A segment file is complete: it can be uploaded."""

    segment: Segment


@dataclass(frozen=True, slots=True, eq=False)
class InitSegmentWritten(StageEvent):
    """fMP4's initialization section (EXT-X-MAP) is on disk: it goes out as a segment."""

    path: Path


@dataclass(frozen=True, slots=True, eq=False)
class PlaylistUpdated(StageEvent):
    """A playlist was rewritten; `ended` once it has ENDLIST (the last rewrite)."""

    path: Path
    live: bool
    ended: bool


@dataclass(frozen=True, slots=True)
class HlsResults:
    """What `segment_results` reports: the playlists and totals of the closed segments."""

    playlist: Path
    live_playlist: Path | None
    segment_count: int
    size: int
    duration_s: float
    started_at_ns: int
    ended_at_ns: int


def render_event_playlist(
    segments: Sequence[Segment],
    target_duration: float,
    playlist_dir: Path,
    *,
    ended: bool,
    init: Path | None = None,
) -> str:
    """The full EVENT playlist: every segment, each with its PROGRAM-DATE-TIME.

    `init` is the initialization section of fMP4 segments (EXT-X-MAP).
    """
    lines = _versioned(_header(segments, target_duration, media_sequence=0, event=True), init)
    lines += _map(init, playlist_dir)
    for segment in segments:
        when = datetime.fromtimestamp(segment.started_at_ns / 1e9, UTC)
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{stamp}")
        lines += _entry(segment, playlist_dir)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def render_live_playlist(
    segments: Sequence[Segment],
    target_duration: float,
    playlist_dir: Path,
    *,
    window: int = LIVE_WINDOW,
    ended: bool,
    init: Path | None = None,
) -> str:
    """The sliding-window playlist: the newest `window` segments, MEDIA-SEQUENCE rising."""
    shown = list(segments[-window:])
    first = shown[0].index if shown else 0
    lines = _versioned(_header(segments, target_duration, media_sequence=first, event=False), init)
    hidden = segments[: len(segments) - len(shown)]
    discontinuities = sum(s.discontinuity for s in hidden)
    if discontinuities:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}")
    lines += _map(init, playlist_dir)
    for segment in shown:
        lines += _entry(segment, playlist_dir)
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _header(
    segments: Sequence[Segment], target_duration: float, *, media_sequence: int, event: bool
) -> list[str]:
    longest = max((s.duration_s for s in segments), default=target_duration)
    lines = ["#EXTM3U", "#EXT-X-VERSION:3"]
    if event:
        lines.append("#EXT-X-PLAYLIST-TYPE:EVENT")
    lines.append(f"#EXT-X-TARGETDURATION:{max(math.ceil(target_duration), round(longest))}")
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{media_sequence}")
    return lines


def _map(init: Path | None, playlist_dir: Path) -> list[str]:
    if init is None:
        return []
    uri = Path(os.path.relpath(init, playlist_dir)).as_posix()
    return [f'#EXT-X-MAP:URI="{uri}"']


def _versioned(text_lines: list[str], init: Path | None) -> list[str]:
    """EXT-X-MAP outside I-frame playlists needs protocol version 6; fMP4 is usually 7."""
    if init is not None:
        text_lines[1] = "#EXT-X-VERSION:7"
    return text_lines


def _entry(segment: Segment, playlist_dir: Path) -> list[str]:
    uri = Path(os.path.relpath(segment.path, playlist_dir)).as_posix()
    lines = ["#EXT-X-DISCONTINUITY"] if segment.discontinuity else []
    return [*lines, f"#EXTINF:{segment.duration_s:.3f},", uri]


def _add_streams(
    container: OutputContainer, headers: Mapping[str, StreamHeader]
) -> dict[str, Stream]:
    return {kind: header.add_to(container) for kind, header in headers.items()}


def _write_playlist(path: Path, text: str) -> None:
    """Readers (players, uploaders) never see half a playlist."""
    write_atomically(path, lambda out: _write_all(out, text.encode()))


class HlsSegmenter(Stage):
    """Writes `segment_duration`-long MPEG-TS segments and keeps the playlists current.

    A segment is cut at the first video key frame at or after its planned
    end, so the video encoder's key frame interval must equal the segment
    duration for segments of exactly that length (composite_graph sets it);
    every segment then starts with a key frame. Audio-only segments are cut
    on audio packets. Each closed segment is posted as `SegmentClosed`
    and each playlist rewrite as `PlaylistUpdated`; ENDLIST is
    written on end of stream. After a pause (Graph.resume) a segment is cut
    at the first key frame of the resumed recording and starts with
    `#EXT-X-DISCONTINUITY`: its timestamps continue, but the picture and
    sound jump from the pause to the resume. Every file it writes stays inside `directory`
    (`confine`): a playlist name like `../x.m3u8`, or a segment name that is
    a symlink leading out, is refused.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        playlist: str | os.PathLike[str],
        *,
        segment_names: SegmentNamer | None = None,
        live_playlist: str | os.PathLike[str] | None = None,
        segment_duration: float = 4.0,
        live_window: int = LIVE_WINDOW,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if segment_duration <= 0:
            raise ValueError("segment duration must be positive")
        self.directory = Path(directory)
        self.playlist = self._inside(playlist)
        self.live_playlist = self._inside(live_playlist) if live_playlist else None
        self.segment_names = segment_names or index_names("segment")
        self.segment_duration = segment_duration
        self.live_window = live_window
        self.input: InputPort[EncodedItem] = self.add_input("input")
        self.segments: list[Segment] = []
        self._headers: dict[str, StreamHeader] = {}  # by kind, from the encoders feeding it
        self._cut_on = "video"  # the kind segments are cut on: video, or audio without video
        self._tolerance = 0.0
        self._container: OutputContainer | None = None
        self._streams: dict[str, Stream] = {}
        self._current: tuple[int, Path, float, int] | None = None  # index, path, start, wall
        self._resumes_seen = 0
        self._discontinuity = False  # the segment being written starts after a resume
        self._end_s = 0.0
        self._started_at_ns = 0
        self._ended_at_ns = 0
        self.init: Path | None = None  # fMP4's initialization section, once written

    def _inside(self, name: str | os.PathLike[str]) -> Path:
        """`directory / name`, refused (PathEscapesRoot, NameTooLong) unless it stays inside."""
        confine(self.directory, os.fspath(name))
        return self.directory / name

    async def _read_headers(self, packets: EncodedInput) -> None:
        """Learn the streams from their headers: what to cut on, how close to a boundary."""
        self._headers = await packets.read_headers()
        if not self._headers:
            raise ValueError(f"{self.name}: no encoded stream reached the segmenter")
        video = self._headers.get("video")
        self._cut_on = "video" if video is not None else "audio"
        if video is not None and video.frame_rate:
            self._tolerance = CUT_TOLERANCE_FRAMES / video.frame_rate

    async def run(self) -> None:
        packets = EncodedInput(self.input)
        await self._read_headers(packets)
        while (item := await packets.recv()) is not EOS:
            if item.kind not in self._headers:
                continue
            seconds = item.seconds
            if self._current is None:
                if item.kind != self._cut_on or (
                    item.kind == "video" and not item.packet.is_keyframe
                ):
                    continue  # a segment starts on a key frame (or on audio when there is no video)
                await self._open_segment(seconds)
            elif (resumed := self._is_resume_cut(item, seconds)) or self._is_cut(item, seconds):
                await self._close_segment(seconds, ended=False)
                await self._open_segment(seconds)
                self._discontinuity = resumed
            await self.offload(self._write, item)
            duration = float((item.packet.duration or 0) * (item.packet.time_base or 0))
            self._end_s = max(self._end_s, seconds + duration)
        if self._current is not None:
            await self._close_segment(self._end_s, ended=True)
        elif self.segments:
            await self._write_playlists(ended=True)
        self._ended_at_ns = self.clock.wall_ns(self._end_s) if self.segments else 0

    def _is_cut(self, item: EncodedPacket, seconds: float) -> bool:
        assert self._current is not None
        if item.kind != self._cut_on or (item.kind == "video" and not item.packet.is_keyframe):
            return False
        return seconds >= self._current[2] + self.segment_duration - self._tolerance

    def _is_resume_cut(self, item: EncodedPacket, seconds: float) -> bool:
        """The first key frame at or after a resume point of the graph clock."""
        resumes = self.clock.resumes
        if self._resumes_seen >= len(resumes) or seconds < resumes[self._resumes_seen]:
            return False
        if item.kind != self._cut_on or (item.kind == "video" and not item.packet.is_keyframe):
            return False
        self._resumes_seen = len(resumes)
        return True

    async def _open_segment(self, start_s: float) -> None:
        self._discontinuity = False
        index = len(self.segments)
        wall_ns = self.clock.wall_ns(start_s)
        when = datetime.fromtimestamp(wall_ns / 1e9, UTC)
        path = self.directory / self.segment_names(index, when)
        await self.offload(self._open_container, path)
        self._current = (index, path, start_s, wall_ns)
        if not self._started_at_ns:
            self._started_at_ns = wall_ns

    def _open_container(self, path: Path) -> None:
        self._inside(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(path), "w", format="mpegts")
        self._streams = _add_streams(container, self._headers)
        self._container = container

    def _write(self, item: EncodedPacket) -> None:
        assert self._container is not None
        self._container.mux(private_packet(item.packet, self._streams[item.kind]))

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()

    async def _close_segment(self, end_s: float, *, ended: bool) -> None:
        assert self._current is not None
        index, path, start_s, wall_ns = self._current
        self._current = None
        await self.offload(self._close_container)
        size = path.stat().st_size if path.exists() else 0
        segment = Segment(
            index, path, start_s, max(0.0, end_s - start_s), wall_ns, size, self._discontinuity
        )
        self.segments.append(segment)
        self.post(SegmentClosed(self, segment))
        await self._write_playlists(ended=ended)

    async def _write_playlists(self, *, ended: bool) -> None:
        segments = list(self.segments)
        event = render_event_playlist(
            segments, self.segment_duration, self.playlist.parent, ended=ended, init=self.init
        )
        await self.offload(_write_playlist, self.playlist, event)
        self.post(PlaylistUpdated(self, self.playlist, live=False, ended=ended))
        if self.live_playlist is not None:
            live = render_live_playlist(
                segments,
                self.segment_duration,
                self.live_playlist.parent,
                window=self.live_window,
                ended=ended,
                init=self.init,
            )
            await self.offload(_write_playlist, self.live_playlist, live)
            self.post(PlaylistUpdated(self, self.live_playlist, live=True, ended=ended))

    @property
    def playlists(self) -> list[Path]:
        """The playlist, and the live one if there is one."""
        return [p for p in (self.playlist, self.live_playlist) if p is not None]

    async def cleanup(self) -> None:
        if self._container is not None:
            await self.offload(self._close_container)

    def release(self) -> None:
        """The streams keep the last segment's (closed) container alive, and the headers
        their encoders' codec contexts (through the template streams)."""
        self._streams.clear()
        self._headers.clear()

    @property
    def results(self) -> HlsResults:
        return HlsResults(
            playlist=self.playlist,
            live_playlist=self.live_playlist,
            segment_count=len(self.segments),
            size=sum(s.size for s in self.segments),
            duration_s=sum(s.duration_s for s in self.segments),
            started_at_ns=self._started_at_ns,
            ended_at_ns=self._ended_at_ns,
        )

    def stats(self) -> dict[str, float]:
        results = self.results
        return {
            "segments": results.segment_count,
            "bytes": results.size,
            "duration_s": results.duration_s,
        }


# Fragmented MP4 for HLS: no index to rewrite, a fragment at every video key frame,
# and every fragment written out as soon as it is complete.
FMP4_OPTIONS = {
    "movflags": "+frag_keyframe+empty_moov+default_base_moof+skip_trailer",
    "flush_packets": "1",
    "avoid_negative_ts": "disabled",
}


class FragmentSplitter(io.RawIOBase):
    """The byte stream of a fragmented MP4 muxer, split into its header and its fragments.

    FFmpeg writes `ftyp` + `moov` once, then a `moof` + `mdat` pair per
    fragment. It is written here, from the muxer's worker thread; the
    segmenter takes the complete fragments after each mux call.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._moof = b""
        self.header = bytearray()
        self.fragments: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._pending += data
        while len(self._pending) >= 16 or (len(self._pending) >= 8 and self._size() != 1):
            size, kind = self._size(), bytes(self._pending[4:8])
            if size == 1:  # a 64-bit size follows the type
                size = int.from_bytes(self._pending[8:16], "big")
            if size < 8 or len(self._pending) < size:
                break
            box = bytes(self._pending[:size])
            del self._pending[:size]
            if kind == b"moof":
                self._moof = box
            elif kind == b"mdat":
                self.fragments.append(self._moof + box)
                self._moof = b""
            elif not self.fragments and not self._moof:
                self.header += box  # ftyp, moov
        return len(data)

    def _size(self) -> int:
        return int.from_bytes(self._pending[:4], "big")

    def take(self) -> list[bytes]:
        taken, self.fragments = self.fragments, []
        return taken


class Fmp4HlsSegmenter(HlsSegmenter):
    """HLS with fragmented MP4 segments (`.m4s`) and one initialization section.

    Carries what MPEG-TS cannot: VP9 and AV1 (and H.264, Opus, AAC). One MP4
    muxer writes the whole output, a fragment per video key frame
    (`FragmentSplitter`); a segment is the fragments from a cut key frame to
    the next cut, so fragment n starts at the n-th key frame muxed. The
    initialization section `init_name` is written first and posted as
    `InitSegmentWritten`; playlists name it in EXT-X-MAP. Needs video.
    """

    def __init__(self, *args: Any, init_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_path = self._inside(init_name)
        self._splitter = FragmentSplitter()
        self._muxer: OutputContainer | None = None
        self._file: BinaryIO | None = None
        # video key frames muxed whose fragment is not stored yet:
        # (starts a segment, first after a resume, time)
        self._keyframes: deque[tuple[bool, bool, float]] = deque()
        self._last_cut_s: float | None = None

    async def run(self) -> None:
        packets = EncodedInput(self.input)
        await self._read_headers(packets)
        if self._cut_on != "video":
            raise ValueError("fragmented MP4 segments need video")
        while (item := await packets.recv()) is not EOS:
            if item.kind not in self._headers:
                continue
            seconds = item.seconds
            keyframe = item.kind == "video" and item.packet.is_keyframe
            if self._muxer is None:
                if not keyframe:
                    continue  # the output starts on a video key frame
                await self.offload(self._open_muxer)
            if keyframe:
                resumed = self._is_resume_cut(item, seconds)
                cut = resumed or (
                    self._last_cut_s is None
                    or seconds >= self._last_cut_s + self.segment_duration - self._tolerance
                )
                if cut:
                    self._last_cut_s = seconds
                self._keyframes.append((cut, resumed, seconds))
            await self.offload(self._write, item)
            duration = float((item.packet.duration or 0) * (item.packet.time_base or 0))
            self._end_s = max(self._end_s, seconds + duration)
            await self._store_fragments()
        if self._muxer is not None:
            await self.offload(self._close_muxer)  # flushes the last fragment
            await self._store_fragments()
        if self._current is not None:
            await self._close_segment(self._end_s, ended=True)
        elif self.segments:
            await self._write_playlists(ended=True)
        self._ended_at_ns = self.clock.wall_ns(self._end_s) if self.segments else 0

    def _open_muxer(self) -> None:
        muxer = av.open(self._splitter, "w", format="mp4", options=FMP4_OPTIONS)
        self._streams = _add_streams(muxer, self._headers)
        self._muxer = muxer

    def _write(self, item: EncodedPacket) -> None:
        assert self._muxer is not None
        self._muxer.mux(private_packet(item.packet, self._streams[item.kind]))

    def _close_muxer(self) -> None:
        muxer, self._muxer = self._muxer, None
        if muxer is not None:
            muxer.close()

    async def _store_fragments(self) -> None:
        """Write complete fragments to their segments, opening and closing segments on cuts."""
        if self.init is None and self._splitter.fragments:
            await self.offload(_write_init, self._init_path, bytes(self._splitter.header))
            self.init = self._init_path
            self.post(InitSegmentWritten(self, self._init_path))
        for fragment in self._splitter.take():
            starts_segment, resumed, start_s = self._keyframes.popleft()
            if starts_segment:
                if self._current is not None:
                    await self._close_segment(start_s, ended=False)
                await self._open_segment(start_s)
                self._discontinuity = resumed
            await self.offload(self._append, fragment)

    def _open_container(self, path: Path) -> None:
        """A segment is a plain file the fragments are appended to."""
        self._inside(path.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in _close_container

    def _append(self, fragment: bytes) -> None:
        assert self._file is not None
        self._file.write(fragment)

    def _close_container(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    async def cleanup(self) -> None:
        if self._muxer is not None:
            await self.offload(self._close_muxer)
        await super().cleanup()
        if self._file is not None:
            await self.offload(self._close_container)


def _write_init(path: Path, data: bytes) -> None:
    write_atomically(path, lambda out: _write_all(out, data))


def _write_all(out: BinaryIO, data: bytes) -> None:
    out.write(data)
