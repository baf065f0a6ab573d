"""Room composite recording end to end: WHIP publishers in, a playable MP4 out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import WHIP_API_KEY, WHIP_API_SECRET
from livekit.protocol import models
from media_checks import audio_samples, ffprobe, frame_at, region_color, stream, tone_strengths
from publishers import (
    SineAudioTrack,
    SyntheticVideoTrack,
    colors_close,
    make_publisher_token,
    whip_publish,
)

from egresskit import FileOutput, GraphState, composite_graph
from egresskit.pipeline import Stage

RED, RED_TONE = (220, 40, 40), 440.0
BLUE, BLUE_TONE = (40, 60, 220), 1000.0
TILE_LEFT = (
    100,
    220,
    540,
    500,
)  # inside the left tile of a two-tile grid (640x360 fitted at y 180)
TILE_RIGHT = (740, 220, 1180, 500)
FULL = (300, 150, 980, 570)  # inside a single full-frame tile


async def wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def video_tracks(room) -> int:
    return sum(1 for t in room.tracks() if t.kind == models.TrackType.VIDEO)


async def publish(server, room_name: str, identity: str, color, tone):
    token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, room_name, identity)
    tracks = [SyntheticVideoTrack(color), SineAudioTrack(tone)]
    return await whip_publish(server.make_url(""), room_name, token, tracks)


async def record(room, path: Path, seconds: float, during=None) -> float:
    """Record `seconds` of the room; returns the wall time the graph ran."""
    graph, _ = composite_graph(room, [FileOutput(path)], name="test")
    await graph.start()
    if during is not None:
        await during(graph.clock)
    await asyncio.sleep(max(0.0, seconds - graph.clock.now()))
    wall = graph.clock.now()
    state = await graph.stop()
    assert state is GraphState.COMPLETE, graph.error
    return wall


def assert_duration(info: dict, wall: float) -> None:
    duration = float(info["format"]["duration"])
    assert abs(duration - wall) <= 0.05 * wall, (
        f"file is {duration:.2f} s for {wall:.2f} s of wall time"
    )


@pytest.mark.slow
async def test_two_whip_publishers_record_to_mp4(whip_server, rooms, tmp_path):
    red = await publish(whip_server, "standup", "alice", RED, RED_TONE)
    blue = await publish(whip_server, "standup", "bob", BLUE, BLUE_TONE)
    room = rooms.get("standup")
    await wait_for(lambda: video_tracks(room) == 2, what="two video tracks")
    path = tmp_path / "standup.mp4"
    try:
        wall = await record(room, path, 6.0)
    finally:
        await red.close()
        await blue.close()

    info = ffprobe(path)
    video, audio = stream(info, "video"), stream(info, "audio")
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 1280, 720)
    assert audio["codec_name"] == "aac"
    assert video["r_frame_rate"] == "30/1"
    frames = int(video["nb_read_frames"])
    assert abs(frames - 30 * float(video["duration"])) <= 2, "not constant 30 fps"
    assert_duration(info, wall)
    assert abs(float(video["start_time"]) - float(audio["start_time"])) <= 0.05

    image = frame_at(path, 4.0)
    assert colors_close(region_color(image, *TILE_LEFT), RED), region_color(image, *TILE_LEFT)
    assert colors_close(region_color(image, *TILE_RIGHT), BLUE), region_color(image, *TILE_RIGHT)

    samples, rate = audio_samples(path, 2.0, 5.0)
    red_level, blue_level = tone_strengths(samples, rate, [RED_TONE, BLUE_TONE])
    assert red_level > 50 and blue_level > 50, (red_level, blue_level)


@pytest.mark.slow
async def test_join_and_leave_while_recording(whip_server, rooms, tmp_path):
    red = await publish(whip_server, "drop-in", "alice", RED, RED_TONE)
    room = rooms.get("drop-in")
    await wait_for(lambda: video_tracks(room) == 1, what="the first video track")
    sessions = {}

    async def during(clock) -> None:
        await clock.sleep_until(1.5)
        sessions["blue"] = await publish(whip_server, "drop-in", "bob", BLUE, BLUE_TONE)
        await clock.sleep_until(4.5)
        await red.close()

    path = tmp_path / "drop-in.mp4"
    try:
        wall = await record(room, path, 7.0, during)
    finally:
        await red.close()
        if "blue" in sessions:
            await sessions["blue"].close()

    info = ffprobe(path)
    assert_duration(info, wall)
    alone = frame_at(path, 1.0)
    assert colors_close(region_color(alone, *FULL), RED)
    together = frame_at(path, 3.8)
    assert colors_close(region_color(together, *TILE_LEFT), RED)
    assert colors_close(region_color(together, *TILE_RIGHT), BLUE)
    after = frame_at(path, 6.2)
    assert colors_close(region_color(after, *FULL), BLUE)


CHILD = Path(__file__).with_name("record_child.py")


@pytest.mark.slow
def test_sigkill_leaves_a_playable_mp4(tmp_path):
    path = tmp_path / "killed.mp4"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=CHILD.parent,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.strip() == "recording", f"child said {line!r}"
        time.sleep(5.0)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    info = ffprobe(path)
    assert float(info["format"]["duration"]) >= 3.0, info["format"]
    assert stream(info, "video")["codec_name"] == "h264"


class Exploder(Stage):
    """Raises after it has seen a few frames."""

    def __init__(self) -> None:
        super().__init__("exploder")
        self.input = self.add_input("input")
        self.raised_at: float | None = None

    async def run(self) -> None:
        seen = 0
        async for _ in self.input:
            seen += 1
            if seen == 20:
                self.raised_at = time.monotonic()
                raise RuntimeError("exploder gave up")


@pytest.mark.slow
async def test_failing_stage_ends_only_its_graph(rooms, tmp_path):
    room = rooms.get_or_create("crash")
    await room.publish(SyntheticVideoTrack(RED), identity="alice")
    await room.publish(SineAudioTrack(RED_TONE), identity="alice")
    healthy, _ = composite_graph(room, [FileOutput(tmp_path / "healthy.mp4")], name="healthy")
    doomed, stages = composite_graph(room, [FileOutput(tmp_path / "doomed.mp4")], name="doomed")
    exploder = doomed.add(Exploder())
    doomed.link(stages.compositor.output, exploder.input)
    await healthy.start()
    await doomed.start()

    await wait_for(lambda: exploder.raised_at is not None, what="the stage to raise")
    assert await doomed.wait(1.0) is GraphState.FAILED
    assert "exploder gave up" in str(doomed.error)
    assert doomed.failed_stage == "exploder"
    assert healthy.state is GraphState.RUNNING
    await asyncio.sleep(max(0.0, 3.0 - healthy.clock.now()))
    wall = healthy.clock.now()
    assert await healthy.stop() is GraphState.COMPLETE
    assert_duration(ffprobe(tmp_path / "healthy.mp4"), wall)
    # what the failed graph had written is still a readable file
    assert stream(ffprobe(tmp_path / "doomed.mp4"), "video")["codec_name"] == "h264"
