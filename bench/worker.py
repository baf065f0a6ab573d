"""`egresskit worker` behind livekit-server: start latency and composite capacity.

start     StartRoomCompositeEgress through livekit-server (livekit-api client,
          livekit-server on Redis dispatching to one egresskit worker process)
          until livekit-server's ListEgress shows ACTIVE, `--runs` times; in
          the same run, the same request to `egresskit serve --livekit-url`
          (no psrpc, the same egress layer) as the reference. Two SDK
          publishers are in the room. Printed: median and p90 of each, the
          worker's median per phase (request -> graph start -> first media
          -> ACTIVE seen, from the EgressInfo's own stamps), and
          the ratio worker / serve. Target: worker median and p90 <= 1 s.
capacity  N concurrent 1280x720@30 grid composites of one four-publisher
          room (640x360@30 SDK publishers), one `egresskit worker` on
          `--cores` cores with `--processes` processes (the composites spread
          evenly over them), for `--seconds` each, N = 1, 2, ... until one
          fails. A composite holds when its file is no more than 1% shorter
          than the wall time between its first media and its stop (both
          stamped by the worker; the file also holds the drain after the
          stop), its frames are 30 fps (within 1%) of its duration, and the
          worker dropped no frames (its /metrics).
          Publishers run in a process of their own, on the same machine
          (in this one they would starve its event loop and its timing).

Needs livekit-server and redis-server (scripts/install-test-deps.sh).

Run: python bench/worker.py start [--runs 20]
     python bench/worker.py capacity [--seconds 20] [--max 4] [--cores 2] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import REPO, TESTS_DIR
from livekit import api
from livekit.protocol import egress as egress_pb

sys.path.insert(0, str(TESTS_DIR))
from livekit_publishers import SdkPublisher  # noqa: E402
from livekit_redis import LiveKitRedisServer  # noqa: E402
from redis_server import RedisServer  # noqa: E402
from worker_fixtures import Worker, wait_status  # noqa: E402

ROOM = "bench"
TARGET_S = 1.0
COLORS = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (220, 200, 40)]
ENDED = (egress_pb.EGRESS_COMPLETE, egress_pb.EGRESS_FAILED, egress_pb.EGRESS_ABORTED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


# Where a start's time goes, from the egress's own stamps (one machine, one wall clock):
# until the egress's graph starts (claim, room join and subscription, plan), until its
# first packet is written (ACTIVE's updated_at), until the client sees ACTIVE.
PHASES = ("request -> graph start", "graph start -> first media", "first media -> seen ACTIVE")


async def time_to_active(
    client: api.LiveKitAPI, runs: int, name: str, phases: list[tuple[float, ...]] | None = None
) -> list[float]:
    times = []
    for run in range(runs):
        request = api.RoomCompositeEgressRequest(
            room_name=ROOM,
            layout="grid",
            file_outputs=[api.EncodedFileOutput(filepath=f"{name}-{run}.mp4")],
        )
        began, began_ns = time.perf_counter(), time.time_ns()
        info = await client.egress.start_room_composite_egress(request)
        # asked every 10 ms: a longer poll period would add up to itself to each figure
        active = await wait_status(
            client, info.egress_id, [egress_pb.EGRESS_ACTIVE], 30, interval=0.01
        )
        times.append(time.perf_counter() - began)
        if phases is not None:
            stamps = (began_ns, active.started_at, active.updated_at, time.time_ns())
            phases.append(tuple((b - a) / 1e9 for a, b in itertools.pairwise(stamps)))
        await client.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))
        final = await wait_status(client, info.egress_id, ENDED, timeout=60)
        if final.status != egress_pb.EGRESS_COMPLETE:
            raise RuntimeError(f"{name} run {run}: {final.error}")
    return times


async def serve_process(livekit, output_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSKIT_")}
    env.update(PYTHONPATH=str(REPO), EGRESSKIT_LIVEKIT_API_SECRET=livekit.api_secret)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "egresskit",
        "serve",
        "--port",
        str(port),
        "--api-key",
        "bench",
        "--api-secret",
        "bench-secret-0123456789abcdef0123",
        "--output-dir",
        str(output_dir),
        "--livekit-url",
        livekit.url,
        "--livekit-api-key",
        livekit.api_key,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return process, url
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise RuntimeError("egresskit serve did not start")


async def start(args: argparse.Namespace, livekit, redis, directory: Path) -> None:
    publishers = [
        await SdkPublisher(livekit, ROOM, f"p{i}", color=COLORS[i]).start() for i in range(2)
    ]
    worker = await Worker(livekit, redis.address, directory / "worker", log_level="warning").start()
    lk = api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret)
    serve, serve_url = await serve_process(livekit, directory / "serve")
    direct = api.LiveKitAPI(serve_url, "bench", "bench-secret-0123456789abcdef0123")
    try:
        await time_to_active(lk, 1, "warmup-worker")
        await time_to_active(direct, 1, "warmup-serve")
        phases: list[tuple[float, ...]] = []
        through_worker = await time_to_active(lk, args.runs, "worker", phases)
        through_serve = await time_to_active(direct, args.runs, "serve")
    finally:
        await lk.aclose()
        await direct.aclose()
        serve.terminate()
        await serve.wait()
        await worker.stop()
        for publisher in publishers:
            await publisher.stop()
    w_median, w_p90 = quantiles(through_worker)
    s_median, s_p90 = quantiles(through_serve)
    print(f"StartRoomCompositeEgress -> ACTIVE, {args.runs} runs each")
    print(
        f"  via livekit-server + worker: median {w_median * 1000:.0f} ms, p90 {w_p90 * 1000:.0f} ms"
    )
    for index, phase in enumerate(PHASES):
        median = statistics.median(p[index] for p in phases)
        print(f"    {phase}: median {median * 1000:.0f} ms")
    print(
        f"  egresskit serve (reference): median {s_median * 1000:.0f} ms, p90 {s_p90 * 1000:.0f} ms"
    )
    print(f"  ratio worker / serve: median {w_median / s_median:.2f}, p90 {w_p90 / s_p90:.2f}")
    ok = w_median <= TARGET_S and w_p90 <= TARGET_S
    print(f"  target <= {TARGET_S:.0f} s: {'met' if ok else 'NOT met'}")


def frames_and_duration(path: Path) -> tuple[int, float]:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_packets",
            "-show_entries",
            "stream=nb_read_packets:format=duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    return int(data["streams"][0]["nb_read_packets"]), float(data["format"]["duration"])


async def dropped(port: int) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    return sum(
        int(float(v)) for v in re.findall(r"egresskit_worker_dropped_frames\{.*\} (\S+)", text)
    )


PUBLISHERS = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from livekit import api
from livekit_publishers import SdkPublisher

class Server:
    url = {url!r}
    def token(self, room, identity, **grants):
        grant = api.VideoGrants(room_join=True, room=room, **grants)
        return (api.AccessToken({key!r}, {secret!r}).with_identity(identity)
                .with_grants(grant).to_jwt())

async def main():
    for i, color in enumerate({colors!r}):
        await SdkPublisher(Server(), {room!r}, f"p{{i}}", color=color, size=(640, 360)).start()
    print("publishing", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def capacity(args: argparse.Namespace, livekit, redis, directory: Path) -> None:
    code = PUBLISHERS.format(
        tests=str(TESTS_DIR),
        url=livekit.url,
        key=livekit.api_key,
        secret=livekit.api_secret,
        colors=COLORS,
        room=ROOM,
    )
    publishers = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    assert publishers.stdout is not None
    await asyncio.wait_for(publishers.stdout.readline(), 60)
    held = 0
    try:
        for n in range(1, args.max + 1):
            port = free_port()
            # each process's budget (its share of the cores x 0.8) holds its part of the N
            per_process = math.ceil(n / args.processes)
            cost = (
                0.01
                if args.processes == 1
                else args.cores / args.processes * 0.8 / (per_process + 0.5)
            )
            worker = Worker(
                livekit,
                redis.address,
                directory / f"cap{n}",
                log_level="warning",
                bind="127.0.0.1",
                prometheus_port=port,
                cpu_cost={"room_composite_cpu_cost": cost},
            )
            await worker.start(processes=args.processes)
            os.sched_setaffinity(worker.pid, set(range(args.cores)))
            lk = api.LiveKitAPI(livekit.http_url, livekit.api_key, livekit.api_secret)
            try:
                infos = [
                    await lk.egress.start_room_composite_egress(
                        api.RoomCompositeEgressRequest(
                            room_name=ROOM,
                            layout="grid",
                            file_outputs=[api.EncodedFileOutput(filepath=f"c{i}.mp4")],
                        )
                    )
                    for i in range(n)
                ]
                # wall time of each recording: its first media (the ACTIVE EgressInfo's
                # updated_at) to its stop (the ENDING one's), both stamped by the worker
                active_at = []
                for info in infos:
                    active = await wait_status(lk, info.egress_id, [egress_pb.EGRESS_ACTIVE])
                    active_at.append(active.updated_at)
                print(f"N={n}: all ACTIVE, recording {args.seconds:.0f} s", flush=True)
                await asyncio.sleep(args.seconds)
                results = []
                for info, began in zip(infos, active_at, strict=True):
                    ending = await lk.egress.stop_egress(
                        api.StopEgressRequest(egress_id=info.egress_id)
                    )
                    results.append((ending.updated_at - began) / 1e9)
                lost = await dropped(port)
                print(f"N={n}: stopped, waiting for the files", flush=True)
                finals = [await wait_status(lk, i.egress_id, ENDED, timeout=120) for i in infos]
            finally:
                await lk.aclose()
                await worker.stop(timeout=180)
            good = lost == 0
            for i, (final, wall) in enumerate(zip(finals, results, strict=True)):
                frames, duration = frames_and_duration(worker.output_dir / f"c{i}.mp4")
                fps = frames / duration if duration else 0
                within = (wall - duration) / wall  # time the file lacks (it also holds the drain)
                holds = (
                    final.status == egress_pb.EGRESS_COMPLETE
                    and within <= 0.01
                    and abs(fps - 30) <= 0.3
                )
                good &= holds
                print(
                    f"  N={n} #{i}: first media to stop {wall:.2f} s, file {duration:.2f} s, "
                    f"{frames} frames ({fps:.2f} fps){'' if holds else '  FAILS'}"
                )
            print(
                f"N={n}: dropped frames {lost}; {'holds' if good else 'does NOT hold'}", flush=True
            )
            if not good:
                break
            held = n
    finally:
        publishers.terminate()
        await publishers.wait()
    print(f"one {args.cores}-core worker holds {held} concurrent 720p30 4-person composite(s)")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["start", "capacity"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="egresskit-bench-worker-") as tmp,
        RedisServer() as redis,
    ):
        with LiveKitRedisServer(redis.address) as livekit:
            run = start if args.mode == "start" else capacity
            await run(args, livekit, redis, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
