"""Test pages for web egress, served by the test on 127.0.0.1, and readers of what they draw.

`/counter` draws its animation frame count as 12 black-or-white blocks
(bit 11 on the left) in the top row of the page and plays a 440 Hz tone;
`read_counter` reads the number back from a decoded frame. `/signal`
shows the marker colour (red) until it logs START_RECORDING after
`?after=` seconds and paints green, then logs END_RECORDING `?end=`
seconds later (never, without it). `/colour?c=RRGGBB` is one flat colour.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

BITS = 12
BLOCK = 40  # pixels per bit

COUNTER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
html, body { margin: 0; background: #404040; overflow: hidden; }
canvas { display: block; }
</style></head><body><canvas id="bits"></canvas>
<script>
const BITS = /*BITS*/, BLOCK = /*BLOCK*/;
const canvas = document.getElementById("bits");
canvas.width = BITS * BLOCK;
canvas.height = BLOCK;
const g = canvas.getContext("2d");
let frame = 0;
function draw() {
  frame += 1;
  for (let bit = 0; bit < BITS; bit++) {
    g.fillStyle = (frame >> (BITS - 1 - bit)) & 1 ? "#fff" : "#000";
    g.fillRect(bit * BLOCK, 0, BLOCK, BLOCK);
  }
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);
const audio = new AudioContext();
const tone = audio.createOscillator();
tone.frequency.value = 440;
const gain = audio.createGain();
gain.gain.value = 0.3;
tone.connect(gain).connect(audio.destination);
tone.start();
</script></body></html>
""".replace("/*BITS*/", str(BITS)).replace("/*BLOCK*/", str(BLOCK))

SIGNAL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>html, body { margin: 0; height: 100%%; }</style></head>
<body style="background: #ff0000"><script>
const q = new URLSearchParams(location.search);
const after = Number(q.get("after") || 2) * 1000;
setTimeout(() => {
  document.body.style.background = "#00ff00";
  // logged once the green page has been painted: two animation frames later
  requestAnimationFrame(() => requestAnimationFrame(() => {
    console.log("START_RECORDING");
    if (q.get("end")) setTimeout(() => console.log("END_RECORDING"), Number(q.get("end")) * 1000);
  }));
}, after);
</script></body></html>
"""

COLOUR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"></head><body style="margin: 0; height: 100vh"><script>
document.body.style.background = "#" + new URLSearchParams(location.search).get("c");
</script></body></html>
"""


# A custom template for an embedded room: every publisher side by side, over egresskit's
# /sdk/template.js; recording starts once two of them are playing; layout "speaker" (from
# UpdateLayout) shows the first alone.
TEMPLATE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
html, body { margin: 0; height: 100%; background: #000; overflow: hidden; }
#stage { display: flex; height: 100%; }
video { flex: 1; min-width: 0; height: 100%; object-fit: fill; }
body[data-layout="speaker"] video:not(:first-child) { display: none; }
</style></head><body><div id="stage"></div>
<script type="module">
const server = new URLSearchParams(location.search).get("url");
const { TemplateRoom, startRecording, onLayoutChanged } = await import(server + "/sdk/template.js");
const room = new TemplateRoom();
// "speaker" shows the first publisher alone
onLayoutChanged((layout) => { document.body.dataset.layout = layout; });
const playing = new Set();
let started = false;
room.onChange((people) => {
  const stage = document.getElementById("stage");
  stage.replaceChildren(...people.map((person) => {
    const video = document.createElement("video");
    video.autoplay = true;
    video.srcObject = person.stream;
    video.addEventListener("playing", () => {
      playing.add(person.identity);
      if (!started && playing.size >= 2) {
        started = true;
        requestAnimationFrame(() => requestAnimationFrame(startRecording));
      }
    });
    return video;
  }));
});
await room.connect();
</script></body></html>
"""


# The same with LiveKit's own libraries, for a LiveKit room: livekit-client and
# @livekit/egress-sdk from tests/node, served by the page server (no CDN).
LIVEKIT_TEMPLATE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
html, body { margin: 0; height: 100%; background: #000; overflow: hidden; }
#stage { display: flex; height: 100%; }
video { flex: 1; min-width: 0; height: 100%; object-fit: fill; }
body[data-layout="speaker"] video:not(:first-child) { display: none; }
</style></head><body><div id="stage"></div>
<script type="module">
import { Room, RoomEvent, Track } from "/lib/livekit-client.esm.mjs";
import EgressHelper from "/lib/egress-sdk.mjs";
const room = new Room({ adaptiveStream: false });
const stage = document.getElementById("stage");
const playing = new Set();
let started = false;
room.on(RoomEvent.TrackSubscribed, (track, publication, participant) => {
  const element = track.attach();
  if (track.kind !== Track.Kind.Video) {
    document.body.appendChild(element);
    return;
  }
  element.dataset.identity = participant.identity;
  element.addEventListener("playing", () => {
    playing.add(participant.identity);
    if (!started && playing.size >= 2) {
      started = true;
      requestAnimationFrame(() => requestAnimationFrame(() => EgressHelper.startRecording()));
    }
  });
  stage.appendChild(element);
  const videos = [...stage.children].sort((a, b) => a.dataset.identity < b.dataset.identity ? -1 : 1);
  stage.replaceChildren(...videos);
});
EgressHelper.onLayoutChanged((layout) => { document.body.dataset.layout = layout; });
EgressHelper.setRoom(room);
await room.connect(EgressHelper.getLiveKitURL(), EgressHelper.getAccessToken());
</script></body></html>
"""
NODE_MODULES = Path(__file__).with_name("node") / "node_modules"
LIVEKIT_CLIENT = NODE_MODULES / "livekit-client/dist/livekit-client.esm.mjs"
EGRESS_SDK = NODE_MODULES / "@livekit/egress-sdk/dist/index.js"


def egress_sdk_module() -> str:
    """@livekit/egress-sdk as an ES module: its CommonJS build, given livekit-client to require."""
    return (
        'import * as livekitClient from "/lib/livekit-client.esm.mjs";\n'
        "const module = { exports: {} };\nconst exports = module.exports;\n"
        'const require = (name) => { if (name === "livekit-client") return livekitClient; '
        'throw new Error("cannot require " + name); };\n'
        + EGRESS_SDK.read_text()
        + "\nexport default module.exports.default;\n"
    )


def read_counter(rgb: np.ndarray) -> int:
    """The counter drawn in a frame's top row (rgb array, height x width x 3)."""
    row = rgb[BLOCK // 2, : BITS * BLOCK].mean(axis=-1)
    value = 0
    for bit in range(BITS):
        value = value * 2 + (1 if row[bit * BLOCK + BLOCK // 2] > 128 else 0)
    return value


def _page(body: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html")

    return handler


def _script(body: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/javascript")

    return handler


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404, text="no such page")


@asynccontextmanager
async def page_server() -> AsyncIterator[TestServer]:
    """The test pages on a free port of 127.0.0.1."""
    app = web.Application()
    app.router.add_get("/counter", _page(COUNTER_PAGE))
    app.router.add_get("/signal", _page(SIGNAL_PAGE))
    app.router.add_get("/colour", _page(COLOUR_PAGE))
    app.router.add_get("/template", _page(TEMPLATE_PAGE))
    app.router.add_get("/missing", _missing)
    if LIVEKIT_CLIENT.exists() and EGRESS_SDK.exists():
        app.router.add_get("/livekit-template", _page(LIVEKIT_TEMPLATE_PAGE))
        app.router.add_get("/lib/livekit-client.esm.mjs", _script(LIVEKIT_CLIENT.read_text()))
        app.router.add_get("/lib/egress-sdk.mjs", _script(egress_sdk_module()))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def browser_leftovers() -> list[str]:
    """Processes a browser source started, and web egress directories, still there."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        # its helpers carry this marker; Chromium's children name the directory instead
        if cmdline and (b"EGRESSKIT_WEB_DIR=" in environ or b"/egresskit-web-" in cmdline):
            program = os.path.basename(cmdline.split(b"\0")[0].decode())
            found.append(f"{entry.name} {program}")
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    found += [str(p) for p in tmp.glob("egresskit-web-*")]
    return found
