"""A running egresskit service for tests: app on 127.0.0.1, webhook receiver, publishers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from livekit import api
from livekit.protocol import egress as egress_pb
from publishers import SineAudioTrack, SyntheticVideoTrack, make_publisher_token, whip_publish

from egresskit.service.config import ServiceConfig

API_KEY = "apikey"
API_SECRET = "service-test-secret-long-enough-for-hs256"


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
