"""Web egress CPU against the ffmpeg CLI capturing the same display, and time to first frame.

One run, alternating: for each round, a busy page (300 canvas balls, CSS
animations, a 440 Hz WebAudio tone) is opened in a fresh PageBrowser
(Chromium + Xvfb + PulseAudio) and recorded for --seconds, once by
egresskit's web graph (x11grab in-process, parec, one x264 veryfast encode
to MP4) and once by `ffmpeg -f x11grab ... -f pulse ... -c:v libx264
-preset veryfast`. CPU is process CPU time (user + system) of everything
each recording runs: Chromium and its children, Xvfb, PulseAudio, and
egresskit's own process (its capture, encode and mux threads, measured as
this process's CPU over the recording) or the ffmpeg process. The browser's
start is left out of both: only the recording window is counted. On a busy
machine the totals follow what each side is given more than what it needs,
so the run ends with the encoders alone on the same 150 grabbed frames.

    PYTHONPATH=$PWD python bench/web_egress.py --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import psutil
from aiohttp import web
from av.video.frame import PictureType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from egresskit.egress.graphs import FileOutput, web_graph  # noqa: E402
from egresskit.stages.encoder import VideoEncoder, VideoEncoding  # noqa: E402
from egresskit.web.browser import PageBrowser  # noqa: E402
from egresskit.web.processes import owned_by  # noqa: E402

BUSY_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
html, body { margin: 0; background: #123; overflow: hidden; }
.spin { position: absolute; width: 120px; height: 120px; background: #e83;
        animation: spin 2s linear infinite; }
@keyframes spin { from { transform: rotate(0deg); } to { transform: rotate(360deg); } }
</style></head><body>
<canvas id="c" width="1280" height="720"></canvas>
<div class="spin" style="left: 100px; top: 100px"></div>
<div class="spin" style="left: 1000px; top: 450px"></div>
<script>
const g = document.getElementById("c").getContext("2d");
const balls = Array.from({length: 300}, () => ({
  x: Math.random() * 1280, y: Math.random() * 720,
  dx: Math.random() * 6 - 3, dy: Math.random() * 6 - 3,
  c: `hsl(${Math.random() * 360}, 80%, 60%)`,
}));
function draw() {
  g.fillStyle = "#123"; g.fillRect(0, 0, 1280, 720);
  for (const b of balls) {
    b.x = (b.x + b.dx + 1280) % 1280; b.y = (b.y + b.dy + 720) % 720;
    g.fillStyle = b.c; g.beginPath(); g.arc(b.x, b.y, 12, 0, 6.283); g.fill();
  }
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);
const audio = new AudioContext();
const tone = audio.createOscillator();
tone.frequency.value = 440;
tone.connect(audio.destination);
tone.start();
</script></body></html>
"""


def helpers_cpu(work_dir: str) -> float:
    """CPU seconds of every live process a browser source started (Chromium's children too)."""
    total = 0.0
    for pid in owned_by(work_dir):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def record_egresskit(url: str, seconds: float, out: Path) -> tuple[float, float, float, int]:
    """(total cores, cores of egresskit's own process, seconds from start to the first frame,
    frame slots of the measured window filled by a repeat or a dropped grab)."""
    graph, stages = web_graph(url, [FileOutput(out)], name="bench")
    source = stages.source
    started = time.monotonic()
    await graph.start()
    while source.first_frame_s is None:
        await asyncio.sleep(0.05)
        if graph.state.ended:
            raise RuntimeError(f"web graph ended: {graph.error}")
    first_frame = time.monotonic() - started
    work = str(source.browser.work.path)
    await asyncio.sleep(1.0)  # the page settles, as for ffmpeg below
    helpers, own = helpers_cpu(work), own_cpu()
    missed = source.frames_repeated + source.frames_dropped
    await asyncio.sleep(seconds)
    helpers, own = helpers_cpu(work) - helpers, own_cpu() - own
    missed = source.frames_repeated + source.frames_dropped - missed
    await graph.stop()
    return (helpers + own) / seconds, own / seconds, first_frame, missed


async def record_ffmpeg(url: str, seconds: float, out: Path) -> tuple[float, float]:
    """(total cores, cores of the ffmpeg process)."""
    browser = PageBrowser(url, 1280, 720)
    await browser.open()
    try:
        assert browser.display is not None and browser.sink is not None
        env = dict(os.environ, PULSE_SERVER=browser.sink.server)
        ffmpeg = await asyncio.create_subprocess_exec(
                "ffmpeg", "-loglevel", "error", "-y",
                "-f", "x11grab", "-framerate", "30", "-video_size", "1280x720",
                "-draw_mouse", "0", "-i", browser.display.name,
                "-f", "pulse", "-i", "egress.monitor",
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-b:v", "3000k", "-c:a", "aac", "-b:a", "128k", str(out),
            env=env,
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip
        proc = psutil.Process(ffmpeg.pid)
        work = str(browser.work.path) if browser.work else ""
        await asyncio.sleep(1.0)
        t = proc.cpu_times()
        helpers, own = helpers_cpu(work), t.user + t.system
        await asyncio.sleep(seconds)
        t = proc.cpu_times()
        helpers, own = helpers_cpu(work) - helpers, t.user + t.system - own
        await asyncio.wait_for(ffmpeg.communicate(b"q"), 30)
    finally:
        await browser.close()
    return (helpers + own) / seconds, own / seconds


def grab(display: str, count: int) -> list[av.VideoFrame]:
    container = av.open(
        display,
        format="x11grab",
        options={"framerate": "30", "video_size": "1280x720", "draw_mouse": "0"},
    )
    frames = []
    for frame in container.decode(video=0):
        frames.append(frame.reformat(format="yuv420p"))
        if len(frames) >= count:
            break
    container.close()
    return frames


def encode_ms(context: av.CodecContext, frames: list[av.VideoFrame], prepare=None) -> float:
    """CPU milliseconds per frame to encode `frames` (and flush) with `context`."""
    start = own_cpu()
    for index, frame in enumerate(frames):
        frame.pts = index
        frame.time_base = Fraction(1, 30)
        frame.pict_type = PictureType.NONE
        if prepare is not None:
            prepare(frame)
        context.encode(frame)
    context.encode(None)
    return (own_cpu() - start) / len(frames) * 1000


async def encoders_on_the_same_frames(url: str, count: int = 150) -> tuple[float, float]:
    """x264 ms per frame: egresskit's VideoEncoder settings, the ffmpeg CLI's veryfast defaults."""
    browser = PageBrowser(url, 1280, 720)
    await browser.open()
    try:
        assert browser.display is not None
        await asyncio.sleep(1.0)
        frames = await asyncio.to_thread(grab, browser.display.name, count)
    finally:
        await browser.close()
    ours = VideoEncoder(VideoEncoding())
    cli = av.CodecContext.create("libx264", "w")
    cli.width, cli.height, cli.pix_fmt = 1280, 720, "yuv420p"
    cli.time_base, cli.bit_rate, cli.options = Fraction(1, 30), 3_000_000, {"preset": "veryfast"}
    cli.open()
    return encode_ms(ours.context, frames, ours._prepare), encode_ms(cli, frames)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text=BUSY_PAGE, content_type="text/html"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/"
    ours, theirs, ours_capture, theirs_capture, first_frames = [], [], [], [], []
    missed_frames = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            total, capture, first, missed = await record_egresskit(
                url, args.seconds, Path(tmp) / f"ek{round_}.mp4"
            )
            ours.append(total)
            ours_capture.append(capture)
            first_frames.append(first)
            missed_frames.append(missed)
            total, capture = await record_ffmpeg(url, args.seconds, Path(tmp) / f"ff{round_}.mp4")
            theirs.append(total)
            theirs_capture.append(capture)
            print(
                f"round {round_}: total egresskit {ours[-1]:.2f} / ffmpeg CLI {theirs[-1]:.2f} "
                f"cores; capture+encode process {ours_capture[-1]:.2f} / {theirs_capture[-1]:.2f}; "
                f"first frame {first:.2f} s; egresskit grabs repeated or dropped {missed} of "
                f"{round(args.seconds * 30)} frames; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    ours_x264, cli_x264 = await encoders_on_the_same_frames(url)
    await runner.cleanup()
    median = statistics.median
    print(
        f"HEADLINE drops: {sum(missed_frames)} of {round(args.rounds * args.seconds * 30)} "
        f"frame slots repeated or dropped by egresskit's grab; "
        f"median total CPU (Chromium + Xvfb + pulse + capture): egresskit {median(ours):.2f}, "
        f"ffmpeg CLI {median(theirs):.2f} cores, ratio {median(ours) / median(theirs):.2f} "
        f"(target <= 1.0); capture+encode process alone: {median(ours_capture):.2f} vs "
        f"{median(theirs_capture):.2f}, ratio {median(ours_capture) / median(theirs_capture):.2f}; "
        f"time to first frame median {median(first_frames):.2f} s; x264 on the same 150 "
        f"grabbed frames: egresskit {ours_x264:.1f} ms/frame, ffmpeg CLI veryfast "
        f"{cli_x264:.1f}, ratio {ours_x264 / cli_x264:.2f}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
