"""LiveKitRoom against a real livekit-server: roster, subscriber PC, decoded and encoded media."""

from __future__ import annotations

import asyncio

import pytest
from livekit.protocol import models
from livekit_publishers import SdkPublisher
from livekit_server import LiveKitServer, unavailable_reason
from publishers import colors_close, frame_color, next_frames, tone_frequency

from egresskit.rooms.events import TrackPublished
from egresskit.rooms.livekit import LiveKitError, LiveKitRoom

pytestmark = pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason())


@pytest.fixture(scope="module")
def livekit_server():
    with LiveKitServer() as server:
        yield server


async def join(server, room: str, **kwargs) -> LiveKitRoom:
    return await LiveKitRoom.connect(
        server.url, server.api_key, server.api_secret, room, identity="EG_test", **kwargs
    )


async def test_roster_and_decoded_media(livekit_server):
    alice = await SdkPublisher(livekit_server, "r1", "alice", color=(255, 0, 0), tone=440).start()
    try:
        room = await join(livekit_server, "r1")
        try:
            assert set(room.participants) == {"alice"}
            async with asyncio.timeout(10):  # the server may announce the audio track later
                while len(room.tracks()) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            tracks = {t.sid: t for t in room.tracks()}
            assert set(tracks) == {alice.video_sid, alice.audio_sid}
            video = tracks[alice.video_sid]
            assert video.kind == models.TrackType.VIDEO
            assert video.source == models.TrackSource.CAMERA
            assert video.mime_type.lower() == "video/vp8"
            assert room.participants["alice"].sid.startswith("PA_")
            frames = await next_frames(video.subscribe(), 10)
            assert colors_close(frame_color(frames[-1]), (255, 0, 0))
            audio = await next_frames(tracks[alice.audio_sid].subscribe(), 100)
            assert abs(tone_frequency(audio) - 440) < 10
        finally:
            await room.close()
    finally:
        await alice.stop()


async def test_late_publisher_appears_in_roster(livekit_server):
    room = await join(livekit_server, "r2")
    events = room.subscribe_events()
    bob = await SdkPublisher(livekit_server, "r2", "bob", color=(0, 0, 255), tone=None).start()
    try:
        async with asyncio.timeout(15):
            while True:
                event = await events.get()
                if isinstance(event, TrackPublished):
                    break
        assert event.track.sid == bob.video_sid
        frames = await next_frames(event.track.subscribe(), 5)
        assert colors_close(frame_color(frames[-1]), (0, 0, 255))
    finally:
        await bob.stop()
        await room.close()


async def test_bad_secret_is_a_clear_error(livekit_server):
    with pytest.raises(LiveKitError, match="refused|401"):
        await LiveKitRoom.connect(
            livekit_server.url, livekit_server.api_key, "wrong-secret-wrong-secret-wrong", "r3",
            identity="EG_x",
        )
