"""Participant and track composite egress: following people and tracks, ending on their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from livekit.protocol import models
from media_checks import audio_samples, ffprobe, frame_at, stream, tone_strengths
from publishers import (
    WHIP_API_KEY,
    WHIP_API_SECRET,
    SineAudioTrack,
    SyntheticVideoTrack,
    make_publisher_token,
    whip_publish,
)
from test_track_egress import published_track

from egresskit.egress.graphs import FileOutput
from egresskit.egress.track_graphs import (
    SourceNotFound,
    participant_graph,
    track_composite_graph,
)
from egresskit.pipeline import GraphState, SourceClosed
from egresskit.rooms import RoomManager
from egresskit.stages.encoder import AudioEncoding, VideoEncoding

ROOM = "people"
WAIT_S = 20.0
RED = (220, 30, 30)
GREEN = (30, 200, 30)
BLUE = (30, 30, 220)
YELLOW = (230, 220, 30)
SMALL = VideoEncoding(width=320, height=180, fps=15, bitrate_kbps=400, keyframe_interval_s=1.0)


def small_video(color: tuple[int, int, int]) -> SyntheticVideoTrack:
    return SyntheticVideoTrack(color=color, width=160, height=96, fps=15)


def share_of(path: Path, seconds: float, color: tuple[int, int, int]) -> float:
    """How much of the picture shown at `seconds` has `color` (the layout may add other tiles)."""
    image = frame_at(path, seconds).astype(np.int16)
    close = np.all(np.abs(image - np.array(color, np.int16)) <= 40, axis=2)
    return float(close.mean())


def ended_by_itself(messages: list) -> list[str]:
    return [m.reason for m in messages if isinstance(m, SourceClosed)]


async def test_participant_egress_follows_camera_changes_and_screen_share(
    whip_server: TestServer, rooms: RoomManager, tmp_path: Path
):
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "alice")
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token, [small_video(RED), SineAudioTrack(440)]
    )
    room = rooms.get(ROOM)
    first_camera = await published_track(room, "alice", models.TrackType.VIDEO)
    await published_track(room, "alice", models.TrackType.AUDIO)
    await room.publish(small_video(YELLOW), identity="bob")  # someone else: never recorded

    camera_graph, _ = participant_graph(
        room, "alice", [FileOutput(tmp_path / "camera.mp4")], video=SMALL, audio=AudioEncoding()
    )
    screen_graph, _ = participant_graph(
        room,
        "alice",
        [FileOutput(tmp_path / "screen.mp4")],
        screen_share=True,
        video=SMALL,
        audio=AudioEncoding(),
    )
    messages: dict[str, list] = {"camera": [], "screen": []}
    camera_graph.bus.subscribe(messages["camera"].append)
    screen_graph.bus.subscribe(messages["screen"].append)
    await camera_graph.start()
    await screen_graph.start()

    # Phase two: alice switches to another camera and starts sharing her screen.
    await camera_graph.clock.sleep_until(2.5)
    await room.unpublish(first_camera.sid)
    await room.publish(small_video(GREEN), identity="alice")
    await room.publish(small_video(BLUE), identity="alice", source=models.TrackSource.SCREEN_SHARE)
    await camera_graph.clock.sleep_until(5.0)
    await session.close()  # alice leaves: both egresses end by themselves

    for graph in (camera_graph, screen_graph):
        assert await graph.wait(WAIT_S) is GraphState.COMPLETE, graph.error
    assert ended_by_itself(messages["camera"]) == ["participant left"]
    assert ended_by_itself(messages["screen"]) == ["participant left"]

    camera_file, screen_file = tmp_path / "camera.mp4", tmp_path / "screen.mp4"
    for path in (camera_file, screen_file):
        duration = float(ffprobe(path)["format"]["duration"])
        assert 4.5 <= duration <= 6.0, (path.name, duration)  # it ends when she leaves
    assert share_of(camera_file, 1.5, RED) > 0.3
    assert share_of(camera_file, 4.3, GREEN) > 0.3
    assert share_of(camera_file, 4.3, RED) < 0.05
    for color in (RED, GREEN, BLUE):  # nothing shared yet
        assert share_of(screen_file, 1.5, color) < 0.05
    assert share_of(screen_file, 4.3, BLUE) > 0.3
    for path, seconds in ((camera_file, 1.5), (camera_file, 4.3), (screen_file, 4.3)):
        assert share_of(path, seconds, YELLOW) < 0.05  # bob is never in alice's egress

    assert stream(ffprobe(camera_file), "audio")["codec_name"] == "aac"
    samples, rate = audio_samples(camera_file, 0.5, 2.0)
    (strength,) = tone_strengths(samples, rate, [440])
    assert strength > 10  # her microphone is in the camera egress


async def test_track_composite_records_two_tracks_until_both_are_gone(
    whip_server: TestServer, rooms: RoomManager, tmp_path: Path
):
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, "carol")
    session = await whip_publish(
        whip_server.make_url("/"), ROOM, token, [small_video(RED), SineAudioTrack(440)]
    )
    room = rooms.get(ROOM)
    carol_video = await published_track(room, "carol", models.TrackType.VIDEO)
    await room.publish(small_video(YELLOW), identity="dan")
    dan_audio = await room.publish(SineAudioTrack(1000), identity="dan")

    with pytest.raises(SourceNotFound):
        track_composite_graph(room, "TR_missing", carol_video.sid, [])
    with pytest.raises(ValueError, match="not a audio track"):
        track_composite_graph(room, carol_video.sid, carol_video.sid, [])

    path = tmp_path / "pair.mp4"
    graph, _ = track_composite_graph(
        room, dan_audio.sid, carol_video.sid, [FileOutput(path)], video=SMALL
    )
    messages: list = []
    graph.bus.subscribe(messages.append)
    await graph.start()
    await graph.clock.sleep_until(2.5)
    await session.close()  # carol's video goes; dan's audio is still recorded
    await graph.clock.sleep_until(3.5)
    assert graph.state is GraphState.RUNNING
    await room.unpublish(dan_audio.sid)

    assert await graph.wait(WAIT_S) is GraphState.COMPLETE, graph.error
    assert ended_by_itself(messages) == ["track unpublished"]
    assert 3.0 <= float(ffprobe(path)["format"]["duration"]) <= 4.5
    assert share_of(path, 1.5, RED) > 0.1
    assert share_of(path, 1.5, YELLOW) < 0.05  # dan's video is not one of the two tracks
    samples, rate = audio_samples(path, 0.5, 2.0)
    dan, carol = tone_strengths(samples, rate, [1000, 440])
    assert dan > 50 * carol, (dan, carol)
