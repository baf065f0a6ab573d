"""GET /files/...: the output directory read-only, with ranges, tokens and no way out of it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from publishers import WHIP_API_KEY, WHIP_API_SECRET

from egresskit.service.files import RedactedAccessLogger, files_app
from egresskit.tokens import create_token

CONTENT = bytes(range(256)) * 40  # 10240 bytes


def token(video: dict | None = None) -> str:
    return create_token(WHIP_API_KEY, WHIP_API_SECRET, video=video or {"roomRecord": True})


@pytest.fixture
async def files_server(aiohttp_server, tmp_path: Path):
    root = tmp_path / "out"
    (root / "room").mkdir(parents=True)
    (root / "room" / "a.mp4").write_bytes(CONTENT)
    (root / ".hidden").write_bytes(b"hidden")
    (tmp_path / "secret.txt").write_text("outside the output directory")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    app = web.Application()
    app.add_subapp("/files", files_app(root, {WHIP_API_KEY: WHIP_API_SECRET}))
    return await aiohttp_server(app, host="127.0.0.1", access_log_class=RedactedAccessLogger)


async def raw_get(port: int, target: str, headers: str = "") -> tuple[int, bytes]:
    """A GET with `target` sent byte for byte (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_directory_escapes_are_refused(files_server):
    auth = f"Authorization: Bearer {token()}\r\n"
    port = files_server.port
    assert (await raw_get(port, "/files/room/a.mp4", auth)) == (200, CONTENT)
    for target in (
        "/files/../",
        "/files/../secret.txt",
        "/files/room/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/room%2f..%2f..%2fsecret.txt",
        "/files/..%5csecret.txt",
        "/files/%252e%252e/secret.txt",
        "/files//etc/passwd",
        "/files/escape.txt",
        "/files/.hidden",
        "/files/room",
        "/files/room/",
        "/files/room/a.mp4%00.txt",
    ):
        status, body = await raw_get(port, target, auth)
        assert status in (400, 404), (target, status)
        assert b"outside the output directory" not in body


async def test_ranges_and_tokens(files_server, caplog):
    url = files_server.make_url("/files/room/a.mp4")
    bearer = {"Authorization": f"Bearer {token()}"}
    # before connecting: aiohttp decides per connection whether to write access lines
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={**bearer, "Range": "bytes=100-199"}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 100-199/{len(CONTENT)}"
            assert await response.read() == CONTENT[100:200]
        async with http.get(url, headers={**bearer, "Range": "bytes=-16"}) as response:
            assert (response.status, await response.read()) == (206, CONTENT[-16:])
        async with http.get(url) as response:
            assert response.status == 401
        async with http.get(
            url, headers={"Authorization": f"Bearer {token({'roomList': True})}"}
        ) as response:
            assert response.status == 403
        # The token as a path prefix, as the console's <video> uses it; kept out of the log.
        prefixed = token()
        async with http.get(
            files_server.make_url(f"/files/.token/{prefixed}/room/a.mp4"),
            headers={"Range": "bytes=0-9"},
        ) as response:
            assert (response.status, await response.read()) == (206, CONTENT[:10])
        await asyncio.sleep(0.2)  # the access line is written once the response is done
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "/files/.token/redacted/room/a.mp4" in logged and prefixed not in logged
        async with http.put(url, headers=bearer, data=b"x") as response:
            assert response.status == 405
