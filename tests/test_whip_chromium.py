"""A real browser publishes into an embedded room over WHIP."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from chromium import chromium_available, chromium_publisher
from livekit.protocol import models
from publishers import WHIP_API_KEY, WHIP_API_SECRET, make_publisher_token, next_frames

from egresskit.pipeline.link import EOS
from egresskit.rooms import RoomManager, TrackPublished

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(
        not chromium_available(), reason="Debian chromium (/usr/bin/chromium) is not installed"
    ),
]

ROOM = "browser-room"
WAIT_S = 30.0


async def test_browser_publishes_camera_and_microphone(whip_server: TestServer, rooms: RoomManager):
    room = rooms.get_or_create(ROOM)
    events = room.subscribe_events()
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "browser")

    async with chromium_publisher(whip_server.make_url("/"), ROOM, token) as browser:
        location = await browser.wait_published(WAIT_S)
        published = []
        while len(published) < 2:
            event = await asyncio.wait_for(events.get(), WAIT_S)
            assert event is not EOS
            if isinstance(event, TrackPublished):
                published.append(event.track)

        participant = room.participants["browser"]
        assert location.startswith(f"/whip/{ROOM}/") and participant.sid not in location
        video = next(t for t in published if t.kind == models.TrackType.VIDEO)
        audio = next(t for t in published if t.kind == models.TrackType.AUDIO)
        assert video.mime_type in ("video/VP8", "video/H264")
        assert video.source == models.TrackSource.CAMERA
        assert (audio.mime_type, audio.source) == ("audio/opus", models.TrackSource.MICROPHONE)

        video_frames = await next_frames(video.subscribe(), 10, timeout=WAIT_S)
        assert all(isinstance(f, av.VideoFrame) and f.width > 0 for f in video_frames)
        # The fake camera draws a moving pattern: the picture is not one flat colour.
        assert np.std(video_frames[-1].to_ndarray(format="gray")) > 1

        audio_frames = await next_frames(audio.subscribe(maxsize=100), 50, timeout=WAIT_S)
        assert all(isinstance(f, av.AudioFrame) for f in audio_frames)
        assert {f.sample_rate for f in audio_frames} == {48000}

    assert browser.process.returncode is not None  # the browser is gone
