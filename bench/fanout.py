"""Fan-out cost: one composite recorded to a file only, then to file + HLS + RTMP + images.

The encode happens once whatever the outputs, so the extra outputs should
cost little: the target is at most 15% more CPU. Both runs record the same
in-process publishers for the same wall time; CPU is this process's user +
system time (nginx, the RTMP receiver, is not counted). Prints CPU seconds
of each run and their ratio.

    python3 bench/fanout.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from publishers import SineAudioTrack, SyntheticVideoTrack  # noqa: E402
from rtmp_server import RtmpServer  # noqa: E402

from egresskit import FileOutput, GraphState, RoomManager, composite_graph  # noqa: E402
from egresskit.egress.graphs import ImageOutput, SegmentsOutput, StreamOutput  # noqa: E402


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def run(room, outputs, seconds: float) -> float:
    """CPU seconds spent while a composite graph records for `seconds`."""
    graph, _ = composite_graph(room, outputs, name="bench")
    before = cpu_seconds()
    await graph.start()
    await asyncio.sleep(seconds)
    state = await graph.stop()
    spent = cpu_seconds() - before
    if state is not GraphState.COMPLETE:
        raise SystemExit(f"graph ended {state.value}: {graph.error}")
    return spent


async def main(seconds: float) -> None:
    rooms = RoomManager()
    room = rooms.get_or_create("bench")
    await room.publish(SyntheticVideoTrack((220, 40, 40)), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    await room.publish(SyntheticVideoTrack((40, 60, 220)), identity="bob")
    await room.publish(SineAudioTrack(1000.0), identity="bob")
    idle_start = cpu_seconds()
    await asyncio.sleep(seconds / 4)
    idle = (cpu_seconds() - idle_start) * 4  # publishers alone, scaled to one run
    try:
        with tempfile.TemporaryDirectory() as work, RtmpServer() as rtmp:
            out = Path(work)
            file_only = await run(room, [FileOutput(out / "only.mp4")], seconds)
            fanned = await run(
                room,
                [
                    FileOutput(out / "all.mp4"),
                    SegmentsOutput(out / "hls" / "all", live_playlist="live"),
                    StreamOutput((rtmp.url("bench"),)),
                    ImageOutput(out / "images" / "all", capture_interval=10),
                ],
                seconds,
            )
    finally:
        await rooms.close()
    print(f"media seconds per run        {seconds:.0f}")
    print(f"publishers alone (per run)   {idle:.2f} CPU s")
    print(f"file only                    {file_only:.2f} CPU s")
    print(f"file + HLS + RTMP + images   {fanned:.2f} CPU s")
    print(f"ratio                        {fanned / file_only:.3f}  (target <= 1.15)")
    print(f"ratio without publishers     {(fanned - idle) / (file_only - idle):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    started = time.monotonic()
    asyncio.run(main(args.seconds))
    print(f"took {time.monotonic() - started:.0f} s")
