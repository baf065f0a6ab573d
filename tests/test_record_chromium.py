"""A room composite of a real browser publishing over WHIP is a playable MP4."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from chromium import chromium_available, chromium_publisher
from livekit.protocol import models
from media_checks import ffprobe, frame_at, stream
from publishers import WHIP_API_KEY, WHIP_API_SECRET, make_publisher_token, next_frames

from egresskit import FileOutput, GraphState, composite_graph
from egresskit.stages.layout import DARK

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.slow,
    pytest.mark.skipif(
        not chromium_available(), reason="Debian chromium (/usr/bin/chromium) is not installed"
    ),
]

ROOM = "browser-recording"
WAIT_S = 30.0
RECORD_S = 4.0
CENTRE = (480, 240, 800, 480)  # inside the one tile a single participant gets


async def video_track(room, timeout: float):
    async def first() -> object:
        while True:
            for track in room.tracks():
                if track.kind == models.TrackType.VIDEO:
                    return track
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(first(), timeout)


def distance(a, b) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).max())


async def test_browser_publisher_recorded_to_mp4(whip_server, rooms, tmp_path):
    room = rooms.get_or_create(ROOM)
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "browser")
    path = tmp_path / "browser.mp4"

    async with chromium_publisher(whip_server.make_url("/"), ROOM, token) as browser:
        await browser.wait_published(WAIT_S)
        camera = await video_track(room, WAIT_S)
        probe = camera.subscribe()
        try:
            await next_frames(probe, 1, timeout=WAIT_S)  # pictures are arriving
        finally:
            camera.unsubscribe(probe)

        graph, _ = composite_graph(room, [FileOutput(path)], name="browser")
        await graph.start()
        await asyncio.sleep(RECORD_S)
        wall = graph.clock.now()
        assert await graph.stop() is GraphState.COMPLETE, graph.error

    info = ffprobe(path)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert audio["codec_name"] == "aac"
    duration = float(info["format"]["duration"])
    assert abs(duration - wall) <= 0.05 * wall, f"{duration:.2f} s of media for {wall:.2f} s"

    # The fake camera draws a coloured, moving pattern: the tile is neither the
    # background nor an empty tile, and not one flat colour.
    x0, y0, x1, y1 = CENTRE
    tile = frame_at(path, RECORD_S - 1.0)[y0:y1, x0:x1].reshape(-1, 3)
    mean = tile.mean(axis=0)
    assert distance(mean, DARK.background) > 25 and distance(mean, DARK.tile) > 25, mean
    assert tile.std(axis=0).max() > 5, tile.std(axis=0)
