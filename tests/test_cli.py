"""`egresskit record` and `egresskit serve` as real subprocesses, driven like a user would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from media_checks import ffprobe, frame_at, region_color, stream
from publishers import (
    SineAudioTrack,
    SyntheticVideoTrack,
    colors_close,
    whip_publish,
)
from service_fixtures import (
    API_KEY,
    API_SECRET,
    STARTUP_TIMEOUT,
    child_env,
    free_port,
    healthy,
    join,
    serve,
    start,
    stop,
    wait_healthy,
    wait_status,
)

from egresskit.egress.session import SHUTDOWN

RED = (220, 40, 40)
# One progress line of `egresskit record`: status, elapsed seconds, megabytes, frames per second.
PROGRESS = re.compile(r"(STARTING|ACTIVE|ENDING)\s+([\d.]+) s\s+([\d.]+) MB\s+([\d.]+) fps")
WHIP_LINE = re.compile(r"publish with WHIP: POST (\S+)/whip/(\S+)\s+Authorization: Bearer (\S+)")


def top_level_boxes(path: Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in order."""
    boxes = []
    with path.open("rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
                f.seek(size - 16, os.SEEK_CUR)
            elif size == 0:
                boxes.append(kind.decode("latin-1"))
                break
            else:
                f.seek(size - 8, os.SEEK_CUR)
            boxes.append(kind.decode("latin-1"))
    return boxes


# --- egresskit record --------------------------------------------------------------------------


@pytest.mark.slow
async def test_record_shows_progress_and_writes_the_published_room(tmp_path):
    out = tmp_path / "rec" / "call.mp4"
    out.parent.mkdir()
    port = free_port()
    proc = await start(
        "record", "--room", "R", "--out", str(out), "--duration", "3", "--dev", "--port", str(port)
    )
    try:
        announced = []
        while not (whip := WHIP_LINE.search(announced[-1] if announced else "")):
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
            assert line, f"record ended before announcing WHIP: {announced}"
            announced.append(line.decode())
        assert "API key 'devkey', API secret 'secret'" in "".join(announced)
        base, room, token = whip.groups()
        assert (base, room) == (f"http://127.0.0.1:{port}", "R")
        publisher = await whip_publish(
            base, room, token, [SyntheticVideoTrack(RED), SineAudioTrack(440.0)]
        )
        try:
            rest, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            await publisher.pc.close()  # the service is gone: no WHIP resource to DELETE
    finally:
        await stop(proc)
    assert proc.returncode == 0, err.decode()[-2000:]

    text = rest.decode()
    progress = [(s, float(t), float(mb), float(fps)) for s, t, mb, fps in PROGRESS.findall(text)]
    assert len(progress) >= 4, text
    elapsed = [t for _, t, _, _ in progress]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 2.5
    assert {s for s, *_ in progress} >= {"ACTIVE", "ENDING"}
    assert progress[-1][2] > 0 and progress[-1][3] > 0  # bytes written, frames composed
    assert f"EGRESS_COMPLETE: {out} ({out.stat().st_size} bytes)" in text

    probe = ffprobe(out)
    assert stream(probe, "video")["codec_name"] == "h264"
    assert stream(probe, "audio")["codec_name"] == "aac"
    assert 2.5 < float(probe["format"]["duration"]) < 5.0
    picture = frame_at(out, 2.8)  # the publisher joined within the first second
    height, width, _ = picture.shape
    center = region_color(picture, width // 3, height // 3, 2 * width // 3, 2 * height // 3)
    assert colors_close(center, RED, 60), center


async def test_record_refuses_a_bad_request_without_a_traceback(tmp_path):
    proc = await start(
        "record",
        "--room",
        "R",
        "--out",
        str(tmp_path / "x.mp4"),
        "--layout",
        "mosaic",
        "--dev",
        "--port",
        str(free_port()),
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    finally:
        await stop(proc)
    assert proc.returncode == 2
    assert "layout" in err.decode() and "Traceback" not in err.decode()
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.slow
async def test_record_audio_only_keeps_the_asked_container(tmp_path):
    out = tmp_path / "voice.mp4"
    proc = await start(
        "record",
        "--room",
        "R",
        "--out",
        str(out),
        "--audio-only",
        "--duration",
        "1",
        "--dev",
        "--port",
        str(free_port()),
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await stop(proc)
    assert proc.returncode == 0, err.decode()[-2000:]
    probe = ffprobe(out)
    assert [s["codec_type"] for s in probe["streams"]] == ["audio"]
    assert stream(probe, "audio")["codec_name"] == "aac"


# --- egresskit serve: configuration precedence ---------------------------------------------------


@pytest.mark.slow
async def test_serve_flags_beat_environment_beat_yaml(tmp_path):
    yaml_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "egresskit.yaml"
    config.write_text(
        f"port: {yaml_port}\napi_key: yamlkey\napi_secret: yaml-secret-long-enough-for-hs256\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    env = child_env(EGRESSKIT_PORT=str(env_port))
    runs = {
        "flag": await start("serve", "--config", str(config), "--port", str(flag_port), env=env),
        "env": await start("serve", "--config", str(config), env=env),
        "yaml": await start("serve", "--config", str(config)),
    }
    try:
        await asyncio.gather(
            wait_healthy(runs["flag"], flag_port),
            wait_healthy(runs["env"], env_port),
            wait_healthy(runs["yaml"], yaml_port),
        )
        # Each port has exactly the one service that chose it.
        await stop(runs["env"])
        await stop(runs["yaml"])
        assert await healthy(flag_port)
        assert not await healthy(env_port) and not await healthy(yaml_port)
        # The YAML key signs requests to a service configured with nothing else.
        client = api.LiveKitAPI(
            f"http://127.0.0.1:{flag_port}", "yamlkey", "yaml-secret-long-enough-for-hs256"
        )
        try:
            listed = await client.egress.list_egress(egress_pb.ListEgressRequest())
        finally:
            await client.aclose()
        assert list(listed.items) == []
    finally:
        for proc in runs.values():
            await stop(proc)


# --- egresskit serve: SIGTERM drains a running recording -------------------------------------------


@pytest.mark.slow
async def test_sigterm_finishes_the_recording(tmp_path, webhooks):
    out = tmp_path / "out"
    service = await serve(out, "--webhook-url", webhooks.url)
    proc, base = service.process, service.url
    publisher = None
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        publisher = await join(base, "shutdown", "alice", RED, 440.0)
        info = await client.egress.start_room_composite_egress(
            egress_pb.RoomCompositeEgressRequest(
                room_name="shutdown",
                file_outputs=[egress_pb.EncodedFileOutput(filepath="term.mp4")],
            )
        )
        await wait_status(client, info.egress_id, [egress_pb.EGRESS_ACTIVE])
        await asyncio.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 45)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        await client.aclose()
        await stop(proc)
        if publisher is not None:
            await publisher.pc.close()  # the service is gone: no WHIP resource to DELETE

    path = out / "term.mp4"
    boxes = top_level_boxes(path)
    assert "moov" in boxes and "moof" not in boxes, boxes  # an ordinary, indexed MP4
    probe = ffprobe(path)
    assert float(probe["format"]["duration"]) > 1.0
    assert int(stream(probe, "video")["nb_read_frames"]) > 30
    ended = await webhooks.wait_for(info.egress_id, "egress_ended", timeout=10)
    assert ended.egress_info.status == egress_pb.EGRESS_COMPLETE, ended.egress_info.error
    assert ended.egress_info.details == SHUTDOWN
    (result,) = ended.egress_info.file_results
    assert Path(result.location) == path.resolve() and result.size == path.stat().st_size
