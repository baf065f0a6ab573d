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

Run: python bench/whep_viewers.py [--viewers 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def viewers_child(base: str, count: int) -> None:
    """Open `count` WHEP viewers; print "ready" once each got frames; run until SIGTERM."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from egresskit.pipeline.link import EOS
    from egresskit.rooms.encoded import EncodedReceiver

    token = create_token(
        DEV_API_KEY,
        DEV_API_SECRET,
        identity="bench-viewer",
        video={"roomJoin": True, "room": ROOM, "canSubscribe": True},
    )
    counts = [0] * count
    got_frames = [asyncio.Event() for _ in range(count)]
    pcs, taps = [], []

    async def consume(index: int, link) -> None:
        while await link.get() is not EOS:
            counts[index] += 1
            got_frames[index].set()

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
            pcs.append(pc)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in got_frames)), 60)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"frames {sum(counts)} min {min(counts)}", flush=True)
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
        with_viewers = await measure(process, seconds)
        viewer_proc.send_signal(signal.SIGTERM)
        summary = (await asyncio.wait_for(viewer_proc.stdout.readline(), 30)).decode().strip()
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
    print(f"service, publisher only     {reference:.3f} core (reference)")
    print(f"service, {viewers:2d} WHEP viewers    {with_viewers:.3f} core ({summary})")
    print(f"added by {viewers} viewers        {added:.3f} core, {added / viewers:.4f} per viewer")
    print(f"ratio to budget ({BUDGET_CORES} core) {added / BUDGET_CORES:.2f}")
    print(f"ratio to reference          {with_viewers / reference:.2f}")


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
