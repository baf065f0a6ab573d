"""VideoCompositor: the participants of a room in one constant-frame-rate picture."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
from av.video.reformatter import VideoReformatter
from livekit.protocol.models import TrackSource, TrackType

from egresskit.pipeline import EOS, InputPort, OutputPort, Stage
from egresskit.stages.canvas import Planes, blank_planes, fill, frame_planes
from egresskit.stages.labels import label_patch, overflow_patch, placeholder_patch
from egresskit.stages.layout import (
    GRID,
    SINGLE_SPEAKER,
    SPEAKER,
    Layout,
    Placement,
    Rect,
    Theme,
    fit,
    parse_layout,
    place,
)
from egresskit.stages.media import (
    PLAYOUT_DELAY_S,
    RosterItem,
    SpeakersAnnounced,
    TrackEnded,
    TrackFrame,
    TrackInfo,
    TrackItem,
    TrackMuteChanged,
    TrackStarted,
)
from egresskit.stages.participants import ParticipantGate
from egresskit.stages.speaker import SpeakerTracker

# Timed frames a track may hold until they are due: more than PLAYOUT_DELAY_S
# of 60 fps video. Beyond it the oldest is shown early rather than kept.
MAX_PENDING_FRAMES = 32


@dataclass(slots=True)
class _VideoTrack:
    """One video track, its frame on show, its timed frames not yet due, and the scaled frame."""

    info: TrackInfo
    order: int
    frame: av.VideoFrame | None = None
    # (media time, frame) in arrival order, shown once the clock reaches media time + delay
    pending: deque[tuple[float, av.VideoFrame]] = field(default_factory=deque)
    version: int = 0
    muted: bool = False
    # (width, height, version) of the scaled frame, its planes, and the frame keeping them alive
    scaled: tuple[tuple[int, int, int], Planes, av.VideoFrame] | None = None
    # Frames are shared by every graph subscribed to the track: scaling through the
    # frame's own cached reformatter from two compositor threads at once crashes
    # swscale, so each track owns one.
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)


@dataclass(slots=True)
class _Participant:
    """Someone with at least one track: one tile, whatever they publish."""

    identity: str
    name: str
    order: int
    sids: set[str] = field(default_factory=set)
    mics: dict[str, bool] = field(default_factory=dict)  # microphone sid -> muted

    @property
    def mic_muted(self) -> bool:
        return bool(self.mics) and all(self.mics.values())


@dataclass(frozen=True, slots=True)
class _View:
    """What one tile shows in one output frame; captured in the loop thread."""

    key: str  # participant identity, or a screen share's track sid
    label: str
    mic_muted: bool
    track: _VideoTrack | None
    frame: av.VideoFrame | None  # None: a placeholder with initials
    version: int

    @property
    def static_key(self) -> tuple[Any, ...]:
        """What the unchanging part of the tile depends on."""
        return (self.key, self.label, self.mic_muted, self.frame is None)


@dataclass(frozen=True, slots=True)
class _Scene:
    theme: Theme
    placement: Placement
    views: tuple[_View, ...]
    highlight: int | None  # tile outlined as the one talking (grid only)


def _label_px(tile: Rect, canvas_height: int) -> int:
    return max(10, min(round(canvas_height * 0.028), round(tile.height * 0.075)))


def _margin(tile: Rect) -> int:
    return max(4, round(tile.height * 0.03)) & ~1


# How much larger than its tile a source may be and still be cropped rather than scaled.
CROP_TOLERANCE = 0.05


def _croppable(frame: av.VideoFrame, box: Rect) -> bool:
    return (
        frame.format.name == "yuv420p"
        and box.width <= frame.width <= box.width * (1 + CROP_TOLERANCE)
        and box.height <= frame.height <= box.height * (1 + CROP_TOLERANCE)
    )


class VideoCompositor(Stage):
    """Draws every participant of a room in a layout, `fps` times a second.

    Frames are produced on the graph clock, not on arrival: frame n has
    pts n in a 1/fps time base and is emitted when the clock reaches n/fps,
    so the output is constant frame rate and its length equals wall time
    however the sources behave. A stalled track keeps showing its last frame.
    Frame n shows, of each track, the frame captured nearest to
    n/fps - PLAYOUT_DELAY_S (TrackFrame.time), as the mixer plays audio, so
    pictures and sound captured together come out together; an untimed
    frame is shown as it arrives.

    Input `input` takes the video tracks' items (frames included); input
    `roster` takes every track's start, end and mute without frames, so
    participants without video get a placeholder tile and muted
    microphones are marked. Tiles are per participant; a screen share gets
    a tile of its own and turns `grid` into the speaker arrangement with
    the share large. `speakers` (levels from the mixer, speakers the
    room's server announces on the roster) says who is talking.
    `participants` says who is drawn: a participant's frames captured while
    left out are dropped, and their tile comes and goes when the media of
    the instant they were chosen or left out is played (ParticipantGate).
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        *,
        layout: str = "grid",
        speakers: SpeakerTracker | None = None,
        participants: ParticipantGate | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if width % 2 or height % 2:
            raise ValueError("compositor width and height must be even")
        self.width = width
        self.height = height
        self.fps = fps
        self.time_base = Fraction(1, fps)
        self.speakers = speakers
        self.participants = participants or ParticipantGate()
        # the capture instant of the media on show (None: now, with no graph clock)
        self._shown_at: float | None = None
        self.input: InputPort[TrackItem] = self.add_input("input")
        self.roster: InputPort[RosterItem] = self.add_input("roster")
        self.output: OutputPort[av.VideoFrame] = self.add_output("output")
        self._layout_lock = threading.Lock()
        self._layout = parse_layout(layout)
        self._participants: dict[str, _Participant] = {}
        self._videos: dict[str, _VideoTrack] = {}
        self._joined = 0
        self._static: tuple[tuple[Any, ...], Planes] | None = None
        self.frames_out = 0

    @property
    def layout(self) -> Layout:
        with self._layout_lock:
            return self._layout

    def set_layout(self, name: str) -> None:
        """Switch layout (a LiveKit layout name) from the next output frame on.

        Safe from any thread; ValueError for an unknown name.
        """
        layout = parse_layout(name)
        with self._layout_lock:
            self._layout = layout

    async def run(self) -> None:
        intakes = [asyncio.create_task(self._intake(port)) for port in (self.input, self.roster)]
        try:
            await self._tick()
        finally:
            for intake in intakes:
                intake.cancel()
            for intake in intakes:
                with contextlib.suppress(asyncio.CancelledError):
                    await intake

    async def _intake(self, port: InputPort[TrackItem] | InputPort[RosterItem]) -> None:
        while (item := await port.recv()) is not EOS:
            self.apply(item)

    def apply(self, item: TrackItem | RosterItem) -> None:
        """Take one item into account (in the loop thread, or with no graph at all)."""
        if isinstance(item, SpeakersAnnounced):
            if self.speakers is not None:  # someone left out never takes the floor
                heard = tuple(s for s in item.speakers if self.participants.admits(s[0]))
                self.speakers.announce(heard)
            return
        info = item.track
        if isinstance(item, TrackFrame):
            track = self._videos.get(info.sid)
            if track is None or not isinstance(item.frame, av.VideoFrame):
                return
            if not self.participants.admits(info.participant_identity, item.time):
                return  # captured while its participant was left out: never shown
            if item.time is None or self.graph is None:
                track.frame = item.frame
                track.version += 1
                return
            if self.clock.in_pause(item.time):
                return  # captured while the recording was paused: never shown
            track.pending.append((self.clock.media_time(item.time), item.frame))
            if len(track.pending) > MAX_PENDING_FRAMES:
                track.frame = track.pending.popleft()[1]
                track.version += 1
        elif isinstance(item, TrackStarted):
            self._start(info)
        elif isinstance(item, TrackEnded):
            self._end(info)
        elif isinstance(item, TrackMuteChanged):
            track = self._videos.get(info.sid)
            if track is not None:
                track.muted = item.muted
            person = self._participants.get(info.participant_identity)
            if person is not None and info.sid in person.mics:
                person.mics[info.sid] = item.muted

    def _start(self, info: TrackInfo) -> None:
        person = self._participants.get(info.participant_identity)
        if person is None:
            self._joined += 1
            person = _Participant(
                info.participant_identity,
                info.participant_name or info.participant_identity,
                self._joined,
            )
            self._participants[person.identity] = person
        person.sids.add(info.sid)
        if info.kind == TrackType.VIDEO and info.sid not in self._videos:
            self._joined += 1
            self._videos[info.sid] = _VideoTrack(info, self._joined)
        if info.kind == TrackType.AUDIO and info.source == TrackSource.MICROPHONE:
            person.mics.setdefault(info.sid, False)

    def _end(self, info: TrackInfo) -> None:
        self._videos.pop(info.sid, None)
        person = self._participants.get(info.participant_identity)
        if person is None:
            return
        person.sids.discard(info.sid)
        person.mics.pop(info.sid, None)
        if not person.sids:
            del self._participants[person.identity]

    async def _tick(self) -> None:
        n = 0
        while not self.stopping.is_set():
            await self.clock.sleep_until(n / self.fps)
            if self.stopping.is_set():
                break
            self._play(n / self.fps)
            # the scene is captured in the loop thread: intake changes tracks while the worker draws
            frame = await self.offload(self._render, self._scene())
            frame.pts = n
            frame.time_base = self.time_base
            await self.output.send(frame)
            n += 1
            self.frames_out = n

    def compose(self) -> av.VideoFrame:
        """Draw the current state now, without a clock (benchmarks, documentation)."""
        return self._render(self._scene())

    # --- what to show: runs in the loop thread ------------------------------------------

    def _play(self, media_time: float) -> None:
        """Put on show, per track, the newest frame captured by (nearest to) the delayed time.

        Nearest, not newest before: half a frame period of slack halves the
        worst error of showing a source on this frame grid. A track with
        nothing on show yet shows its first frame at once. A track whose
        participant was left out at the instant on show shows nothing, so
        that when they are let in again no picture from before returns.
        """
        due = media_time - PLAYOUT_DELAY_S + 0.5 / self.fps
        # The capture instant of `due`. Right after a resume it is later by the pause: a
        # tile may then follow a change that early, but frames are still gated as captured.
        self._shown_at = time.monotonic() - (self.clock.now() - due)
        for track in self._videos.values():
            pending = track.pending
            if not self.participants.admits(track.info.participant_identity, self._shown_at):
                track.frame = track.scaled = None
                while pending and pending[0][0] <= due:
                    pending.popleft()
                continue
            if not pending:
                continue
            if track.frame is None:
                track.frame = pending.popleft()[1]
                track.version += 1
            while pending and pending[0][0] <= due:
                track.frame = pending.popleft()[1]
                track.version += 1

    def _scene(self) -> _Scene:
        layout = self.layout
        chosen = self.participants.admits
        people = sorted(
            (p for p in self._participants.values() if chosen(p.identity, self._shown_at)),
            key=lambda p: p.order,
        )
        views = [self._participant_view(p) for p in people]
        shares = sorted(
            (
                t
                for t in self._videos.values()
                if t.info.source == TrackSource.SCREEN_SHARE
                and chosen(t.info.participant_identity, self._shown_at)
            ),
            key=lambda t: -t.order,
        )
        arrangement = layout.arrangement
        active = self.speakers.active if self.speakers is not None else None
        keys = [v.key for v in views]
        speaker_index = keys.index(active) if active in keys else None
        if shares:
            # the newest share is large; a share makes a grid a speaker arrangement
            if arrangement == GRID:
                arrangement = SPEAKER
            views = [self._share_view(t) for t in shares] + views
            speaker_index = None if speaker_index is None else speaker_index + len(shares)
        elif arrangement in (SPEAKER, SINGLE_SPEAKER) and speaker_index:
            views.insert(0, views.pop(speaker_index))
            speaker_index = 0
        placement = place(arrangement, len(views), self.width, self.height)
        last = placement.shown - 1
        if speaker_index is not None and speaker_index > last >= 0:
            # whoever talks is never hidden behind the overflow tile
            views[last], views[speaker_index] = views[speaker_index], views[last]
            speaker_index = last
        highlight = None
        if (
            arrangement == GRID
            and len(views) > 1
            and speaker_index is not None
            and self.speakers is not None
            and self.speakers.speaking(views[speaker_index].key)
        ):
            highlight = speaker_index
        return _Scene(layout.theme, placement, tuple(views[: placement.shown]), highlight)

    def _participant_view(self, person: _Participant) -> _View:
        cameras = [
            self._videos[sid]
            for sid in person.sids
            if sid in self._videos and self._videos[sid].info.source != TrackSource.SCREEN_SHARE
        ]
        camera = min(
            cameras,
            key=lambda t: (t.info.source != TrackSource.CAMERA, t.order),
            default=None,
        )
        shown = camera is not None and not camera.muted and camera.frame is not None
        return _View(
            person.identity,
            person.name,
            person.mic_muted,
            camera if shown else None,
            camera.frame if shown and camera else None,
            camera.version if shown and camera else 0,
        )

    def _share_view(self, track: _VideoTrack) -> _View:
        name = track.info.participant_name or track.info.participant_identity
        visible = not track.muted and track.frame is not None
        return _View(
            track.info.sid,
            f"{name} (screen)",
            False,
            track if visible else None,
            track.frame if visible else None,
            track.version,
        )

    # --- drawing: runs on the stage's worker thread ---------------------------------------

    def _render(self, scene: _Scene) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        planes = frame_planes(frame)
        for target, source in zip(planes, self._static_layer(scene), strict=True):
            target[...] = source
        for view, rect in zip(scene.views, scene.placement.rects, strict=False):
            if view.track is None or view.frame is None:
                continue
            self._draw_video(planes, view.track, view.frame, view.version, rect)
            self._draw_label(planes, view, rect, scene.theme)
        if scene.highlight is not None:
            self._outline(planes, scene.placement.rects[scene.highlight], scene.theme)
        return frame

    def _static_layer(self, scene: _Scene) -> Planes:
        """Background, tile boxes, placeholders and overflow: redrawn only when they change."""
        key = (
            scene.theme,
            scene.placement,
            tuple(v.static_key for v in scene.views),
        )
        if self._static is not None and self._static[0] == key:
            return self._static[1]
        planes = blank_planes(self.width, self.height, scene.theme.background)
        rects = scene.placement.rects
        for view, rect in zip(scene.views, rects, strict=False):
            fill(planes, rect, scene.theme.tile)
            if view.frame is None:
                name = view.label
                placeholder_patch(name, view.key, scene.theme, rect.width, rect.height).draw(
                    planes, rect.x, rect.y
                )
                self._draw_label(planes, view, rect, scene.theme)
        if scene.placement.hidden:
            rect = rects[-1]
            overflow_patch(scene.placement.hidden, scene.theme, rect.width, rect.height).draw(
                planes, rect.x, rect.y
            )
        self._static = (key, planes)
        return planes

    @staticmethod
    def _draw_video(
        planes: Planes, track: _VideoTrack, frame: av.VideoFrame, version: int, rect: Rect
    ) -> None:
        box = fit(frame.width, frame.height, rect)
        if _croppable(frame, box):
            # A source a few percent larger than its tile (a 640x360 camera in a
            # 2x2 grid with gaps) is shown 1:1 with its edges cropped: scaling it
            # would be most of the compositor's cost, for a change nobody sees.
            top = (frame.height - box.height) // 4 * 2
            left = (frame.width - box.width) // 4 * 2
            y, u, v = frame_planes(frame)
            planes[0][box.y : box.y + box.height, box.x : box.x + box.width] = y[
                top : top + box.height, left : left + box.width
            ]
            cy, cx, ch, cw = box.y // 2, box.x // 2, box.height // 2, box.width // 2
            planes[1][cy : cy + ch, cx : cx + cw] = u[
                top // 2 : top // 2 + ch, left // 2 : left // 2 + cw
            ]
            planes[2][cy : cy + ch, cx : cx + cw] = v[
                top // 2 : top // 2 + ch, left // 2 : left // 2 + cw
            ]
            return
        key = (box.width, box.height, version)
        if track.scaled is None or track.scaled[0] != key:
            # swscale runs without the GIL; the result is reused until a new frame arrives.
            # AREA averages what it shrinks (crisp, no aliasing) and costs about the
            # same as bilinear; one thread, since many graphs share the cores.
            scaled = track.reformatter.reformat(
                frame, box.width, box.height, "yuv420p", interpolation="AREA", threads=1
            )
            track.scaled = (key, frame_planes(scaled), scaled)
        source = track.scaled[1]
        planes[0][box.y : box.y + box.height, box.x : box.x + box.width] = source[0]
        cy, cx, ch, cw = box.y // 2, box.x // 2, box.height // 2, box.width // 2
        planes[1][cy : cy + ch, cx : cx + cw] = source[1]
        planes[2][cy : cy + ch, cx : cx + cw] = source[2]

    def _draw_label(self, planes: Planes, view: _View, rect: Rect, theme: Theme) -> None:
        margin = _margin(rect)
        patch = label_patch(
            view.label, view.mic_muted, theme, _label_px(rect, self.height), rect.width - 2 * margin
        )
        if patch.height + 2 * margin <= rect.height:
            patch.draw(planes, rect.x + margin, rect.y + rect.height - margin - patch.height)

    @staticmethod
    def _outline(planes: Planes, rect: Rect, theme: Theme) -> None:
        width = 4 if rect.height >= 200 else 2
        right, bottom = rect.x + rect.width - width, rect.y + rect.height - width
        for edge in (
            Rect(rect.x, rect.y, rect.width, width),
            Rect(rect.x, bottom, rect.width, width),
            Rect(rect.x, rect.y, width, rect.height),
            Rect(right, rect.y, width, rect.height),
        ):
            fill(planes, edge, theme.highlight)

    def release(self) -> None:
        """Drop the last frame of every track and the drawn background."""
        self._videos.clear()
        self._participants.clear()
        self._static = None

    def stats(self) -> dict[str, int]:
        return {"frames_out": self.frames_out, "tiles": len(self._participants)}
