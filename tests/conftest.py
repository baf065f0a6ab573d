"""Shared fixtures. Each owner appends its own; keep fixtures small and real."""

from __future__ import annotations

import os

import pytest
from aiohttp import web
from publishers import WHIP_API_KEY, WHIP_API_SECRET
from storage_servers import (  # noqa: F401 - storage fixtures, shared with plugins/*/tests
    azurite,
    azurite_env,
    gcs_emulator,
    gcs_emulator_env,
    moto_server,
    oss_target,
    s3_bucket,
)

from egresskit.rooms import RoomManager, whip_app

# --- scheduling ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def normal_scheduling():
    """Each test starts and ends on normal scheduling.

    The suite's process was seen on SCHED_FIFO 99 after in-process livekit SDK
    publishers ran (its native threads ask for real-time priority); every
    process started afterwards (the service, ffmpeg, Xvfb, Chromium) inherited
    it, and a Chromium spinning in the kernel starved both cores for minutes.
    """
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    yield
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


# --- rooms and WHIP (egresskit/rooms) -------------------------------------------


@pytest.fixture
async def rooms():
    """A RoomManager, closed (peer connections too) after the test."""
    manager = RoomManager()
    yield manager
    await manager.close()


@pytest.fixture
def whip_keys() -> dict[str, str]:
    return {WHIP_API_KEY: WHIP_API_SECRET}


@pytest.fixture
async def whip_server(aiohttp_server, rooms, whip_keys):
    """An aiohttp server on 127.0.0.1 with the WHIP endpoint mounted at /whip.

    Its sessions answer with loopback candidates, as `egresskit serve` on 127.0.0.1
    does; publishers gather as aioice does by default (this machine's interface
    addresses), as they do for users.
    """
    app = web.Application()
    app.add_subapp("/whip", whip_app(rooms, whip_keys, ice_addresses=["127.0.0.1"]))
    return await aiohttp_server(app, host="127.0.0.1")


# --- nginx-rtmp (tests/rtmp_server.py) ------------------------------------------------------


@pytest.fixture
def rtmp_server():
    """nginx with its RTMP module on 127.0.0.1, recording what it receives."""
    from rtmp_server import RtmpServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RtmpServer() as server:
        yield server


# --- webhook receiver (tests/service_fixtures.py) --------------------------------------------


@pytest.fixture
async def webhooks(aiohttp_server):
    """A receiver on 127.0.0.1 verifying every event with the SDK's WebhookReceiver; `.url`."""
    from service_fixtures import WebhookLog

    log = WebhookLog()
    app = web.Application()
    app.router.add_post("/hook", log.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    log.url = str(server.make_url("/hook"))
    return log


# --- redis-server (tests/redis_server.py), for psrpc ------------------------------------------


@pytest.fixture(scope="module")
def redis_server():
    """A private redis-server on 127.0.0.1 for the module; `.url`, `.address`."""
    from redis_server import RedisServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RedisServer() as server:
        yield server
