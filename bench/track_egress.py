"""Cost of track egress without transcoding: CPU and memory per recorded track.

Publishers run in another process and send pre-encoded H.264 (1 Mbps,
640x360, 30 fps) over WHIP on 127.0.0.1. This process runs the WHIP
endpoint and one passthrough track egress per publisher, and measures
itself in three phases of `--seconds` each:

  idle     the room with every publisher connected (WebRTC receive only)
  egress   the same plus one track egress per track, writing MP4 files

and prints CPU (cores) and RSS per track, the egress's own share (egress
minus idle), and ratios against the receive-only reference and against the
0.5 core LiveKit reserves per track egress.

A figure counts only when the run did the whole work: the headline says
how many frames are missing from the files (gaps in their timestamps) and
how many egresses ended early. A run with drops prints the cost scaled to
every frame arriving as its headline instead, says the run does not count,
and exits with status 1. Frames sent during the measurement but written
only after it (the process lagging behind, on a busy machine) are counted
apart as late, and the headline is then scaled to every frame sent.

Run: python bench/track_egress.py [--tracks 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _common import TESTS_DIR, missing_packets
from aiohttp import web

sys.path.insert(0, str(TESTS_DIR))

from h264_source import H264PacketTrack, make_h264_file, read_h264_packets  # noqa: E402
from publishers import (  # noqa: E402
    WHIP_API_KEY,
    WHIP_API_SECRET,
    make_publisher_token,
    whip_publish,
)

from egresskit.egress.track_graphs import track_graph  # noqa: E402
from egresskit.pipeline import GraphState  # noqa: E402
from egresskit.rooms import RoomManager, whip_app  # noqa: E402

ROOM = "bench"
LIVEKIT_RESERVATION_CORES = 0.5
MB = 1024 * 1024
FPS = 30
# Frames a track may miss at each end of the measured interval without counting as lost.
BOUNDARY_FRAMES = 2


# --- the publishing process ----------------------------------------------------------------


async def publish(url: str, count: int, source: Path) -> None:
    """`count` WHIP sessions sending the same pre-encoded packets in a loop, until SIGTERM."""
    packets = read_h264_packets(source)
    sessions, tracks = [], []
    for index in range(count):
        token = make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, ROOM, f"pub{index:03d}")
        tracks.append(H264PacketTrack(packets, loop=True))
        sessions.append(await whip_publish(url, ROOM, token, tracks[-1:], video_codec="video/H264"))
    # Media flows once every connection is set up, so handshakes do not compete with it.
    await asyncio.sleep(2 + count / 10)
    for track in tracks:
        track.start()
    print("published", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    process, wall0 = psutil.Process(), time.monotonic()
    cpu0 = sum(process.cpu_times()[:2])
    await stop.wait()
    cores = (sum(process.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
    sent = sum(track.sent for track in tracks)
    print(
        f"publisher process          {cores:.2f} core sending, {sent} packets "
        f"({sent / count / (time.monotonic() - wall0):.1f} per track per s; 30 wanted)",
        file=sys.stderr,
    )
    for session in sessions:
        await session.pc.close()


# --- the egress process --------------------------------------------------------------------


class Meter:
    """CPU (cores) and RSS of this process over an interval."""

    def __init__(self) -> None:
        self.process = psutil.Process()

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    async def measure(self, seconds: float) -> tuple[float, int]:
        cpu0, wall0 = self._cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        cores = (self._cpu() - cpu0) / (time.monotonic() - wall0)
        return cores, self.process.memory_info().rss


async def wait_for_tracks(rooms: RoomManager, count: int, timeout: float) -> list:
    """The published tracks once all `count` are there, or whatever is there after `timeout`."""
    deadline = time.monotonic() + timeout
    tracks: list = []
    while time.monotonic() < deadline:
        room = rooms.get(ROOM)
        tracks = room.tracks() if room is not None else []
        if len(tracks) >= count:
            break
        await asyncio.sleep(0.2)
    if not tracks:
        raise SystemExit(f"no track was published in {timeout:.0f} s")
    return tracks


async def run(count: int, seconds: float, work: Path, source: Path) -> None:
    meter = Meter()
    rss_empty = meter.process.memory_info().rss

    rooms = RoomManager()
    app = web.Application()
    app.add_subapp(
        "/whip", whip_app(rooms, {WHIP_API_KEY: WHIP_API_SECRET}, ice_addresses=["127.0.0.1"])
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the port the OS picked
    publisher = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--publish",
        f"http://127.0.0.1:{port}/",
        "--tracks",
        str(count),
        "--source",
        str(source),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(publisher.stdout.readline(), 60 + count)
        tracks = await wait_for_tracks(rooms, count, 30)
        print(
            f"{len(tracks)} publishers connected; measuring {seconds:.0f} s per phase", flush=True
        )

        idle_cores, idle_rss = await meter.measure(seconds)

        room = rooms.get(ROOM)
        files = [work / f"{t.sid}.mp4" for t in tracks if room.track(t.sid)]
        runs = [track_graph(room, path.stem, path) for path in files]
        for graph, _ in runs:
            await graph.start()
        await asyncio.sleep(2)  # every recording past its first key frame
        written0 = sum(stages.writer.packets_written for _, stages in runs)
        egress_cores, egress_rss = await meter.measure(seconds)
        written = sum(stages.writer.packets_written for _, stages in runs) - written0
        # Publishers whose connection failed under load leave, ending their egress early.
        lasted = sum(not graph.state.ended for graph, _ in runs)
        for graph, _ in runs:
            await graph.stop()
        failed = [g.name for g, _ in runs if g.state is not GraphState.COMPLETE]
        packets = [stages.writer.packets_written for _, stages in runs]
        decoded = sum(stages.source.track.encoded.frames_decoded for _, stages in runs)
    finally:
        publisher.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(publisher.wait(), 30)
        except TimeoutError:
            publisher.kill()
        await rooms.close()
        await runner.cleanup()

    asked, count = count, len(runs)  # per-track figures are per egress started
    own_cores = egress_cores - idle_cores
    expected = FPS * seconds * asked
    lost = sum(missing_packets(path) for path in files if path.exists())
    # an egress that never wrote a frame (its publisher's connection failed) counts as ended
    ended_early = max(asked - lasted, sum(not path.exists() for path in files))
    late = max(0, round(expected - written) - BOUNDARY_FRAMES * asked - lost)
    per_track = egress_cores / asked
    print()
    drops = (
        f"drops: {lost} frames missing from the files, {ended_early} egresses ended early; "
        f"{late} of {expected:.0f} frames late (written after the measurement)"
    )
    if lost or ended_early:
        scaled = egress_cores / asked * expected / max(written, 1)
        print(
            f"HEADLINE (does not count: the run had drops) {scaled:.4f} core per track "
            f"scaled to every frame written, {asked} tracks; {drops}"
        )
    elif late:
        # the process fell behind: the interval held less work than 30 frames per s per track
        scaled = egress_cores / asked * expected / max(written, 1)
        print(
            f"HEADLINE {scaled:.4f} core per track scaled to every frame sent in the interval "
            f"(measured {per_track:.4f}), receive included, {asked} tracks; {drops}"
        )
    else:
        print(f"HEADLINE {per_track:.4f} core per track, receive included, {asked} tracks; {drops}")
    print(f"publishers                 {asked} asked, {count} connected when egress started")
    print(
        f"track egresses             {count} (H.264 1 Mbps), {lasted} ran through the measurement"
    )
    print(
        f"files                      {count - len(failed)} complete, packets per file "
        f"min {min(packets)} max {max(packets)}; frames given to a decoder: {decoded}"
    )
    rate = written / asked / seconds
    print(
        f"frames written             {rate:.1f} per track per s of {FPS} sent "
        "(fewer: packets lost before this process read them, or egresses ended)"
    )
    print(f"CPU per track, receive     {idle_cores / count:.4f} core (reference: room only)")
    print(f"CPU per track, egress own  {own_cores / count:.4f} core")
    print(
        f"RSS per track, total       {egress_rss / count / MB:.1f} MB (process {egress_rss / MB:.0f} MB)"
    )
    print(
        f"RSS per track, added       {(egress_rss - rss_empty) / count / MB:.1f} MB "
        f"(room + egress; egress alone {(egress_rss - idle_rss) / count / MB:.2f} MB)"
    )
    print(f"ratio total / receive      {egress_cores / max(idle_cores, 1e-9):.2f}")
    print(f"ratio total / 0.5 core     {egress_cores / count / LIVEKIT_RESERVATION_CORES:.3f}")
    if lost or ended_early:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        asyncio.run(publish(args.publish, args.tracks, Path(args.source)))
        return
    with tempfile.TemporaryDirectory(prefix="egresskit-track-bench-") as work:
        source = make_h264_file(Path(work) / "source.h264", seconds=10, bitrate_kbps=1000)
        asyncio.run(run(args.tracks, args.seconds, Path(work), source))


if __name__ == "__main__":
    main()
