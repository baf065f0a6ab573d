"""Live 2x2 room composite: what the recording process costs while people publish.

Four aiortc publishers run in one process and join over WHIP on 127.0.0.1,
each sending one of composite.py's 640x360@30 VP8 files as it is (no
re-encode, so the grid shows the same pictures as offline) and an Opus
tone; another
process hosts the WHIP endpoint and records the room's composite (1280x720@30
H.264 veryfast + AAC, MP4) for `--seconds`. Printed per round and as the
median of the rounds: the recording process's CPU (user + sys, every thread:
WebRTC receive and decode included) per media second, and its peak RSS.
The publishers' CPU is shown for context. CPU seconds stretch when the
machine is shared, so each round also measures a reference in the same run:
the ffmpeg CLI making the same recording from the same files offline (VP8
decode + xstack + libx264, and the publishers' four Opus tones decoded, mixed
by amix and encoded to AAC; no WebRTC), and prints the ratio to it.

A figure counts only when its run did the whole work: each round's
headline says what was dropped (source frames that never reached the
recording, composite frames short of 30 per second, frames dropped on the
graph's links or subscriptions, publishers lost). A round with drops
reports its cost scaled to every source frame and is marked; the median
line says how many rounds had drops, and the script then exits with 1.

Run: python bench/live_composite.py [--rounds 3] [--seconds 30] [--publishers 4] [--threads]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time

import psutil
from _common import (
    OUT_DIR,
    TESTS_DIR,
    CpuTimes,
    ThreadCpu,
    median,
    opus_inputs,
    peak_rss_mb,
    print_threads,
    spread,
    vp8_inputs,
)
from aiohttp import web
from aiortc.contrib.media import MediaPlayer
from composite import ffmpeg_grid
from livekit.protocol import models

from egresskit import FileOutput, RoomManager, composite_graph, whip_app
from egresskit.stages.encoder import VideoEncoding

sys.path.insert(0, str(TESTS_DIR))
from publishers import (  # noqa: E402
    SineAudioTrack,
    make_publisher_token,
    whip_publish,
)

LOOPBACK = "127.0.0.1"
ROOM = "bench"
API_KEY = "benchkey"
API_SECRET = "bench-secret-long-enough-for-hs256"
INPUT_SECONDS = 60  # the files loop if a recording is longer
JOIN_TIMEOUT_S = 60.0
WARM_UP_S = 2.0  # first key frames and decoder start-up are not part of the measure
SOURCE_FPS = 30
# Frames a track may miss at each end of the measured interval without counting as lost.
BOUNDARY_FRAMES = 2


# --- the recording process ----------------------------------------------------------------


async def record(seconds: float, publishers: int, by_thread: bool = False) -> dict:
    rss_imported = psutil.Process().memory_info().rss / 2**20
    rooms = RoomManager()
    app = web.Application()
    app.add_subapp("/whip", whip_app(rooms, {API_KEY: API_SECRET}, ice_addresses=[LOOPBACK]))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening http://{host}:{port}", flush=True)
    room = rooms.get_or_create(ROOM)
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while sum(t.kind == models.TrackType.VIDEO for t in room.tracks()) < publishers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{publishers} publishers did not join in {JOIN_TIMEOUT_S} s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(WARM_UP_S)
        path = OUT_DIR / "live-composite.mp4"
        videos = [t for t in room.tracks() if t.kind == models.TrackType.VIDEO]
        received0 = sum(t.encoded.frames_received for t in videos)
        graph, stages = composite_graph(room, [FileOutput(path)], name="bench-live")
        rss_joined = psutil.Process().memory_info().rss / 2**20
        threads = ThreadCpu()
        if by_thread:
            threads.start()
        before = CpuTimes.now()
        await graph.start()
        await asyncio.sleep(seconds)
        media_s = graph.clock.now()
        received = sum(t.encoded.frames_received for t in videos) - received0
        connected = sum(t.kind == models.TrackType.VIDEO for t in room.tracks())
        state = await graph.stop()
        cpu = (CpuTimes.now() - before).own
        by_thread_cpu = threads.stop() if by_thread else {}
        if graph.error is not None:
            raise RuntimeError(f"graph ended {state.value}: {graph.error}")
        dropped = {name: link["dropped"] for name, link in graph.stats()["links"].items()}
        return {
            "cpu_s": cpu,
            "media_s": media_s,
            "peak_rss_mb": peak_rss_mb(),
            "rss_imported_mb": rss_imported,
            "rss_before_mb": rss_joined,
            "frames": stages.compositor.frames_out if stages.compositor else 0,
            "received": received,
            "lost_publishers": publishers - connected,
            "dropped": {name: n for name, n in dropped.items() if n},
            "subscriber": stages.subscriber.stats(),
            "threads": by_thread_cpu,
        }
    finally:
        await rooms.close()
        await runner.cleanup()


# --- the publishing process ---------------------------------------------------------------


async def publish(url: str, publishers: int, seconds: int) -> None:
    sessions = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        files = vp8_inputs(seconds)
        for index in range(publishers):
            identity = f"publisher-{index}"
            token = make_publisher_token(API_KEY, API_SECRET, ROOM, identity)
            camera = MediaPlayer(str(files[index % len(files)]), loop=True, decode=False)
            tracks = [camera.video, SineAudioTrack(tone_hz(index))]
            sessions.append(await whip_publish(url, ROOM, token, tracks))
        print("published", flush=True)
        await stop.wait()
    finally:
        for session in sessions:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 10)


def tone_hz(index: int) -> int:
    """The frequency publisher `index` sends (and the reference mixes)."""
    return 300 + 200 * index


# --- the orchestrator ---------------------------------------------------------------------


def run_round(seconds: float, publishers: int, by_thread: bool) -> tuple[dict, float]:
    """One recording with fresh processes; returns its report and the publishers' CPU."""
    me = [sys.executable, __file__, "--seconds", str(seconds), "--publishers", str(publishers)]
    if by_thread:
        me.append("--threads")
    egress = subprocess.Popen([*me, "--role", "egress"], stdout=subprocess.PIPE, text=True)
    publisher = None
    try:
        assert egress.stdout is not None
        line = egress.stdout.readline().split()
        if line[:1] != ["listening"]:
            raise RuntimeError(f"the recording process said {line!r}")
        publisher = subprocess.Popen([*me, "--role", "publish", "--url", line[1]])
        out, _ = egress.communicate(timeout=seconds + JOIN_TIMEOUT_S + 60)
        if egress.returncode != 0:
            raise RuntimeError(f"the recording process failed ({egress.returncode})")
        report = json.loads(out.strip().splitlines()[-1])
        times = psutil.Process(publisher.pid).cpu_times()
        publishers_cpu = times.user + times.system
    finally:
        for process in (publisher, egress):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return report, publishers_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--threads", action="store_true", help="recording CPU by thread")
    parser.add_argument("--role", choices=["egress", "publish"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "egress":
        report = asyncio.run(record(args.seconds, args.publishers, args.threads))
        print(json.dumps(report), flush=True)
        return
    if args.role == "publish":
        asyncio.run(publish(args.url, args.publishers, INPUT_SECONDS))
        return

    inputs = vp8_inputs(INPUT_SECONDS)  # made once, before anything is measured
    tones = opus_inputs(INPUT_SECONDS, [tone_hz(i) for i in range(len(inputs))])
    cores, rss, references, dropping = [], [], [], 0
    for round_ in range(1, args.rounds + 1):
        report, publishers_cpu = run_round(args.seconds, args.publishers, args.threads)
        core = report["cpu_s"] / report["media_s"]
        video_s = report["frames"] / 30
        drops = round_drops(report, args.publishers)
        before = CpuTimes.now()
        ffmpeg_grid(
            inputs, OUT_DIR / "live-reference.mp4", VideoEncoding(), args.seconds, audio=tones
        )
        reference = (CpuTimes.now() - before).children / args.seconds
        references.append(reference)
        if drops:
            dropping += 1
            # scaled to every source frame arriving (the whole cost, an upper bound)
            sent = SOURCE_FPS * report["media_s"] * args.publishers
            core *= sent / max(1, report["received"])
            print(
                f"round {round_} HEADLINE (does not count: drops) ratio {core / reference:.2f} "
                f"scaled, {core:.3f} core per media second scaled to every frame; drops: {drops}"
            )
        else:
            print(
                f"round {round_} HEADLINE ratio {core / reference:.2f}, {core:.3f} core per "
                "media second; drops: none"
            )
        cores.append(core)
        rss.append(report["peak_rss_mb"])
        print(
            f"round {round_}: {core:.3f} core per media second, peak RSS "
            f"{report['peak_rss_mb']:.0f} MB (after imports {report['rss_imported_mb']:.0f}, "
            f"with publishers joined {report['rss_before_mb']:.0f}); {report['frames']} frames "
            f"({video_s:.1f} s of video) in {report['media_s']:.1f} s, drops "
            f"{report['dropped'] or 'none'} {report['subscriber'] or ''}; publishers process "
            f"{publishers_cpu:.0f} cpu s; ffmpeg reference {reference:.3f} core "
            f"(ratio {core / reference:.2f})",
            flush=True,
        )
        if report["threads"]:
            print_threads(report["threads"], report["media_s"])
    print(f"\n{args.publishers} WHIP publishers, 2x2 1280x720@30 H.264 veryfast + AAC to MP4")
    print(f"recording process: {median(cores):.3f} core per media second (runs: {spread(cores)})")
    print(f"peak RSS: {median(rss):.0f} MB (runs: {spread(rss)})")
    ratios = [c / r for c, r in zip(cores, references, strict=True)]
    print(
        f"ffmpeg CLI offline reference (same grid and sound, same files): {median(references):.3f} core; "
        f"ratio recording process / reference {median(ratios):.2f} (runs: {spread(ratios)})"
    )
    print("targets: <= 0.6 core, <= 200 MB")
    if dropping:
        print(
            f"{dropping} of {args.rounds} rounds had drops: their figures are scaled, not measured"
        )
        raise SystemExit(1)


def round_drops(report: dict, publishers: int) -> str:
    """What a round failed to do, or '' when it did the whole work."""
    media_s = report["media_s"]
    drops = []
    sent = SOURCE_FPS * media_s * publishers
    lost = round(sent - report["received"]) - BOUNDARY_FRAMES * publishers
    if lost > 0:
        drops.append(f"{lost} of {sent:.0f} source frames not received")
    short = round(media_s * 30) - report["frames"]
    if short > 1:
        drops.append(f"{short} composite frames short")
    dropped = sum(report["dropped"].values()) + sum(report["subscriber"].values())
    if dropped:
        drops.append(f"{dropped} frames dropped in the graph")
    if report["lost_publishers"]:
        drops.append(f"{report['lost_publishers']} publishers lost")
    return ", ".join(drops)


if __name__ == "__main__":
    main()
