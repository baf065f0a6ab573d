"""Live streams from a room composite: nginx-rtmp and an SRT listener receive what the graph sends."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from media_checks import ffprobe, stream
from publishers import SineAudioTrack, SyntheticVideoTrack
from rtmp_server import free_port

from egresskit import FileOutput, GraphState, VideoEncoding, composite_graph
from egresskit.egress.graphs import StreamOutput
from egresskit.stages.stream import ReconnectPolicy, StreamStateChanged, StreamStatus

# Streams start at a key frame: one a second keeps a new URL's start prompt.
STREAM_VIDEO = VideoEncoding(keyframe_interval_s=1.0)
KEY_A, KEY_B, KEY_C = "alpha-secret-key-1", "bravo-secret-key-2", "charlie-secret-key-3"


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def decode_errors(path: Path) -> str:
    """What ffmpeg complains about while decoding every frame of a file (empty: clean)."""
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stderr.strip() or ("" if result.returncode == 0 else f"exit {result.returncode}")


async def publish_room(rooms, name: str):
    room = rooms.get_or_create(name)
    await room.publish(SyntheticVideoTrack((40, 60, 220)), identity="bob")
    await room.publish(SineAudioTrack(1000.0), identity="bob")
    return room


@pytest.mark.slow
async def test_streams_to_rtmp_with_updates_and_a_file(rooms, rtmp_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="egresskit")
    room = await publish_room(rooms, "live")
    url_a, url_b, url_c = (rtmp_server.url(k) for k in (KEY_A, KEY_B, KEY_C))
    mp4 = tmp_path / "archive.mp4"
    graph, stages = composite_graph(
        room, [FileOutput(mp4), StreamOutput((url_a, url_b))], video=STREAM_VIDEO, name="live"
    )
    sink = stages.outputs.stream
    assert sink is not None
    changes = []
    graph.bus.subscribe(lambda e: changes.append(e) if isinstance(e, StreamStateChanged) else None)
    await graph.start()
    await graph.clock.sleep_until(3.0)
    sink.add_url(url_c)
    await graph.clock.sleep_until(6.0)
    removed = await sink.remove_url(url_a)
    assert removed.status is StreamStatus.FINISHED
    await graph.clock.sleep_until(9.0)
    wall = graph.clock.now()
    assert await graph.stop() is GraphState.COMPLETE, graph.error

    states = {s.url: s for s in sink.states}
    assert [states[u].status for u in (url_a, url_b, url_c)] == [StreamStatus.FINISHED] * 3
    assert all(s.started_at_ns and s.ended_at_ns and not s.error for s in states.values())
    rtmp_server.stop()  # flushes the recordings
    for key, expected in ((KEY_A, 6.0), (KEY_B, wall), (KEY_C, wall - 3.0)):
        recording = rtmp_server.recording(key)
        info = ffprobe(recording)
        duration = float(info["format"]["duration"])
        assert abs(duration - expected) <= 1.0, f"{key}: {duration:.2f} s, expected {expected:.2f}"
        assert stream(info, "audio")["codec_name"] == "aac"
        assert decode_errors(recording) == "", key
    info = ffprobe(mp4)
    assert abs(float(info["format"]["duration"]) - wall) <= 0.05 * wall
    assert decode_errors(mp4) == ""
    # stream keys appear in no log line and no bus message
    for key in (KEY_A, KEY_B, KEY_C):
        assert key not in caplog.text
        assert all(key not in repr(change) for change in changes)


@pytest.mark.slow
async def test_dead_rtmp_server_fails_its_stream_but_not_the_file(
    rooms, rtmp_server, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG, logger="egresskit")
    room = await publish_room(rooms, "doomed-live")
    url = rtmp_server.url(KEY_A)
    mp4 = tmp_path / "archive.mp4"
    retry = ReconnectPolicy(delays=(0.2, 0.4, 0.8))
    graph, stages = composite_graph(
        room, [FileOutput(mp4), StreamOutput((url,), retry=retry)], video=STREAM_VIDEO
    )
    sink = stages.outputs.stream
    assert sink is not None
    await graph.start()
    await wait_for(lambda: sink.state(url).started_at_ns, 10, "the stream to start")
    await graph.clock.sleep_until(3.0)
    rtmp_server.kill()
    await wait_for(lambda: sink.state(url).status is StreamStatus.FAILED, 15, "FAILED")
    state = sink.state(url)
    assert state.retries == 3 and state.error and state.ended_at_ns
    assert sink.all_failed
    assert graph.state is GraphState.RUNNING
    await graph.clock.sleep_until(6.0)
    wall = graph.clock.now()
    assert await graph.stop() is GraphState.COMPLETE, graph.error
    info = ffprobe(mp4)
    assert abs(float(info["format"]["duration"]) - wall) <= 0.05 * wall
    assert decode_errors(mp4) == ""
    assert KEY_A not in caplog.text and KEY_A not in state.error and KEY_A not in repr(state)


def udp_listening(port: int) -> bool:
    """Whether something listens on the UDP port (ffmpeg's SRT listener is up)."""
    needle = f":{port:04X} "
    return any(needle in line for line in Path("/proc/net/udp").read_text().splitlines()[1:])


@pytest.mark.slow
async def test_stream_to_srt_listener_decodes(rooms, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    room = await publish_room(rooms, "srt")
    port = free_port()
    received = tmp_path / "received.ts"
    listener = await asyncio.create_subprocess_exec(
        *[
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            f"srt://127.0.0.1:{port}?mode=listener&latency=500000",
        ],
        *["-c", "copy", "-f", "mpegts", str(received)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(lambda: udp_listening(port), 10, "the SRT listener")
        url = f"srt://127.0.0.1:{port}?mode=caller&latency=500"
        output = StreamOutput((url,))
        graph, stages = composite_graph(room, [output], video=STREAM_VIDEO)
        await graph.start()
        await asyncio.sleep(4.0)
        assert await graph.stop() is GraphState.COMPLETE, graph.error
        assert stages.outputs.streams[output].state(url).status is StreamStatus.FINISHED
        await asyncio.wait_for(listener.wait(), 15)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    info = ffprobe(received)
    assert stream(info, "video")["codec_name"] == "h264"
    assert stream(info, "audio")["codec_name"] == "aac"
    assert abs(float(info["format"]["duration"]) - 4.0) <= 1.0
    assert decode_errors(received) == ""


def command_lines() -> list[str]:
    """Every process's command line, as `ps` shows them to any local user."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                pass  # the process ended meanwhile
    return lines


@pytest.mark.slow
async def test_srt_passphrase_and_stream_id_never_reach_a_command_line(rooms, tmp_path):
    """An encrypted SRT stream: decodable at the listener, its secrets in no process's argv."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    room = await publish_room(rooms, "srt-secret")
    port = free_port()
    passphrase = "egress-srt-passphrase-0042"
    stream_id = "publish:caller-marker-7f3a"
    received = tmp_path / "received.ts"
    listener = await asyncio.create_subprocess_exec(
        *["ffmpeg", "-v", "error", "-y", "-i"],
        f"srt://127.0.0.1:{port}?mode=listener&latency=500000&passphrase={passphrase}",
        *["-c", "copy", "-f", "mpegts", str(received)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: list[str] = []
    try:
        await wait_for(lambda: udp_listening(port), 10, "the SRT listener")
        url = f"srt://127.0.0.1:{port}?latency=500&passphrase={passphrase}&streamid={stream_id}"
        output = StreamOutput((url,))
        graph, stages = composite_graph(room, [output], video=STREAM_VIDEO)
        await graph.start()
        for _ in range(8):  # look while the stream runs
            await asyncio.sleep(0.5)
            seen += [line for line in command_lines() if "caller-marker-7f3a" in line]
        assert await graph.stop() is GraphState.COMPLETE, graph.error
        assert stages.outputs.streams[output].state(url).status is StreamStatus.FINISHED
        await asyncio.wait_for(listener.wait(), 15)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
    assert seen == []
    info = ffprobe(received)
    assert stream(info, "video")["codec_name"] == "h264"
    assert decode_errors(received) == ""
