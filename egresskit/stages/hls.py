"""HlsSegmenter: encoded packets into MPEG-TS segments and HLS playlists on local disk.

Segments are cut here, at video key frames, into one MPEG-TS container each,
rather than by FFmpeg's `segment`/`hls` muxers: cutting ourselves gives the
exact names the egress API asks for (INDEX or wall-clock TIMESTAMP
suffixes), a notification the moment each segment file is closed (so it can
be uploaded at once), and playlists written exactly as specified (EVENT
playlist with PROGRAM-DATE-TIME, sliding live window), atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
from av.container import OutputContainer
from av.stream import Stream

from egresskit.pipeline import EOS, Stage
from egresskit.stages.encoder import _Encoder
from egresskit.stages.media import EncodedPacket
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
    segments: Sequence[Segment], target_duration: float, playlist_dir: Path, *, ended: bool
) -> str:
    """The full EVENT playlist: every segment, each with its PROGRAM-DATE-TIME."""
    lines = _header(segments, target_duration, media_sequence=0, event=True)
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
) -> str:
    """The sliding-window playlist: the newest `window` segments, MEDIA-SEQUENCE rising."""
    shown = list(segments[-window:])
    first = shown[0].index if shown else 0
    lines = _header(segments, target_duration, media_sequence=first, event=False)
    hidden = segments[: len(segments) - len(shown)]
    discontinuities = sum(s.discontinuity for s in hidden)
    if discontinuities:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuities}")
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


def _entry(segment: Segment, playlist_dir: Path) -> list[str]:
    uri = Path(os.path.relpath(segment.path, playlist_dir)).as_posix()
    lines = ["#EXT-X-DISCONTINUITY"] if segment.discontinuity else []
    return [*lines, f"#EXTINF:{segment.duration_s:.3f},", uri]


def _write_playlist(path: Path, text: str) -> None:
    """Readers (players, uploaders) never see half a playlist."""
    write_atomically(path, lambda out: out.write(text.encode()))


class HlsSegmenter(Stage):
    """Writes `segment_duration`-long MPEG-TS segments and keeps the playlists current.

    A segment is cut at the first video key frame at or after its planned
    end, so the video encoder's key frame interval must equal the segment
    duration for segments of exactly that length (composite_graph sets it);
    every segment then starts with a key frame. Audio-only segments are cut
    on audio packets. Each closed segment is posted as `segment_closed`
    (path, filename, index, start, duration, size, started_at) and each
    playlist rewrite as `playlist_updated` (path, live, ended); ENDLIST is
    written on end of stream. After a pause (Graph.resume) a segment is cut
    at the first key frame of the resumed recording and starts with
    `#EXT-X-DISCONTINUITY`: its timestamps continue, but the picture and
    sound jump from the pause to the resume. Every file it writes stays inside `directory`
    (`confine`): a playlist name like `../x.m3u8`, or a segment name that is
    a symlink leading out, is refused.
    """

    def __init__(
        self,
        encoders: Sequence[_Encoder],
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
        if not encoders:
            raise ValueError("a segmenter needs at least one encoder")
        if segment_duration <= 0:
            raise ValueError("segment duration must be positive")
        self.encoders = list(encoders)
        self.directory = Path(directory)
        self.playlist = self._inside(playlist)
        self.live_playlist = self._inside(live_playlist) if live_playlist else None
        self.segment_names = segment_names or index_names("segment")
        self.segment_duration = segment_duration
        self.live_window = live_window
        self.input = self.add_input("input")
        self.segments: list[Segment] = []
        self._cut_on = "video" if any(e.kind == "video" for e in self.encoders) else "audio"
        frame_s = min((1 / e.encoding.fps for e in self.encoders if e.kind == "video"), default=0)
        self._tolerance = CUT_TOLERANCE_FRAMES * frame_s
        self._container: OutputContainer | None = None
        self._streams: dict[str, Stream] = {}
        self._current: tuple[int, Path, float, int] | None = None  # index, path, start, wall
        self._resumes_seen = 0
        self._discontinuity = False  # the segment being written starts after a resume
        self._end_s = 0.0
        self._started_at_ns = 0
        self._ended_at_ns = 0

    def _inside(self, name: str | os.PathLike[str]) -> Path:
        """`directory / name`, refused (PathEscapesRoot, NameTooLong) unless it stays inside."""
        confine(self.directory, os.fspath(name))
        return self.directory / name

    async def run(self) -> None:
        while (item := await self.input.recv()) is not EOS:
            if item.kind not in {e.kind for e in self.encoders}:
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
        self._streams = {e.kind: e.add_stream(container) for e in self.encoders}
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
        self.post(
            "segment_closed",
            path=str(path),
            filename=segment.filename,
            index=index,
            start=start_s,
            duration=segment.duration_s,
            size=size,
            started_at=wall_ns,
        )
        await self._write_playlists(ended=ended)

    async def _write_playlists(self, *, ended: bool) -> None:
        segments = list(self.segments)
        event = render_event_playlist(
            segments, self.segment_duration, self.playlist.parent, ended=ended
        )
        await self.offload(_write_playlist, self.playlist, event)
        self.post("playlist_updated", path=str(self.playlist), live=False, ended=ended)
        if self.live_playlist is not None:
            live = render_live_playlist(
                segments,
                self.segment_duration,
                self.live_playlist.parent,
                window=self.live_window,
                ended=ended,
            )
            await self.offload(_write_playlist, self.live_playlist, live)
            self.post("playlist_updated", path=str(self.live_playlist), live=True, ended=ended)

    async def cleanup(self) -> None:
        if self._container is not None:
            await self.offload(self._close_container)

    def release(self) -> None:
        """The streams keep the last segment's (closed) container alive."""
        self._streams.clear()

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
