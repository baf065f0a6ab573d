"""Headless Chromium publishing a fake camera and microphone into a LiveKit room with livekit-client.

The page loads the `livekit-client` browser bundle installed in tests/node
(npm), connects to the LiveKit server with a token from its URL fragment
and publishes camera and microphone. The camera is a Y4M file of one solid
colour (Chromium loops it), so a test can find the browser's tile.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from chromium import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    ChromiumPublisher,
    chromium_available,
    stop_process_group,
)
from chromium import publish_page_app as _status_app
from yarl import URL

BUNDLE = Path(__file__).with_name("node") / "node_modules/livekit-client/dist/livekit-client.umd.js"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>LiveKit publisher</title>
<script src="/livekit-client.umd.js"></script></head>
<body><script>
const params = new URLSearchParams(location.hash.slice(1));

async function report(state, detail) {
  await fetch("/status", {method: "POST", body: JSON.stringify({state, detail})});
}

async function publish() {
  const room = new LivekitClient.Room({adaptiveStream: false, dynacast: false});
  await room.connect(params.get("url"), params.get("token"));
  await room.localParticipant.enableCameraAndMicrophone();
  window.lkRoom = room;
  await report("published", room.localParticipant.sid);
}

publish().catch((error) => report("error", String(error)));
</script></body></html>
"""


def unavailable_reason() -> str:
    if not chromium_available():
        return "chromium is not installed"
    if not BUNDLE.exists():
        return "livekit-client is not installed in tests/node (run scripts/install-test-deps.sh)"
    return ""


def solid_y4m(path: Path, color: tuple[int, int, int]) -> None:
    hex_color = "0x" + "".join(f"{c:02X}" for c in color)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"color=c={hex_color}:s=640x360:r=15",
            "-t",
            "2",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(path),
        ],
        check=True,
        timeout=60,
    )


def page_app(box: list[ChromiumPublisher]) -> web.Application:
    app = _status_app(box, media="")  # only its /status route; the page is ours

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def bundle(request: web.Request) -> web.FileResponse:
        return web.FileResponse(BUNDLE)

    app.router.add_get("/livekit", page)
    app.router.add_get("/livekit-client.umd.js", bundle)
    return app


@contextlib.asynccontextmanager
async def livekit_browser_publisher(
    server_url: str, token: str, color: tuple[int, int, int]
) -> AsyncIterator[ChromiumPublisher]:
    """Chromium in a LiveKit room at `server_url` (ws://127.0.0.1:...) with a solid-colour camera."""
    if URL(server_url).host != "127.0.0.1":
        raise ValueError("the browser publisher only talks to 127.0.0.1")
    box: list[ChromiumPublisher] = []
    page_server = TestServer(page_app(box), host="127.0.0.1")
    await page_server.start_server()
    profile = Path(tempfile.mkdtemp(prefix="egresskit-chromium-"))
    camera = profile / "camera.y4m"
    await asyncio.to_thread(solid_y4m, camera, color)
    log_path = profile / "chromium.log"
    page_url = page_server.make_url("/livekit").with_fragment(
        URL.build(query={"url": server_url, "token": token}).query_string
    )
    process = None
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--use-file-for-fake-video-capture={camera}",
                f"--user-data-dir={profile}",
                str(page_url),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        publisher = ChromiumPublisher(process, log_path)
        box.append(publisher)
        yield publisher
    finally:
        if process is not None:
            await stop_process_group(process)
        await page_server.close()
        shutil.rmtree(profile, ignore_errors=True)
