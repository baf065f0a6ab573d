"""Connection and token hygiene of the service: slow headers, abandoned rooms, token lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from datetime import timedelta

import aiohttp
import pytest
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import room as room_pb
from publishers import SineAudioTrack, WhipError, make_publisher_token, whip_publish
from service_fixtures import (
    API_KEY,
    API_SECRET,
    child_env,
    free_port,
    join,
    service_config,
    start,
    stop,
    wait_healthy,
)

from egresskit.service.app import HEADER_TIMEOUT_S, create_app
from egresskit.tokens import create_token

RED = (220, 40, 40)


# --- header-read timeout (slowloris) ---------------------------------------------------------


def seconds_until_closed(port: int, partial: bytes, limit: float) -> float:
    """Send `partial` and wait (at most `limit`) until the server closes; the time it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        start_at = time.monotonic()
        sock.sendall(partial)
        with contextlib.suppress(ConnectionResetError, TimeoutError):  # reset, or still open
            while sock.recv(4096):  # a server that answers still has to close
                pass
        return time.monotonic() - start_at


@pytest.mark.slow
async def test_slow_headers_are_cut_off(tmp_path):
    port = free_port()
    proc = await start(
        "serve", "--dev", "--port", str(port), "--output-dir", str(tmp_path), env=child_env()
    )
    try:
        await wait_healthy(proc, port)
        limit = HEADER_TIMEOUT_S + 5
        partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        # Nothing sent at all is cut off alike (both connections wait at once).
        slow, idle = await asyncio.gather(
            asyncio.to_thread(seconds_until_closed, port, partial, limit),
            asyncio.to_thread(seconds_until_closed, port, b"", limit),
        )
        assert slow <= HEADER_TIMEOUT_S + 2, f"the connection stayed {slow:.1f} s"
        assert idle <= HEADER_TIMEOUT_S + 2, f"the idle connection stayed {idle:.1f} s"
        # the service still serves complete requests
        await wait_healthy(proc, port)
    finally:
        await stop(proc)


# --- empty embedded rooms leave ListRooms ---------------------------------------------------------


async def test_empty_rooms_are_dropped_after_the_grace_period(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path, empty_room_timeout_s=1.0))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    client = api.LiveKitAPI(base, API_KEY, API_SECRET)
    try:
        session = await join(base, "brief", "alice", RED, 440.0)
        await session.close()  # WHIP DELETE: the room is empty now

        async def names() -> list[str]:
            listed = await client.room.list_rooms(room_pb.ListRoomsRequest())
            return [room.name for room in listed.rooms]

        assert await names() == ["brief"]  # within the grace period
        await asyncio.sleep(1.2)
        assert await names() == []
    finally:
        await client.aclose()


# --- maximum token lifetime ---------------------------------------------------------------------


async def list_egress_with(base: str, token: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/twirp/livekit.Egress/ListEgress", data="{}", headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_tokens_valid_for_too_long_are_refused(aiohttp_server, tmp_path):
    app = create_app(service_config(tmp_path, max_token_ttl_s=8 * 3600))
    server = await aiohttp_server(app, host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")

    # The SDKs' own tokens (6 h) pass.
    async with api.LiveKitAPI(base, API_KEY, API_SECRET) as client:
        await client.egress.list_egress(egress_pb.ListEgressRequest())
    month = (
        api.AccessToken(API_KEY, API_SECRET)
        .with_grants(api.VideoGrants(room_record=True))
        .with_ttl(timedelta(days=30))
        .to_jwt()
    )
    forever = create_token(  # exp = 2^62
        API_KEY, API_SECRET, video={"roomRecord": True}, ttl=2**62 - int(time.time())
    )
    for token in (month, forever):
        status, body = await list_egress_with(base, token)
        assert status == 401 and body["code"] == "unauthenticated", body
        assert "lifetime" in body["msg"], body

    with pytest.raises(WhipError) as refused:
        await whip_publish(
            base,
            "long",
            make_publisher_token(API_KEY, API_SECRET, "long", "eve", ttl=30 * 86400),
            [SineAudioTrack()],
        )
    assert refused.value.status == 401 and "lifetime" in refused.value.text
