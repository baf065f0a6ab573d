"""Headless Debian Chromium publishing its fake camera and microphone over WHIP.

`chromium_publisher` serves a small page from its own aiohttp server on
127.0.0.1 (so the WHIP endpoint is another origin and CORS is exercised as on
a real site), opens it in a fresh headless Chromium, and reports what the
page says. The browser's process group is always killed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]

# The page reads the WHIP URL and the token from its fragment (never sent to
# a server), publishes non-trickle, and reports each step to /status.
PUBLISH_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WHIP publisher</title></head>
<body><p id="state">starting</p>
<script>
const params = new URLSearchParams(location.hash.slice(1));

async function report(state, detail) {
  document.getElementById("state").textContent = state + " " + detail;
  await fetch("/status", {method: "POST", body: JSON.stringify({state, detail})});
}

function gatheringComplete(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

async function camera() {
  return navigator.mediaDevices.getUserMedia({
    video: {width: 640, height: 360, frameRate: 15}, audio: true,
  });
}
/*MEDIA*/
async function publish() {
  const stream = await media();
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addEventListener("connectionstatechange", () => report("connection", pc.connectionState));
  for (const track of stream.getTracks()) {
    pc.addTransceiver(track, {direction: "sendonly", streams: [stream]});
  }
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const offered = pc.localDescription.sdp.split("\\r\\n")
    .filter((line) => line.startsWith("a=candidate:")).map((line) => line.split(" ")[4]);
  await report("offered", [...new Set(offered)].join(" "));
  const response = await fetch(params.get("whip"), {
    method: "POST",
    headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + params.get("token")},
    body: pc.localDescription.sdp,
  });
  const answer = await response.text();
  if (response.status !== 201) throw new Error("WHIP answered " + response.status + ": " + answer);
  await pc.setRemoteDescription({type: "answer", sdp: answer});
  window.whipSession = {pc, location: response.headers.get("Location")};
  await report("published", response.headers.get("Location"));
}

publish().catch((error) => report("error", String(error)));
</script></body></html>
"""

CAMERA = "const media = camera;"

# Every 2 s the canvas turns white for 100 ms and a 1 kHz tone sounds for as
# long, from the same instant; a grey bar steps across the canvas each frame,
# so a frozen recording shows. Both tracks are timed the way Chromium stamps them:
# - video: the canvas is painted on a 30 fps schedule and each frame is captured
#   as it is painted (`captureStream(0)` + `requestFrame`), so a frame's capture
#   time is its paint time, not the next capture tick after it (up to 33 ms later);
# - audio: the beep starts as the first white frame is painted (a timer may fire
#   late, so it is not scheduled ahead), at `currentTime`: a
#   MediaStreamAudioDestinationNode takes the graph's samples as they are rendered,
#   not at the output device's time (`getOutputTimestamp`), which trails it by the
#   output latency (~40 ms in headless Chromium: a beep on that clock is early).
FLASH_BEEP = """
const PERIOD = 2000, FLASH = 100, FRAME = 1000 / 30, BAR = 8;
async function media() {
  const canvas = document.createElement("canvas");
  canvas.width = 320; canvas.height = 180;
  const g = canvas.getContext("2d");
  const audio = new AudioContext();
  await audio.resume();
  const tone = audio.createOscillator();
  tone.frequency.value = 1000;
  const gain = audio.createGain();
  gain.gain.value = 0;
  const out = audio.createMediaStreamDestination();
  tone.connect(gain).connect(out);
  tone.start();
  const start = performance.now() + 500;
  const stream = canvas.captureStream(0);
  const video = stream.getVideoTracks()[0];
  let frame = -Infinity;  // index of the frame painted next (negative before start)
  let white = false;
  function paint() {  // the frame due now, then a timer for the next one
    const t = performance.now() - start;
    frame = Math.max(frame, Math.floor(t / FRAME));
    const shown = frame * FRAME;
    const flash = shown >= 0 && shown % PERIOD < FLASH - 1e-6;
    if (flash && !white) {  // the beep, from this instant on the audio clock
      gain.gain.setValueAtTime(0.5, audio.currentTime);
      gain.gain.setValueAtTime(0, audio.currentTime + FLASH / 1000);
    }
    white = flash;
    g.fillStyle = flash ? "#ffffff" : "#282828";
    g.fillRect(0, 0, canvas.width, canvas.height);
    g.fillStyle = "#808080";
    g.fillRect((frame * 2) % (canvas.width - BAR), 0, BAR, canvas.height);
    video.requestFrame();
    frame += 1;
    setTimeout(paint, Math.max(0, start + frame * FRAME - performance.now()));
  }
  paint();
  stream.addTrack(out.stream.getAudioTracks()[0]);
  return stream;
}
"""


def chromium_available() -> bool:
    return os.access(CHROMIUM, os.X_OK)


class ChromiumPublisher:
    """A running browser publisher and what its page has reported."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.reports: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=100)
        self.history: list[tuple[str, str]] = []

    def _report(self, state: str, detail: str) -> None:
        self.history.append((state, detail))
        with contextlib.suppress(asyncio.QueueFull):
            self.reports.put_nowait((state, detail))

    async def wait_published(self, timeout: float = 30.0) -> str:
        """The WHIP resource location once the page has applied the answer."""

        async def published() -> str:
            while True:
                state, detail = await self.reports.get()
                if state == "published":
                    return detail
                if state == "error":
                    raise AssertionError(f"the page failed: {detail}")

        try:
            return await asyncio.wait_for(published(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the page did not publish in {timeout} s; it reported {self.history}; "
                f"chromium said: {self.log_tail()}"
            ) from None

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def publish_page_app(publisher_box: list[ChromiumPublisher], media: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PUBLISH_PAGE.replace("/*MEDIA*/", media), content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        report = json.loads(await request.text())
        if publisher_box:
            publisher_box[0]._report(str(report.get("state")), str(report.get("detail")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/status", status)
    return app


async def stop_process_group(process: asyncio.subprocess.Process) -> None:
    """SIGTERM lets Chromium reap its helpers; SIGKILL then ends whatever is left."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)


@contextlib.asynccontextmanager
async def chromium_publisher(
    base_url: str | URL, room: str, token: str, media: str = CAMERA
) -> AsyncIterator[ChromiumPublisher]:
    """Chromium publishing to `{base_url}/whip/{room}`: its fake camera and microphone,
    or what `media` (JavaScript defining `media()`, e.g. FLASH_BEEP) makes."""
    whip_url = URL(str(base_url)) / "whip" / room
    if whip_url.host not in ("127.0.0.1", "localhost"):
        raise ValueError("the browser publisher only talks to 127.0.0.1")
    box: list[ChromiumPublisher] = []
    page_server = TestServer(publish_page_app(box, media), host="127.0.0.1")
    await page_server.start_server()
    profile = tempfile.mkdtemp(prefix="egresskit-chromium-")
    log_path = Path(profile) / "chromium.log"
    page_url = page_server.make_url("/").with_fragment(
        URL.build(query={"whip": str(whip_url), "token": token}).query_string
    )
    process = None
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                str(page_url),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, killed whole below
            )
        publisher = ChromiumPublisher(process, log_path)
        box.append(publisher)
        yield publisher
    finally:
        if process is not None:
            await stop_process_group(process)
        await page_server.close()
        shutil.rmtree(profile, ignore_errors=True)
