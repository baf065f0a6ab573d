"""LiveKitRoom against a real livekit-server: roster, subscriber PC, decoded and encoded media."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from livekit.protocol import models
from livekit_publishers import SdkPublisher
from livekit_server import LiveKitServer, unavailable_reason
from media_checks import frame_at, region_color
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
            livekit_server.url,
            livekit_server.api_key,
            "wrong-secret-wrong-secret-wrong",
            "r3",
            identity="EG_x",
        )


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "record_livekit_room.py"


@pytest.mark.slow
async def test_example_records_a_livekit_room(livekit_server, tmp_path):
    alice = await SdkPublisher(
        livekit_server, "example", "alice", color=(200, 40, 40), tone=440
    ).start()
    out = tmp_path / "example.mp4"
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            livekit_server.url,
            livekit_server.api_key,
            livekit_server.api_secret,
            "example",
            str(out),
            "3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await alice.stop()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert f"complete: {out}" in stdout.decode()
    picture = frame_at(out, 2.0)
    assert colors_close(region_color(picture, 300, 150, 980, 570), (200, 40, 40))


MAIN_TILE = (100, 150, 900, 550)  # inside the large tile of a two-tile 1280x720 speaker layout
SIDE_TILE = (1040, 310, 1250, 410)  # inside the small one


@pytest.mark.parametrize("audio", [True, False], ids=["levels-and-server", "server-only"])
async def test_speaker_layout_follows_livekits_speakers(livekit_server, tmp_path, audio):
    """The loud publisher, who joined second, fills the main tile; LiveKit's speaker
    list reached the tracker (without audio in the graph it is the only source)."""
    from egresskit import AudioEncoding, FileOutput, composite_graph

    room_name = f"speakers-{audio}"
    quiet = await SdkPublisher(
        livekit_server, room_name, "quiet", color=(220, 40, 40), tone=440, volume=0.0
    ).start()
    loud = await SdkPublisher(
        livekit_server, room_name, "loud", color=(40, 60, 220), tone=1000, volume=0.3
    ).start()
    out = tmp_path / "speaker.mp4"
    try:
        room = await join(livekit_server, room_name)
        try:
            graph, stages = composite_graph(
                room,
                [FileOutput(str(out))],
                layout="speaker",
                audio=AudioEncoding() if audio else None,
            )
            await graph.start()
            await asyncio.sleep(5)
            await graph.stop()
            announced = room.speakers
        finally:
            await room.close()
    finally:
        await loud.stop()
        await quiet.stop()
    assert stages.compositor is not None and stages.compositor.speakers is not None
    assert stages.compositor.speakers.announcements > 0, "LiveKit's speaker list never arrived"
    assert announced and announced[0][0] == "loud", announced
    picture = frame_at(out, 4.0)
    assert colors_close(region_color(picture, *MAIN_TILE), (40, 60, 220)), region_color(
        picture, *MAIN_TILE
    )
    assert colors_close(region_color(picture, *SIDE_TILE), (220, 40, 40))


async def test_session_the_server_lost_is_joined_again(livekit_server):
    """The server drops egresskit's participant without a word (its simulated node failure):
    resuming is refused, so the room joins afresh and the tracks come back with their media."""
    from livekit.protocol import rtc as rtc_pb

    alice = await SdkPublisher(
        livekit_server, "rejoin", "alice", color=(0, 160, 0), tone=440
    ).start()
    try:
        room = await join(livekit_server, "rejoin")
        try:
            async with asyncio.timeout(10):
                while len(room.tracks()) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await room._signal.send(
                rtc_pb.SignalRequest(simulate=rtc_pb.SimulateScenario(node_failure=True))
            )
            async with asyncio.timeout(10):
                while room.rejoined < 1 or len(room.tracks()) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert not room.ended.done()
            assert set(room.participants) == {"alice"}
            video = room.track(alice.video_sid)
            assert video is not None
            frames = await next_frames(video.subscribe(), 10)
            assert colors_close(frame_color(frames[-1]), (0, 160, 0))
        finally:
            await room.close()
    finally:
        await alice.stop()


async def test_dropped_signalling_is_resumed_with_an_ice_lite_server(tmp_path):
    """Resuming makes the server restart ICE; a lite server then needs our nomination
    before media flows again (a server in full ICE mode: test_livekit_egress)."""
    from livekit_server import SignalRelay

    with LiveKitServer(ice_lite=True) as server:
        async with SignalRelay(server) as relay:
            alice = await SdkPublisher(
                server, "lite", "alice", color=(0, 0, 255), tone=None
            ).start()
            try:
                room = await LiveKitRoom.connect(
                    relay.url, server.api_key, server.api_secret, "lite", identity="EG_lite"
                )
                try:
                    async with asyncio.timeout(10):
                        while room.track(alice.video_sid) is None:  # noqa: ASYNC110
                            await asyncio.sleep(0.05)
                    frames = room.track(alice.video_sid).subscribe_encoded()
                    await next_frames(frames, 10)
                    relay.cut()
                    async with asyncio.timeout(5):
                        while not room.resumed:  # noqa: ASYNC110
                            await asyncio.sleep(0.05)
                    while not frames.empty():
                        frames.get_nowait()
                    async with asyncio.timeout(5):
                        await next_frames(frames, 30)  # a second of live video after resuming
                    assert not room.ended.done() and room.rejoined == 0
                finally:
                    await room.close()
            finally:
                await alice.stop()
