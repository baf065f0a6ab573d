"""What a paused composite costs: CPU while recording, then while paused, in one graph.

A paused graph keeps its subscriptions (so it resumes at once) but its
compositor, mixer, encoders and muxers wait on the stopped graph clock, so
it should cost little more than the publishers alone. Two in-process
publishers feed one 1280x720 grid to an MP4; the process's CPU time
(user + system) is measured over equal windows: publishers alone (before
the graph starts), recording, paused, and recording again after resume.
Prints CPU seconds per window and the paused / recording ratio.

    python3 bench/pause.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from publishers import SineAudioTrack, SyntheticVideoTrack  # noqa: E402

from egresskit import FileOutput, GraphState, RoomManager, composite_graph  # noqa: E402


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def window(seconds: float) -> float:
    before = cpu_seconds()
    await asyncio.sleep(seconds)
    return cpu_seconds() - before


async def main(seconds: float) -> None:
    rooms = RoomManager()
    room = rooms.get_or_create("bench")
    for identity, colour, tone in (("alice", (220, 40, 40), 440.0), ("bob", (40, 60, 220), 1e3)):
        await room.publish(SyntheticVideoTrack(colour), identity=identity)
        await room.publish(SineAudioTrack(tone), identity=identity)
    with tempfile.TemporaryDirectory() as out:
        graph, _ = composite_graph(room, [FileOutput(Path(out) / "pause.mp4")], name="bench")
        idle = await window(seconds)
        await graph.start()
        recording = await window(seconds)
        graph.pause()
        paused = await window(seconds)
        graph.resume()
        resumed = await window(seconds)
        state = await graph.stop()
    await rooms.close()
    if state is not GraphState.COMPLETE:
        raise SystemExit(f"graph ended {state.value}: {graph.error}")
    print(f"load average {os.getloadavg()[0]:.1f}; CPU s per {seconds:.0f} s window:")
    print(f"  publishers alone {idle:.2f}")
    print(f"  recording        {recording:.2f}")
    print(f"  paused           {paused:.2f}")
    print(f"  resumed          {resumed:.2f}")
    print(
        f"paused / recording: {paused / recording:.2f} "
        f"(without the publishers: {(paused - idle) / (recording - idle):.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args().seconds))
