"""A running egresskit service for tests: in this process (app on 127.0.0.1) or as its own
process (`serve`, as users run it); webhook receiver, publishers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from publishers import SineAudioTrack, SyntheticVideoTrack, make_publisher_token, whip_publish

from egresskit.service.config import ServiceConfig

API_KEY = "apikey"
API_SECRET = "service-test-secret-long-enough-for-hs256"
STARTUP_TIMEOUT = 30.0


@dataclass
class WebhookLog:
    """Every delivered event, verified with the SDK's WebhookReceiver."""

    events: list[api.WebhookEvent] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        assert request.headers["Content-Type"] == "application/webhook+json"
        event = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET)).receive(
            body, request.headers["Authorization"]
        )
        async with self.arrived:
            self.events.append(event)
            self.arrived.notify_all()
        return web.Response(text="ok")

    def of(self, egress_id: str) -> list[tuple[str, int]]:
        return [
            (e.event, e.egress_info.status)
            for e in self.events
            if e.egress_info.egress_id == egress_id
        ]

    async def _first(self, match, timeout: float) -> api.WebhookEvent:
        async def found():
            async with self.arrived:
                while True:
                    for e in self.events:
                        if match(e):
                            return e
                    await self.arrived.wait()

        return await asyncio.wait_for(found(), timeout)

    async def wait_for(self, egress_id: str, event: str, timeout: float = 30.0) -> api.WebhookEvent:
        return await self._first(
            lambda e: e.egress_info.egress_id == egress_id and e.event == event, timeout
        )

    async def wait_for_room(self, room: str, event: str, timeout: float = 15.0) -> api.WebhookEvent:
        return await self._first(lambda e: e.room.name == room and e.event == event, timeout)


# Tests run every receiver (webhooks, RTMP, S3) on loopback, which the default policy denies.
LOOPBACK_ALLOWED = {"allow": ["127.0.0.0/8", "::1/128"]}


def service_config(output_dir: Path, webhook_url: str = "", **overrides) -> ServiceConfig:
    overrides.setdefault("egress_network", LOOPBACK_ALLOWED)
    return ServiceConfig(
        port=0,
        bind="127.0.0.1",
        api_key=API_KEY,
        api_secret=API_SECRET,
        output_dir=output_dir,
        webhook_urls=(webhook_url,) if webhook_url else (),
        **overrides,
    )


async def join(base_url: str, room: str, identity: str, color, tone):
    token = make_publisher_token(API_KEY, API_SECRET, room, identity)
    return await whip_publish(
        base_url, room, token, [SyntheticVideoTrack(color), SineAudioTrack(tone)]
    )


async def wait_status(lkapi: api.LiveKitAPI, egress_id: str, statuses, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        items = (
            await lkapi.egress.list_egress(egress_pb.ListEgressRequest(egress_id=egress_id))
        ).items
        if items and items[0].status in statuses:
            return items[0]
        if time.monotonic() > deadline:
            status = egress_pb.EgressStatus.Name(items[0].status) if items else "missing"
            raise AssertionError(f"{egress_id} is still {status}")
        await asyncio.sleep(0.1)


# --- egresskit as its own process ----------------------------------------------------------


def egresskit_command() -> list[str]:
    """The installed console script, or the module when only the source tree is importable."""
    script = shutil.which("egresskit")
    return [script] if script else [sys.executable, "-m", "egresskit.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**variables: str) -> dict[str, str]:
    """This environment without any EGRESSKIT_ setting, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EGRESSKIT_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(variables)
    return env


async def start(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return await asyncio.create_subprocess_exec(
        *egresskit_command(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or child_env(),
        cwd=cwd,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Kill a child the test no longer needs (bounded wait)."""
    if proc.returncode is None:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def healthy(port: int) -> bool:
    """Whether an egresskit service answers /healthz on `port`."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            return response.status == 200 and (await response.json())["status"] == "ok"
    except aiohttp.ClientConnectionError:
        return False


async def wait_healthy(proc: asyncio.subprocess.Process, port: int) -> None:
    async def poll() -> None:
        while not await healthy(port):
            if proc.returncode is not None:
                err = await proc.stderr.read()
                raise AssertionError(f"egresskit exited {proc.returncode}: {err.decode()[-2000:]}")
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), STARTUP_TIMEOUT)


@dataclass
class Served:
    """`egresskit serve` running in its own process on 127.0.0.1."""

    process: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Kill it (the test is done with it)."""
        await stop(self.process)

    async def terminate(self, timeout: float = 40.0) -> str:
        """SIGTERM, as a deployment stops it: drained, or killed after `timeout`; its log."""
        if self.process.returncode is None:
            self.process.terminate()
        try:
            _, err = await asyncio.wait_for(self.process.communicate(), timeout)
        except TimeoutError:
            self.process.kill()
            _, err = await self.process.communicate()
        return err.decode(errors="replace")


async def serve(output_dir: Path, *flags: str, port: int | None = None, **env: str) -> Served:
    """`egresskit serve` on 127.0.0.1 writing to `output_dir`, once /healthz answers.

    API_KEY and API_SECRET are in its environment, as a deployment keeps
    secrets off the command line; `flags` and `env` (EGRESSKIT_ settings,
    PATH...) add to that. `port` is a free one unless given (a restart).
    """
    port = port or free_port()
    args = ["--bind", "127.0.0.1", "--port", str(port), "--output-dir", str(output_dir)]
    variables = {"EGRESSKIT_API_KEY": API_KEY, "EGRESSKIT_API_SECRET": API_SECRET, **env}
    process = await start("serve", *args, *flags, env=child_env(**variables))
    try:
        await wait_healthy(process, port)
    except BaseException:
        await stop(process)
        raise
    return Served(process, port)
