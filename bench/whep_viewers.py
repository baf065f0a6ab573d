"""Cost of WHEP viewers in the service: passthrough, so they should cost next to nothing.

`egresskit serve --dev` runs as its own process. This process publishes one
pre-encoded 1280x720 H.264 track (2.5 Mbps, 30 fps; no encoding here) over
WHIP; a second process opens `--viewers` aiortc WHEP viewers of it, which
count encoded frames without decoding them. The service's CPU is measured
over `--seconds` in two phases:

  reference   the publisher only (WebRTC receive, no viewer)
  viewers     the same plus the viewers

and the script prints the viewers' share (viewers minus reference, both
phases in the same run) in cores, against the issue's budget of 0.05 core
for 10 viewers, and the ratio to the reference (what receiving the one
track costs). `--runs` repeats the whole run (a fresh service each time);
the last headline gives the medians, with the load average (`uptime`)
seen at each run's end.

A figure counts only when every viewer received every frame the publisher
sent during the measurement and no viewer's connection was lost: the
headlines say how many frames were lost per viewer (gaps in the RTP
timestamps it received) and how many connections failed, and a run with
either exits with status 1. They also say how many frames were late: sent
during the count but not yet received when it ended, because the viewers'
process lagged (on a busy machine it does; its own CPU is printed on
stderr). A run where the service used less CPU with the viewers than
without fell behind itself and does not count either; the median is over
the runs that count.

Run: python bench/whep_viewers.py [--viewers 10] [--seconds 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
from dataclasses import dataclass
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
    since then and those missing between them (gaps in their RTP timestamps),
    and how many connections failed or closed on the way.
    """
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from egresskit.pipeline.link import EOS
    from egresskit.rooms.encoded import EncodedReceiver
    from egresskit.rooms.udp import enlarge_receive_buffers

    token = viewer_token()
    counts, missing = [0] * count, [0] * count
    lost_connections: set[int] = set()

    def watch_connection(pc) -> None:
        if pc.connectionState in ("failed", "closed"):
            lost_connections.add(id(pc))

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
            pc.on("connectionstatechange", lambda pc=pc: watch_connection(pc))
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
    result = {"received": counts, "missing": missing, "lost_connections": len(lost_connections)}
    print(json.dumps(result), flush=True)
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


async def published(base: str) -> None:
    """Wait until the service lists the publisher's video track (a busy machine takes a while)."""
    token = viewer_token()
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            async with http.get(
                f"{base}/whep/{ROOM}", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                if response.status == 200 and any(
                    t["kind"] == "video" for p in await response.json() for t in p["tracks"]
                ):
                    return
            await asyncio.sleep(0.1)
    raise SystemExit("the service never listed the publisher's video track")


def viewer_token() -> str:
    return create_token(
        DEV_API_KEY,
        DEV_API_SECRET,
        identity="bench-viewer",
        video={"roomJoin": True, "room": ROOM, "canSubscribe": True},
    )


async def measure(process: psutil.Process, seconds: float) -> float:
    """Cores the service used over `seconds`."""
    before = service_cpu(process)
    await asyncio.sleep(seconds)
    return (service_cpu(process) - before) / seconds


@dataclass
class Run:
    """One run's figures (cores are process CPU time over wall time)."""

    reference: float
    with_viewers: float
    sent: int  # frames sent to each viewer during the count
    received: list[int]
    missing: list[int]
    lost_connections: int
    load: float  # 1-minute load average at the end

    @property
    def added(self) -> float:
        return self.with_viewers - self.reference

    @property
    def lost(self) -> int:
        return sum(self.missing) + self.lost_connections

    @property
    def counts(self) -> bool:
        """No drops, and the service did not fall behind (on a busy machine it can: it then
        used less CPU with the viewers than without, and the viewers' frames came late)."""
        return not self.lost and self.added > 0

    def late(self) -> int:
        """Frames still on their way when the count ended (one at either end may fall either side)."""
        return sum(
            max(0, self.sent - n - m - BOUNDARY_FRAMES)
            for n, m in zip(self.received, self.missing, strict=True)
        )

    def drops(self) -> str:
        return (
            f"drops: {sum(self.missing)} of {self.sent * len(self.received)} frames lost "
            f"(per viewer {' '.join(map(str, self.missing))}), "
            f"{self.lost_connections} connections lost; {self.late()} frames late"
        )


async def run(viewers: int, seconds: float) -> Run:
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
        await published(base)
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
    return Run(
        reference=reference,
        with_viewers=with_viewers,
        sent=sent,
        received=counted["received"],
        missing=counted["missing"],
        lost_connections=counted["lost_connections"],
        load=os.getloadavg()[0],
    )


def report(index: int, result: Run, viewers: int) -> None:
    verdict = (
        ""
        if result.counts
        else " (does not count: the run had drops)"
        if result.lost
        else " (does not count: the service fell behind, less CPU with viewers than without)"
    )
    print(
        f"HEADLINE run {index}{verdict}: {result.added:.3f} core added by {viewers} viewers "
        f"(load {result.load:.1f}); {result.drops()}"
    )
    print(f"  frames received per viewer  {' '.join(map(str, result.received))}")
    print(f"  service, publisher only     {result.reference:.3f} core (reference)")
    print(f"  service, {viewers:2d} WHEP viewers    {result.with_viewers:.3f} core")
    print(f"  ratio to reference          {result.with_viewers / result.reference:.2f}")


def summary(results: list[Run], viewers: int) -> None:
    """The medians over the runs that count, against the budget."""
    counted = [r for r in results if r.counts]
    if not counted:
        print(f"HEADLINE none of {len(results)} runs counts (see each run's headline)")
        return
    added = statistics.median(r.added for r in counted)
    lost = sum(sum(r.missing) for r in results)
    print(
        f"HEADLINE median of {len(counted)} of {len(results)} runs: "
        f"{added:.3f} core added by {viewers} viewers, "
        f"{added / viewers:.4f} per viewer; ratio to budget ({BUDGET_CORES} core) "
        f"{added / BUDGET_CORES:.2f}; runs {' '.join(f'{r.added:.3f}' for r in results)}; "
        f"load {' '.join(f'{r.load:.1f}' for r in results)}; drops: {lost} frames lost, "
        f"{sum(r.lost_connections for r in results)} connections lost, "
        f"{sum(r.late() for r in results)} frames late"
    )
    print(
        f"  reference (publisher only) median {statistics.median(r.reference for r in counted):.3f}"
        f" core; with viewers median {statistics.median(r.with_viewers for r in counted):.3f} core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(viewers_child(args.child, args.viewers))
        return
    results = []
    for index in range(1, args.runs + 1):
        results.append(asyncio.run(run(args.viewers, args.seconds)))
        report(index, results[-1], args.viewers)
    summary(results, args.viewers)
    if any(r.lost for r in results) or not any(r.counts for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
