"""Cost of WHEP viewers in the service: passthrough, so they should cost next to nothing.

`egresskit serve --dev` runs as its own process. This process publishes one
pre-encoded 1280x720 H.264 track (2.5 Mbps, 30 fps; no encoding here) over
WHIP; a second process opens `--viewers` aiortc WHEP viewers of it, which
count encoded frames without decoding them. The service's CPU is measured
over `--seconds` in two phases:

  reference   the publisher only (WebRTC receive, no viewer)
  viewers     the same plus the viewers

and the script prints the viewers' share (viewers minus reference) in
cores, against the issue's budget of 0.05 core for 10 viewers, and the
ratio to the reference (what receiving the one track costs).

A figure counts only when every viewer received every frame the publisher
sent during the measurement: the headline says how many were lost (gaps in
the RTP timestamps a viewer received), and a run with drops exits with
status 1. It also says how many frames were late: sent during the count but
not yet received when it ended, because the viewers' process lagged (on a
busy machine it does; its own CPU is printed on stderr).

Run: python bench/whep_viewers.py [--viewers 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from _common import OUT_DIR  # noqa: E402
from h264_source import H264PacketTrack, make_h264_file, read_h264_packets  # noqa: E402
from publishers import make_publisher_token, whip_publish  # noqa: E402

from egresskit.service.config import DEV_API_KEY, DEV_API_SECRET  # noqa: E402
from egresskit.tokens import create_token  # noqa: E402

ROOM = "bench"
BUDGET_CORES = 0.05  # for 10 viewers of one 720p track (issue 18)
BOUNDARY_FRAMES = 2
FRAME_TICKS = 90_000 // 30  # RTP timestamp step between frames of the 30 fps source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def viewers_child(base: str, count: int) -> None:
    """Open `count` WHEP viewers; print "ready" once each got frames; run until SIGTERM.

    SIGUSR1 starts the count; SIGTERM prints, per viewer, the frames received
    since then and those missing between them (gaps in their RTP timestamps).
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from egresskit.pipeline.link import EOS
    from egresskit.rooms.encoded import EncodedReceiver
    from egresskit.rooms.udp import enlarge_receive_buffers

    token = create_token(
        DEV_API_KEY,
        DEV_API_SECRET,
        identity="bench-viewer",
        video={"roomJoin": True, "room": ROOM, "canSubscribe": True},
    )
    counts, missing = [0] * count, [0] * count
    got_frames = [asyncio.Event() for _ in range(count)]
    pcs, taps = [], []
    start, stop = asyncio.Event(), asyncio.Event()

    async def consume(index: int, link) -> None:
        previous = None
        while (frame := await link.get()) is not EOS:
            got_frames[index].set()
            if start.is_set() and not stop.is_set():
                counts[index] += 1
                if previous is not None:
                    missing[index] += max(0, round((frame.timestamp - previous) / FRAME_TICKS) - 1)
            previous = frame.timestamp

    async with aiohttp.ClientSession() as http:
        for index in range(count):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            transceiver = pc.addTransceiver("video", direction="recvonly")
            tap = EncodedReceiver(transceiver.receiver)  # counts frames, never decodes
            taps.append(asyncio.create_task(consume(index, tap.subscribe())))
            await pc.setLocalDescription(await pc.createOffer())
            async with http.post(
                f"{base}/whep/{ROOM}",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
            ) as response:
                answer = await response.text()
                if response.status != 201:
                    raise SystemExit(f"WHEP answered {response.status}: {answer}")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            # as the service does for WHIP: a key frame (about 100 packets) arrives at once
            enlarge_receive_buffers(pc)
            pcs.append(pc)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in got_frames)), 60)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, start.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await start.wait()
    process = psutil.Process()
    cpu0, wall0 = service_cpu(process), loop.time()
    await stop.wait()
    cores = (service_cpu(process) - cpu0) / (loop.time() - wall0)
    print(json.dumps({"received": counts, "missing": missing}), flush=True)
    lost = 0
    for pc in pcs:
        for stats in (await pc.getStats()).values():
            lost += getattr(stats, "packetsLost", 0) if stats.type == "inbound-rtp" else 0
    print(f"viewer process {cores:.2f} core, {lost} RTP packets lost", file=sys.stderr, flush=True)
    for pc in pcs:
        await pc.close()


def service_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def measure(process: psutil.Process, seconds: float) -> float:
    """Cores the service used over `seconds`."""
    before = service_cpu(process)
    await asyncio.sleep(seconds)
    return (service_cpu(process) - before) / seconds


async def run(viewers: int, seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="whep-bench-"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    source = OUT_DIR / "input-720p-h264-5s.h264"
    if not source.exists():
        print(f"making {source.name} (once)", file=sys.stderr, flush=True)
        make_h264_file(source, seconds=5, width=1280, height=720, bitrate_kbps=2500)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    service = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "egresskit", "serve", "--dev", "--port", str(port),
        "--output-dir", str(work / "out"), "--log-level", "warning",
        env=env, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    viewer_proc = None
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        track = H264PacketTrack(read_h264_packets(source), loop=True)
        token = make_publisher_token(DEV_API_KEY, DEV_API_SECRET, ROOM, "publisher")
        publisher = await whip_publish(base, ROOM, token, [track], video_codec="video/H264")
        track.start()
        print("publishing; measuring the reference", file=sys.stderr, flush=True)
        process = psutil.Process(service.pid)
        await asyncio.sleep(3)
        reference = await measure(process, seconds)

        viewer_proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", base, "--viewers", str(viewers),
            env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        line = await asyncio.wait_for(viewer_proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise SystemExit(f"viewers did not start: {line!r}")
        await asyncio.sleep(2)
        viewer_proc.send_signal(signal.SIGUSR1)
        sent0 = track.sent
        with_viewers = await measure(process, seconds)
        sent = track.sent - sent0
        viewer_proc.send_signal(signal.SIGTERM)
        counted = json.loads(await asyncio.wait_for(viewer_proc.stdout.readline(), 30))
        await publisher.close()
    finally:
        for proc in (viewer_proc, service):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
    added = with_viewers - reference
    received, lost = counted["received"], sum(counted["missing"])
    # still on their way when the count ended (a frame at either end may fall either side)
    late = sum(
        max(0, sent - n - m - BOUNDARY_FRAMES)
        for n, m in zip(received, counted["missing"], strict=True)
    )
    drops = (
        f"drops: {lost} of {sent * viewers} frames lost ({sent} sent to each viewer); "
        f"{late} late (received after the count ended)"
    )
    verdict = "" if not lost else " (does not count: the run had drops)"
    print(f"HEADLINE{verdict} {added:.3f} core added by {viewers} viewers; {drops}")
    print(f"frames received per viewer  {' '.join(map(str, received))}")
    print(f"service, publisher only     {reference:.3f} core (reference)")
    print(f"service, {viewers:2d} WHEP viewers    {with_viewers:.3f} core")
    print(f"added by {viewers} viewers        {added:.3f} core, {added / viewers:.4f} per viewer")
    print(f"ratio to budget ({BUDGET_CORES} core) {added / BUDGET_CORES:.2f}")
    print(f"ratio to reference          {with_viewers / reference:.2f}")
    if lost:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(viewers_child(args.child, args.viewers))
    else:
        asyncio.run(run(args.viewers, args.seconds))


if __name__ == "__main__":
    main()
