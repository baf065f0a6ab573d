"""Room composite layouts: who is drawn where, in which colours, and live layout changes.

Most checks drive a VideoCompositor with the same track items a room
subscriber sends and read back the pictures it draws; one records a real
room to MP4 and decodes it.
"""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest
from livekit.protocol.models import TrackSource, TrackType
from media_checks import ffprobe, frame_at, region_color, stream
from publishers import SyntheticVideoTrack, colors_close

from egresskit import FileOutput, GraphState, VideoEncoding, composite_graph
from egresskit.pipeline import Graph, Stage
from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.layout import (
    DARK,
    LAYOUT_NAMES,
    LIGHT,
    MAX_GRID_TILES,
    Rect,
    gap_for,
    parse_layout,
    place,
)
from egresskit.stages.media import (
    TrackEnded,
    TrackFrame,
    TrackInfo,
    TrackMuteChanged,
    TrackStarted,
)
from egresskit.stages.speaker import SpeakerTracker

W, H = 1280, 720
# 24 colours far apart (each pair differs by 100 in some channel), none near a theme colour
COLOURS = [
    c
    for c in itertools.product((30, 130, 230), repeat=3)
    if c not in ((30, 30, 30), (130, 130, 130), (230, 230, 230))
]
THEMES = {"dark": DARK, "light": LIGHT}


def camera(index: int) -> TrackInfo:
    return TrackInfo(
        f"TR_cam{index}", TrackType.VIDEO, TrackSource.CAMERA, f"p{index}", f"P {index}"
    )


def microphone(identity: str, name: str = "") -> TrackInfo:
    return TrackInfo(f"TR_mic_{identity}", TrackType.AUDIO, TrackSource.MICROPHONE, identity, name)


def solid(colour, width: int = 640, height: int = 360) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((height, width, 3), colour, np.uint8), format="rgb24")


def with_participants(count: int, layout: str = "grid", **kwargs) -> VideoCompositor:
    compositor = VideoCompositor(W, H, layout=layout, **kwargs)
    for i in range(count):
        compositor.apply(TrackStarted(camera(i)))
        compositor.apply(TrackFrame(camera(i), solid(COLOURS[i])))
    return compositor


def picture(compositor: VideoCompositor) -> np.ndarray:
    return compositor.compose().to_ndarray(format="rgb24")


def inside(rect: Rect) -> tuple[int, int, int, int]:
    """The middle of a tile, above where its name label sits."""
    return (
        rect.x + rect.width // 4,
        rect.y + rect.height // 6,
        rect.x + rect.width * 3 // 4,
        rect.y + rect.height * 3 // 5,
    )


def colour_in(image: np.ndarray, rect: Rect) -> tuple[int, int, int]:
    return region_color(image, *inside(rect))


def test_layout_names():
    assert parse_layout("") == parse_layout("grid") == parse_layout("grid-dark")
    assert parse_layout("speaker-light").arrangement == "speaker"
    assert parse_layout("speaker-light").theme is LIGHT
    assert parse_layout("single-speaker").theme is DARK
    assert {parse_layout(n).name for n in LAYOUT_NAMES} >= {"grid", "speaker-light"}
    for bad in ("mosaic", "grid-blue", "Grid", "speaker-light-dark"):
        with pytest.raises(ValueError):
            parse_layout(bad)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 9, 17])
def test_grid_geometry_is_even_and_balanced(count):
    placement = place("grid", count, W, H)
    rects = placement.rects
    assert len(rects) == min(count, MAX_GRID_TILES)
    assert placement.shown + placement.hidden == count
    gap = gap_for(W, H)
    assert len({(r.width, r.height) for r in rects}) == 1, "tiles differ in size"
    for r in rects:
        assert all(v % 2 == 0 for v in (r.x, r.y, r.width, r.height))
        assert abs(r.width / r.height - 16 / 9) < 0.03
        assert gap <= r.x and r.x + r.width <= W - gap
        assert gap <= r.y and r.y + r.height <= H - gap
    for a, b in itertools.combinations(rects, 2):
        apart_x = max(a.x, b.x) - min(a.x + a.width, b.x + b.width)
        apart_y = max(a.y, b.y) - min(a.y + a.height, b.y + b.height)
        assert max(apart_x, apart_y) >= gap, f"{a} and {b} are closer than the gap"
    # reading order: rows top to bottom, left to right within a row
    order = sorted(range(len(rects)), key=lambda i: (rects[i].y, rects[i].x))
    assert order == list(range(len(rects)))
    if count == 2:
        assert rects[0].y == rects[1].y and rects[0].x < rects[1].x


@pytest.mark.parametrize("theme", ["dark", "light"])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 6, 9, 17])
def test_grid_draws_every_participant_in_place(count, theme):
    colours = THEMES[theme]
    image = picture(with_participants(count, f"grid-{theme}"))
    placement = place("grid", count, W, H)
    for i, rect in enumerate(placement.rects[: placement.shown]):
        seen = colour_in(image, rect)
        assert colors_close(seen, COLOURS[i], 12), f"tile {i}: {seen} != {COLOURS[i]}"
    gap = gap_for(W, H)
    assert colors_close(region_color(image, 0, 0, W, gap), colours.background, 6)
    if placement.hidden:
        # "+N" on the theme's tile colour, and the hidden participants nowhere
        assert placement.hidden == count - (MAX_GRID_TILES - 1) == 2
        overflow = placement.rects[-1]
        assert colors_close(region_color(image, *inside(overflow)), colours.tile, 12)
        tile = image[
            overflow.y : overflow.y + overflow.height, overflow.x : overflow.x + overflow.width
        ]
        assert np.abs(tile.astype(int) - colours.text).sum(axis=2).min() < 60, "no +N text"
        for rect in placement.rects:
            for hidden in COLOURS[placement.shown : count]:
                assert not colors_close(colour_in(image, rect), hidden, 12)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_participant_without_video_gets_a_placeholder_and_muted_mark(theme):
    colours = THEMES[theme]
    compositor = with_participants(1, f"grid-{theme}")
    mic = microphone("zoe", "Zoe Smith")
    compositor.apply(TrackStarted(mic))
    compositor.apply(TrackStarted(microphone("p0")))
    rects = place("grid", 2, W, H).rects

    def muted_pixels(image: np.ndarray, rect: Rect) -> int:
        label = image[
            rect.y + rect.height * 3 // 4 : rect.y + rect.height, rect.x : rect.x + rect.width // 2
        ]
        distance = np.abs(label.astype(int) - colours.muted).sum(axis=2)
        return int((distance < 60).sum())

    image = picture(compositor)
    assert colors_close(colour_in(image, rects[0]), COLOURS[0], 12)
    placeholder = rects[1]
    # the tile colour around a coloured avatar circle in the middle
    corner = (placeholder.x + 4, placeholder.y + 4, placeholder.x + 40, placeholder.y + 40)
    assert colors_close(region_color(image, *corner), colours.tile, 6)
    middle = (
        placeholder.x + placeholder.width // 2 - 5,
        placeholder.y + placeholder.height // 2 - 40,
        placeholder.x + placeholder.width // 2 + 5,
        placeholder.y + placeholder.height // 2 - 30,
    )
    assert not colors_close(region_color(image, *middle), colours.tile, 30)
    assert muted_pixels(image, placeholder) == 0

    compositor.apply(TrackMuteChanged(mic, True))
    image = picture(compositor)
    assert muted_pixels(image, placeholder) > 10, "no muted-microphone mark"
    assert muted_pixels(image, rects[0]) == 0, "the unmuted participant is marked"


def test_speaker_layouts_follow_the_active_speaker():
    speakers = SpeakerTracker()
    for tick in range(30):
        speakers.observe(tick * 0.02, {"p2": 0.3})
    assert speakers.active == "p2"
    image = picture(with_participants(4, "speaker", speakers=speakers))
    placement = place("speaker", 4, W, H)
    main, *strip = placement.rects
    assert main.width > 3 * strip[0].width
    assert colors_close(colour_in(image, main), COLOURS[2], 12)
    for rect, index in zip(strip, (0, 1, 3), strict=True):
        assert colors_close(colour_in(image, rect), COLOURS[index], 12)

    image = picture(with_participants(4, "single-speaker-light", speakers=speakers))
    (only,) = place("single-speaker", 4, W, H).rects
    assert colors_close(colour_in(image, only), COLOURS[2], 12)
    outside = image[:, only.x + only.width :] if only.x + only.width < W else image[: only.y]
    assert colors_close(
        region_color(outside, 0, 0, outside.shape[1], outside.shape[0]), LIGHT.background, 6
    )


def test_screen_share_turns_grid_into_speaker_and_back():
    compositor = with_participants(3)
    share = TrackInfo("TR_share", TrackType.VIDEO, TrackSource.SCREEN_SHARE, "p1", "P 1")
    compositor.apply(TrackStarted(share))
    compositor.apply(TrackFrame(share, solid(COLOURS[10], 1280, 720)))
    image = picture(compositor)
    main, *strip = place("speaker", 4, W, H).rects
    assert colors_close(colour_in(image, main), COLOURS[10], 12)
    for rect, index in zip(strip, range(3), strict=True):
        assert colors_close(colour_in(image, rect), COLOURS[index], 12)


class FrameCollector(Stage):
    """Keeps every frame it receives."""

    def __init__(self) -> None:
        super().__init__("collector")
        self.input = self.add_input("input")
        self.frames: list[av.VideoFrame] = []

    async def run(self) -> None:
        async for frame in self.input:
            self.frames.append(frame)


async def test_set_layout_switches_within_200_ms_without_a_gap():
    graph = Graph("layouts")
    compositor = graph.add(VideoCompositor(640, 360, 30))
    collector = graph.add(FrameCollector())
    graph.link(compositor.output, collector.input, maxsize=64)
    for i in range(3):
        compositor.apply(TrackStarted(camera(i)))
        compositor.apply(TrackFrame(camera(i), solid(COLOURS[i])))
    with pytest.raises(ValueError):
        compositor.set_layout("carousel")
    await graph.start()
    await graph.clock.sleep_until(0.5)
    switched_at = graph.clock.now()
    compositor.set_layout("speaker-light")
    await graph.clock.sleep_until(1.2)
    assert await graph.stop() is GraphState.COMPLETE

    pts = [f.pts for f in collector.frames]
    assert pts == list(range(len(pts))), "the timeline has a gap or a jump"
    assert len(pts) >= 30
    grid = place("grid", 3, 640, 360).rects
    main = place("speaker", 3, 640, 360).rects[0]
    for frame in collector.frames:
        image = frame.to_ndarray(format="rgb24")
        t = frame.pts / 30
        # the frame due at the very moment of the call may be drawn either way
        if t < switched_at - 1 / 30:
            assert colors_close(colour_in(image, grid[2]), COLOURS[2], 12), f"grid at {t:.2f}"
            assert colors_close(region_color(image, 0, 0, 640, 4), DARK.background, 6)
        elif t >= switched_at + 0.2:
            assert colors_close(colour_in(image, main), COLOURS[0], 12), f"speaker at {t:.2f}"
            assert colors_close(region_color(image, 0, 0, 640, 4), LIGHT.background, 6)


@pytest.mark.slow
async def test_recording_shows_a_screen_share_large_then_the_grid_again(rooms, tmp_path):
    """End to end: room tracks -> subscriber -> compositor -> H.264 MP4, light theme."""
    room = rooms.get_or_create("share")
    size = (640, 360)
    for i in range(2):
        await room.publish(SyntheticVideoTrack(COLOURS[i], 320, 180, fps=15), identity=f"p{i}")
    path = tmp_path / "share.mp4"
    graph, _ = composite_graph(
        room,
        [FileOutput(path)],
        video=VideoEncoding(width=size[0], height=size[1]),
        audio=None,
        layout="grid-light",
    )
    await graph.start()
    await graph.clock.sleep_until(1.0)
    share = await room.publish(
        SyntheticVideoTrack(COLOURS[10], 640, 360, fps=15),
        identity="p0",
        source=TrackSource.SCREEN_SHARE,
    )
    await graph.clock.sleep_until(2.2)
    await room.unpublish(share.sid)
    await graph.clock.sleep_until(3.2)
    assert await graph.stop() is GraphState.COMPLETE

    assert stream(ffprobe(path), "video")["width"] == size[0]
    grid = place("grid", 2, *size).rects
    main, *strip = place("speaker", 3, *size).rects
    for t in (0.8, 3.0):
        image = frame_at(path, t)
        for i, rect in enumerate(grid):
            assert colors_close(colour_in(image, rect), COLOURS[i], 30), f"grid tile {i} at {t}"
        assert colors_close(region_color(image, 0, 0, size[0], 4), LIGHT.background, 12)
    image = frame_at(path, 1.9)
    assert colors_close(colour_in(image, main), COLOURS[10], 30), "share is not large"
    for i, rect in enumerate(strip):
        assert colors_close(colour_in(image, rect), COLOURS[i], 30), f"strip tile {i}"


def test_compositor_keeps_up_with_a_stream_of_items():
    """Joins, leaves and mutes in any order leave no ghost tiles."""
    compositor = with_participants(3)
    compositor.apply(TrackMuteChanged(camera(1), True))
    image = picture(compositor)
    rects = place("grid", 3, W, H).rects
    assert colors_close(colour_in(image, rects[1]), DARK.tile, 40), "a muted camera still shows"
    for i in range(3):
        compositor.apply(TrackEnded(camera(i)))
    image = picture(compositor)
    assert colors_close(region_color(image, 0, 0, W, H), DARK.background, 6)


@pytest.mark.parametrize("size", [(1280, 720), (720, 1280), (1920, 1080)])
def test_speaker_strip_holds_four_tiles_in_any_orientation(size):
    placement = place("speaker", 5, *size)
    main, *strip = placement.rects
    assert placement.hidden == 0 and len(strip) == 4
    assert all(main.width > 2 * r.width for r in strip)
    place_more = place("speaker", 9, *size)
    assert place_more.shown + place_more.hidden == 9 and place_more.hidden > 0
