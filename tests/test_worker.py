"""`egresskit worker` behind a real livekit-server on a real Redis.

livekit-server (with `redis` and `webhook`) dispatches the egress requests
of the unmodified `livekit-api` SDK to egresskit workers running as their own
processes; publishers are the `livekit` real-time SDK. What is checked is
what a user sees: livekit-server's ListEgress, its signed webhooks, and the
files the workers wrote.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path

import pytest
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit_publishers import SdkPublisher
from livekit_server import unavailable_reason
from media_checks import ffprobe, frame_at, region_color, stream
from publishers import colors_close
from worker_fixtures import WebhookLog, Worker, wait_status

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason()),
]

RED, BLUE = (220, 40, 40), (40, 60, 220)
TILE_LEFT = (100, 220, 540, 500)  # inside the left tile of a two-tile 1280x720 grid
TILE_RIGHT = (740, 220, 1180, 500)
NODE_DIR = Path(__file__).with_name("node")
ENDED = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def livekit(redis_server, hook_port):
    from livekit_redis import LiveKitRedisServer

    server = LiveKitRedisServer(redis_server.address, [f"http://127.0.0.1:{hook_port}/hook"])
    with server:
        yield server


@pytest.fixture
async def webhooks(livekit, hook_port):
    log = WebhookLog(livekit.api_key, livekit.api_secret)
    app = web.Application()
    app.router.add_post("/hook", log.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    yield log
    await runner.cleanup()


@pytest.fixture
async def lkapi(livekit):
    client = api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret)
    yield client
    await client.aclose()


@pytest.fixture
async def workers(livekit, redis_server, tmp_path):
    """Start workers with `await workers(name, **settings)`; all are stopped after the test."""
    started: list[Worker] = []

    async def start(name: str = "w", **settings) -> Worker:
        worker = Worker(livekit, redis_server.address, tmp_path / name, **settings)
        started.append(worker)
        return await worker.start()

    yield start
    for worker in started:
        await worker.stop()
        assert "Traceback" not in worker.log(), worker.log()


@pytest.fixture
async def publish(livekit):
    """`await publish(room, (identity, color), ...)`: SDK publishers, left when the test ends."""
    running: list[SdkPublisher] = []

    async def start(room: str, *specs) -> list[SdkPublisher]:
        for identity, color in specs:
            running.append(await SdkPublisher(livekit, room, identity, color=color).start())
        return running

    yield start
    for publisher in running:
        await publisher.stop()


def composite(room: str, filepath: str = "{room_name}-{time}.mp4"):
    return api.RoomCompositeEgressRequest(
        room_name=room, layout="grid", file_outputs=[api.EncodedFileOutput(filepath=filepath)]
    )


async def test_room_composite_through_livekit_server(livekit, lkapi, workers, publish, webhooks):
    worker = await workers()
    await publish("worker-room", ("alice", RED), ("bob", BLUE))

    info = await lkapi.egress.start_room_composite_egress(composite("worker-room", "c.mp4"))
    assert info.status == egress_pb.EGRESS_STARTING
    assert info.room_name == "worker-room"
    active = await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    assert active.room_composite.layout == "grid"
    listed = await lkapi.egress.list_egress(api.ListEgressRequest(active=True))
    assert [i.egress_id for i in listed.items] == [info.egress_id]

    await asyncio.sleep(4)
    ending = await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
    assert ending.status == egress_pb.EGRESS_ENDING
    final = await wait_status(lkapi, info.egress_id, ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    [result] = final.file_results
    assert result.filename.endswith("c.mp4")
    path = worker.output_dir / "c.mp4"
    assert result.location == str(path)
    assert result.size == path.stat().st_size > 0
    probe = ffprobe(path)
    video = stream(probe, "video")
    assert (video["width"], video["height"]) == (1280, 720)
    assert stream(probe, "audio")["codec_name"] == "aac"
    assert 3.0 < float(probe["format"]["duration"]) < 8.0
    frame = frame_at(path, 2.5)
    assert colors_close(region_color(frame, *TILE_LEFT), RED)
    assert colors_close(region_color(frame, *TILE_RIGHT), BLUE)

    # livekit-server's own webhooks, in order, for what the worker reported
    for _ in range(100):
        if ("egress_ended", "EGRESS_COMPLETE") in webhooks.of(info.egress_id):
            break
        await asyncio.sleep(0.1)
    events = webhooks.of(info.egress_id)
    # livekit-server creates the egress itself and the worker reports CreateEgress too
    # (as livekit/egress does); when both land at once the server may announce it twice
    while events[1:2] == [("egress_started", "EGRESS_STARTING")]:
        events.pop(0)
    assert events[0] == ("egress_started", "EGRESS_STARTING"), events
    assert ("egress_updated", "EGRESS_ACTIVE") in events, events
    assert events[-1] == ("egress_ended", "EGRESS_COMPLETE"), events
    assert [e for e, _ in events[1:-1]] == ["egress_updated"] * (len(events) - 2), events
    ended = [e for e in webhooks.events if e.event == "egress_ended"][-1]
    assert ended.egress_info.file_results[0].size == result.size
    # the CPU the worker used for it, as livekit-server logs UpdateMetrics
    for _ in range(50):
        if f'"egressID": "{info.egress_id}", "avgCpu": ' in livekit.log_path.read_text():
            break
        await asyncio.sleep(0.1)
    assert f'"egressID": "{info.egress_id}", "avgCpu": ' in livekit.log_path.read_text()


def cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def budget_for(kind_key: str, count: int) -> dict:
    """cpu_cost settings whose budget (cores x 0.8) holds `count` egresses of a kind, not more."""
    return {"cpu_cost": {"max_cpu_utilization": 0.8, kind_key: cores() * 0.8 / (count + 0.5)}}


async def available_cpu(worker: Worker) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{worker.config['health_port']}/healthz"
        async with http.get(url) as response:
            assert response.status == 200
            return (await response.json())["available_cpu"]


async def test_composites_spread_one_per_worker_and_survive_a_killed_worker(
    livekit, lkapi, workers, publish
):
    from test_worker import free_port as port

    one = budget_for("room_composite_cpu_cost", 1)
    pool = [await workers(name, bind="127.0.0.1", health_port=port(), **one) for name in ("a", "b")]
    await publish("spread", ("alice", RED))
    first = await lkapi.egress.start_room_composite_egress(composite("spread", "first.mp4"))
    second = await lkapi.egress.start_room_composite_egress(composite("spread", "second.mp4"))
    await wait_status(lkapi, first.egress_id, [egress_pb.EGRESS_ACTIVE])
    await wait_status(lkapi, second.egress_id, [egress_pb.EGRESS_ACTIVE])
    owner = {
        name: next(w for w in pool if (w.output_dir / name).exists())
        for name in ("first.mp4", "second.mp4")
    }
    assert owner["first.mp4"] is not owner["second.mp4"], [w.log() for w in pool]

    # both budgets are spent: livekit-server gets no claim and says so
    with pytest.raises(api.TwirpError) as refused:
        await lkapi.egress.start_room_composite_egress(composite("spread", "third.mp4"))
    assert refused.value.code == "unavailable"
    assert refused.value.message.endswith("no response from servers")
    assert not any((w.output_dir / "third.mp4").exists() for w in pool)

    # kill -9 the first one's worker mid-recording
    killed, survivor = owner["first.mp4"], owner["second.mp4"]
    killed.kill()
    await killed.process.wait()
    await asyncio.sleep(2)
    await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=second.egress_id))
    final = await wait_status(lkapi, second.egress_id, ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert float(ffprobe(survivor.output_dir / "second.mp4")["format"]["duration"]) > 2.0

    # what the killed worker recorded up to the kill plays
    partial = killed.output_dir / "first.mp4"
    played = float(ffprobe(partial)["format"]["duration"])
    assert played > 2.0
    assert colors_close(region_color(frame_at(partial, played - 0.5), 300, 150, 980, 570), RED)

    # a new request goes to the survivor, whose budget the ended egress has freed
    for _ in range(200):
        if await available_cpu(survivor) >= one["cpu_cost"]["room_composite_cpu_cost"]:
            break
        await asyncio.sleep(0.1)
    fourth = await lkapi.egress.start_room_composite_egress(composite("spread", "fourth.mp4"))
    await wait_status(lkapi, fourth.egress_id, [egress_pb.EGRESS_ACTIVE])
    assert (survivor.output_dir / "fourth.mp4").exists()
    await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=fourth.egress_id))
    final = await wait_status(lkapi, fourth.egress_id, ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error


async def test_sigterm_drains_to_a_complete_file_and_claims_nothing(
    livekit, lkapi, workers, publish
):
    worker = await workers()
    await publish("drain", ("alice", RED))
    info = await lkapi.egress.start_room_composite_egress(composite("drain", "drained.mp4"))
    await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(3)
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.2)
    with pytest.raises(api.TwirpError) as refused:
        await lkapi.egress.start_room_composite_egress(composite("drain", "late.mp4"))
    assert refused.value.code == "unavailable"
    assert await stopping == 0
    final = await wait_status(lkapi, info.egress_id, ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert final.file_results[0].size == (worker.output_dir / "drained.mp4").stat().st_size
    assert float(ffprobe(worker.output_dir / "drained.mp4")["format"]["duration"]) > 2.5
    assert not (worker.output_dir / "late.mp4").exists()


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
async def test_node_sdk_through_livekit_server(livekit, lkapi, workers, publish):
    if not (NODE_DIR / "node_modules" / "livekit-server-sdk").exists():
        pytest.skip(
            "livekit-server-sdk is not installed (scripts/install-test-deps.sh installs it)"
        )
    worker = await workers()
    await publish("node-room", ("alice", RED))
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "egress_client.mjs"),
        livekit.http_url,
        livekit.api_key,
        livekit.api_secret,
        "node-room",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NODE_DIR,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["active"] is True and report["listed"] is True
    assert report["stopped_status"] in ("EGRESS_ENDING", 2)
    final = await wait_status(lkapi, report["egress_id"], ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    [result] = final.file_results
    assert result.location == str(worker.output_dir / "node" / "node-room.mp4")
    assert stream(ffprobe(result.location), "video")["width"] == 1280


async def test_update_stream_through_livekit_server(livekit, lkapi, workers, publish, rtmp_server):
    """UpdateStream at livekit-server reaches the worker running the egress (its id's topic)."""
    worker = await workers()
    await publish("stream-room", ("alice", RED))
    first, second = rtmp_server.url("alpha-secretkey"), rtmp_server.url("beta-secretkey")
    info = await lkapi.egress.start_room_composite_egress(
        api.RoomCompositeEgressRequest(
            room_name="stream-room",
            stream_outputs=[api.StreamOutput(protocol=egress_pb.RTMP, urls=[first])],
            file_outputs=[api.EncodedFileOutput(filepath="streamed.mp4")],
        )
    )
    await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(2)
    added = await lkapi.egress.update_stream(
        api.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=[second])
    )
    assert len(added.stream_results) == 2 and "secretkey" not in str(added)
    await asyncio.sleep(2)
    removed = await lkapi.egress.update_stream(
        api.UpdateStreamRequest(egress_id=info.egress_id, remove_output_urls=[first])
    )
    statuses = sorted(s.status for s in removed.stream_results)
    assert statuses == [egress_pb.StreamInfo.ACTIVE, egress_pb.StreamInfo.FINISHED]
    with pytest.raises(api.TwirpError) as bad:
        await lkapi.egress.update_stream(
            api.UpdateStreamRequest(egress_id=info.egress_id, add_output_urls=["ftp://x/y"])
        )
    assert bad.value.code == "invalid_argument"
    await asyncio.sleep(2)
    await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
    final = await wait_status(lkapi, info.egress_id, ENDED)
    assert final.status == egress_pb.EGRESS_COMPLETE, final.error
    assert all(s.status == egress_pb.StreamInfo.FINISHED for s in final.stream_results)
    assert "secretkey" not in str(final)
    rtmp_server.stop()
    alpha = float(ffprobe(rtmp_server.recording("alpha-secretkey"))["format"]["duration"])
    beta = float(ffprobe(rtmp_server.recording("beta-secretkey"))["format"]["duration"])
    recorded = float(ffprobe(worker.output_dir / "streamed.mp4")["format"]["duration"])
    assert recorded > 5.0
    # each URL carried what it was on for (about 4 s of the 6+), not the whole recording
    assert 2.0 <= alpha <= recorded - 1.5, (alpha, recorded)
    assert 2.0 <= beta <= recorded - 1.5, (beta, recorded)


async def test_track_egresses_spread_over_two_workers_and_all_complete(
    livekit, lkapi, workers, publish
):
    five = budget_for("track_cpu_cost", 5)
    pool = [await workers(name, **five) for name in ("a", "b")]
    publishers = await publish("tracks", ("alice", RED), ("bob", BLUE))
    sources = [(p.video_sid, "webm") for p in publishers] + [
        (p.audio_sid, "ogg") for p in publishers
    ]
    started = []
    for index in range(10):
        sid, extension = sources[index % len(sources)]
        started.append(
            await lkapi.egress.start_track_egress(
                api.TrackEgressRequest(
                    room_name="tracks",
                    track_id=sid,
                    file=api.DirectFileOutput(filepath=f"t{index}.{extension}"),
                )
            )
        )
    for info in started:
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    counts = sorted(len(list(w.output_dir.glob("t*"))) for w in pool)
    assert counts == [5, 5]  # busy workers are preferred until full, then the other
    await asyncio.sleep(2)
    for info in started:
        await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
    for index, info in enumerate(started):
        final = await wait_status(lkapi, info.egress_id, ENDED)
        assert final.status == egress_pb.EGRESS_COMPLETE, final.error
        [result] = final.file_results
        assert float(ffprobe(result.location)["format"]["duration"]) > 1.5, index


async def test_every_request_kind_through_livekit_server(livekit, lkapi, workers, publish):
    worker = await workers()
    [alice] = await publish("kinds", ("alice", RED))
    requests = {
        "participant.mp4": lkapi.egress.start_participant_egress(
            api.ParticipantEgressRequest(
                room_name="kinds",
                identity="alice",
                file_outputs=[api.EncodedFileOutput(filepath="participant.mp4")],
            )
        ),
        "track_composite.mp4": lkapi.egress.start_track_composite_egress(
            api.TrackCompositeEgressRequest(
                room_name="kinds",
                audio_track_id=alice.audio_sid,
                video_track_id=alice.video_sid,
                file_outputs=[api.EncodedFileOutput(filepath="track_composite.mp4")],
            )
        ),
        "v2.mp4": lkapi.egress.start_egress(
            api.StartEgressRequest(
                room_name="kinds",
                template=api.TemplateSource(layout="speaker"),
                outputs=[api.Output(file=api.FileOutput(filepath="v2.mp4"))],
            )
        ),
    }
    # refusals first: the three egresses below fill this worker's default CPU budget
    with pytest.raises(api.TwirpError) as refused:
        await lkapi.egress.start_room_composite_egress(
            api.RoomCompositeEgressRequest(
                room_name="kinds",
                stream_outputs=[api.StreamOutput(urls=["wss://example.com/pcm"])],
            )
        )
    assert refused.value.code == "unimplemented"
    assert "websocket" in refused.value.message
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.egress.start_track_egress(
            api.TrackEgressRequest(
                room_name="kinds",
                track_id="TR_missing",
                file=api.DirectFileOutput(filepath="missing.ogg"),
            )
        )
    assert missing.value.code == "not_found"
    started = {name: await request for name, request in requests.items()}
    for info in started.values():
        await wait_status(lkapi, info.egress_id, [egress_pb.EGRESS_ACTIVE])
    await asyncio.sleep(3)
    for info in started.values():
        await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
    for name, info in started.items():
        final = await wait_status(lkapi, info.egress_id, ENDED)
        assert final.status == egress_pb.EGRESS_COMPLETE, (name, final.error)
        probe = ffprobe(worker.output_dir / name)
        assert stream(probe, "video") and stream(probe, "audio"), name
        assert float(probe["format"]["duration"]) > 2.0, name


async def test_one_process_per_core_under_a_restarting_parent(livekit, redis_server, tmp_path):
    """--processes 2: two psrpc servers; a killed child is restarted; SIGTERM reaches both;
    /healthz and /metrics (available CPU) come from the parent; unused keys named once."""
    import os
    import signal

    import aiohttp

    port = free_port()
    worker = Worker(
        livekit,
        redis_server.address,
        tmp_path / "pool",
        bind="127.0.0.1",
        health_port=port,
        prometheus_port=port,
        insecure=True,
        template_base="http://127.0.0.1:1/",
        redis_pool_hint=None,
    )
    await worker.start(processes=2)
    try:
        async with aiohttp.ClientSession() as http:

            async def health() -> dict:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    return await response.json()

            for _ in range(50):
                if len((await health())["pids"]) == 2:
                    break
                await asyncio.sleep(0.1)
            pids = (await health())["pids"]
            assert len(set(pids)) == 2 and worker.pid not in pids
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
            assert "egresskit_worker_processes 2" in metrics
            share = cores() / 2  # idle: every core of its share is available
            for index in (0, 1):
                assert f'egresskit_worker_available_cpu{{process="{index}"}} {share}' in metrics

            os.kill(pids[0], signal.SIGKILL)
            line = await asyncio.wait_for(worker.process.stdout.readline(), 30)
            assert b"ready" in line  # the restarted child
            for _ in range(50):
                now = (await health())["pids"]
                if len(now) == 2 and pids[0] not in now:
                    break
                await asyncio.sleep(0.1)
            assert pids[1] in now and pids[0] not in now and len(now) == 2
    finally:
        assert await worker.stop() == 0
    for pid in now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = worker.log()
    assert log.count("does not use: insecure, redis_pool_hint, template_base") == 1, log
    assert "exited with -9: restarting" in log


async def test_sigterm_exits_promptly_when_redis_is_gone(livekit, tmp_path):
    from redis_server import RedisServer

    with RedisServer() as redis:
        worker = await Worker(livekit, redis.address, tmp_path / "w").start()
    # Redis has gone away; SIGTERM still ends the worker, without waiting on Redis for ever
    assert await worker.stop(timeout=40) == 0
