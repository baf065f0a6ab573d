"""ListEgress throughput with 200 egress records, against a bare aiohttp hello-world.

Two servers run as child processes of this script, one at a time on the same
loopback and the same event loop policy, without access logs:

- the egresskit service, whose manager first records 200 real egresses
  (audio-only room composites of an in-process publisher: started, ACTIVE,
  stopped, COMPLETE with a file result and a manifest);
- a hello-world aiohttp app answering every POST to / with a short text,
  and to /static/<format> with prebuilt bytes as long as the ListEgress
  answer in that format (the floor for moving that many bytes).

Each is loaded the same way, alternately for several rounds (the machine is
shared: medians are printed), by two load generators:

- `aiohttp`: this process, N concurrent workers sending a fixed number of
  requests over one keep-alive connection pool;
- `wrk` (Debian's wrk, when installed): one thread, N connections, a fixed
  duration, POST with the same headers and body (a Lua script sets them).

ListEgress is sent as protobuf (an empty ListEgressRequest, as the Python
server SDK sends it) and as JSON (`{}`), both with a fresh Bearer token.
The hello-world gets the same POST. The ratio is ListEgress req/s over
hello-world req/s; target >= 0.5. The ratio to the same-size static answer
shows how much of the gap is the answer's size rather than egresskit.

Run: python bench/list_egress.py [--records 200] [--requests 2000]
     [--concurrency 16] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import TESTS_DIR
from aiohttp import web
from livekit.protocol import egress as egress_pb

sys.path.insert(0, str(TESTS_DIR))
from publishers import SineAudioTrack  # noqa: E402
from service_fixtures import API_KEY, API_SECRET, service_config  # noqa: E402

from egresskit.service.app import MANAGER, ROOMS, create_app  # noqa: E402
from egresskit.tokens import create_token  # noqa: E402

ROOM = "bench"
BATCH = 20  # egresses recorded at once while filling the manager
TARGET_RATIO = 0.5
BODIES = {"protobuf": ("application/protobuf", b""), "json": ("application/json", b"{}")}


# --- the servers (run in child processes) ------------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, world")


async def fill(app: web.Application, records: int) -> None:
    """Record `records` short audio-only egresses through the manager, to COMPLETE."""
    manager = app[MANAGER]
    room = app[ROOMS].get_or_create(ROOM)
    await room.publish(SineAudioTrack(440.0), identity="alice")
    request = egress_pb.RoomCompositeEgressRequest(
        room_name=ROOM,
        audio_only=True,
        file_outputs=[egress_pb.EncodedFileOutput(filepath="{room_name}/{time}-{room_id}.ogg")],
    )
    for first in range(0, records, BATCH):
        infos = [await manager.start(request) for _ in range(min(BATCH, records - first))]
        sessions = [manager.get(info.egress_id) for info in infos]
        deadline = time.monotonic() + 30
        while any(s.info.status == egress_pb.EGRESS_STARTING for s in sessions):
            if time.monotonic() > deadline:
                raise RuntimeError("egresses did not become ACTIVE within 30 s")
            await asyncio.sleep(0.02)
        for session in sessions:
            manager.stop(session.egress_id)
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in sessions)), 60)
    statuses = {egress_pb.EgressStatus.Name(i.status) for i in manager.list()}
    if len(manager.list()) != records or statuses != {"EGRESS_COMPLETE"}:
        raise RuntimeError(f"expected {records} COMPLETE egresses, got {statuses}")


def static(size: int):
    body = b"x" * size

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    return answer


async def run_server(kind: str, port: int, records: int, sizes: list[int]) -> None:
    if kind == "hello":
        app = web.Application()
        app.router.add_route("*", "/", hello)
        for body_kind, size in zip(BODIES, sizes, strict=True):
            app.router.add_route("*", f"/static/{body_kind}", static(size))
    else:
        # BATCH audio egresses at once exceed the default CPU budget of a small machine
        app = create_app(
            service_config(
                Path(tempfile.mkdtemp(prefix="list-egress-")),
                cpu_cost={"audio_room_composite_cpu_cost": 0},
            )
        )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if kind == "egress":
        await fill(app, records)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    finally:
        await runner.cleanup()


# --- the load generators (this process) --------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server child process, ready to take load once constructed by `start`."""

    def __init__(self, kind: str, records: int, sizes: list[int] | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(self.port)]
            + ["--records", str(records)]
            + ["--sizes", ",".join(map(str, sizes or [0] * len(BODIES)))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"{kind} server did not start")

    def url(self, path: str = "/twirp/livekit.Egress/ListEgress") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.proc.stdin.close()  # EOF: the child cleans up and exits
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def headers(content_type: str) -> dict[str, str]:
    token = create_token(API_KEY, API_SECRET, video={"roomRecord": True}, ttl=3600)
    return {"Content-Type": content_type, "Authorization": f"Bearer {token}"}


async def check(server: Server, body_kind: str, records: int, path: str | None = None) -> int:
    """One request, checked: the egress server lists every record. Returns the answer's size."""
    content_type, body = BODIES[body_kind]
    url = server.url(path) if path else server.url()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=headers(content_type)) as response,
    ):
        data = await response.read()
        if response.status != 200:
            raise RuntimeError(f"{server.kind}: HTTP {response.status}: {data[:200]!r}")
    if server.kind == "egress":
        if body_kind == "protobuf":
            count = len(egress_pb.ListEgressResponse.FromString(data).items)
        else:
            import json

            count = len(json.loads(data)["items"])
        if count != records:
            raise RuntimeError(f"ListEgress listed {count} egresses, not {records}")
    return len(data)


async def aiohttp_load(url: str, body_kind: str, requests: int, concurrency: int) -> float:
    """Requests per second of `concurrency` workers sending `requests` POSTs in all."""
    content_type, body = BODIES[body_kind]
    hdrs = headers(content_type)
    remaining = requests

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with http.post(url, data=body, headers=hdrs) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))  # warm the pool
        remaining = requests
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def wrk_load(url: str, body_kind: str, seconds: float, concurrency: int) -> float:
    content_type, body = BODIES[body_kind]
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}"]
    lines += [
        f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}"
        for k, v in headers(content_type).items()
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        result = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
    finally:
        os.unlink(script.name)
    if "Non-2xx" in result.stdout:
        raise RuntimeError(f"wrk saw errors:\n{result.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))


def lua_string(value: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in value) + '"'


def main(args: argparse.Namespace) -> None:
    generators = ["aiohttp"] + (["wrk"] if shutil.which("wrk") else [])
    if "wrk" not in generators:
        print("wrk not installed (apt-get install wrk): aiohttp load generator only")
    results: dict[tuple[str, str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    print(f"recording {args.records} egresses in the service process ...", flush=True)
    started = time.monotonic()
    egress = Server("egress", args.records)
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    hello_world = None
    try:
        for body_kind in BODIES:
            sizes[body_kind] = asyncio.run(check(egress, body_kind, args.records))
        hello_world = Server("hello", args.records, [sizes[k] for k in BODIES])
        for body_kind in BODIES:
            asyncio.run(check(hello_world, body_kind, args.records, f"/static/{body_kind}"))
        for _ in range(args.rounds):
            for generator in generators:
                for body_kind in BODIES:
                    targets = {
                        "hello": hello_world.url("/"),
                        "static": hello_world.url(f"/static/{body_kind}"),
                        "egress": egress.url(),
                    }
                    for target, url in targets.items():
                        if generator == "aiohttp":
                            rate = asyncio.run(
                                aiohttp_load(url, body_kind, args.requests, args.concurrency)
                            )
                        else:
                            rate = wrk_load(url, body_kind, args.seconds, args.concurrency)
                        results.setdefault((generator, body_kind, target), []).append(rate)
                        print(f"  {generator} {body_kind} {target}: {rate:.0f} req/s", flush=True)
    finally:
        egress.close()
        if hello_world is not None:
            hello_world.close()

    print(
        f"ListEgress with {args.records} records ({sizes['protobuf'] / 1e3:.0f} kB protobuf,"
        f" {sizes['json'] / 1e3:.0f} kB JSON per answer), {args.concurrency} concurrent,"
        f" median of {args.rounds} rounds"
    )
    for generator in generators:
        how = f"{args.requests} requests" if generator == "aiohttp" else f"{args.seconds:g} s"
        for body_kind in BODIES:
            rate = {
                target: statistics.median(results[(generator, body_kind, target)])
                for target in ("hello", "static", "egress")
            }
            ratio = rate["egress"] / rate["hello"]
            verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
            print(
                f"  {generator:<7} ({how}) {body_kind:<8}: ListEgress {rate['egress']:6.0f} req/s,"
                f" hello-world {rate['hello']:6.0f}, ratio {ratio:.2f} ({verdict} {TARGET_RATIO});"
                f" same-size static {rate['static']:6.0f}, ratio {rate['egress'] / rate['static']:.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000, help="per aiohttp measurement")
    parser.add_argument("--seconds", type=float, default=5, help="per wrk measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", choices=["egress", "hello"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="0,0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sizes = [int(size) for size in args.sizes.split(",")]
        asyncio.run(run_server(args.serve, args.port, args.records, sizes))
    else:
        main(args)
