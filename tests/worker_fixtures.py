"""`egresskit worker` as users run it: its own process, a livekit/egress YAML, on a Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb

READY_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """`python -m egresskit worker --config egress.yaml` with egresskit from this checkout."""

    def __init__(self, livekit, redis_address: str, directory: Path, **settings) -> None:
        self.directory = directory
        self.output_dir = directory / "out"
        self.config_path = directory / "egress.yaml"
        self.log_path = directory / "worker.log"
        self.config = {
            "api_key": livekit.api_key,
            "api_secret": livekit.api_secret,
            "ws_url": livekit.url,
            "redis": {"address": redis_address},
            "log_level": "info",
            "output_dir": str(self.output_dir),
            # the tests' RTMP server and webhook receivers are on loopback
            "egress_network": {"allow": ["127.0.0.0/8", "::1/128"]},
            **settings,
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, processes: int = 1) -> Worker:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "egresskit",
                "worker",
                "--config",
                str(self.config_path),
                "--processes",
                str(processes),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
            )
        assert self.process.stdout is not None
        ready = 0
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready < processes:
            line = await asyncio.wait_for(
                self.process.stdout.readline(), max(0.1, deadline - time.monotonic())
            )
            if not line:
                raise AssertionError(f"egresskit worker exited:\n{self.log()}")
            ready += b"ready" in line
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-6000:]
        return ""

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, and wait for it to drain and exit; its exit code."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the worker did not stop in {timeout} s:\n{self.log()}") from None


@dataclass
class WebhookLog:
    """livekit-server's webhooks, each verified with the SDK's WebhookReceiver."""

    api_key: str
    api_secret: str
    events: list[api.WebhookEvent] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        receiver = api.WebhookReceiver(api.TokenVerifier(self.api_key, self.api_secret))
        self.events.append(receiver.receive(body, request.headers["Authorization"]))
        return web.Response(text="ok")

    def of(self, egress_id: str) -> list[tuple[str, str]]:
        return [
            (e.event, egress_pb.EgressStatus.Name(e.egress_info.status))
            for e in self.events
            if e.egress_info.egress_id == egress_id
        ]


async def wait_status(
    lkapi: api.LiveKitAPI, egress_id: str, statuses, timeout: float = 30.0, interval: float = 0.05
):
    """livekit-server's own record of the egress, once it has one of `statuses`
    (asked every `interval` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        items = (await lkapi.egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items
        if items and items[0].status in statuses:
            return items[0]
        if time.monotonic() > deadline:
            status = egress_pb.EgressStatus.Name(items[0].status) if items else "missing"
            raise AssertionError(f"{egress_id} is still {status}")
        await asyncio.sleep(interval)
