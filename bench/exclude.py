"""What an excluded participant costs a composite: CPU with one of three left out, and none.

A composite stays subscribed to the participants it leaves out (ParticipantGate), so
that someone let in is recorded from the instant of the call: their media is decoded
but neither drawn nor mixed. Three WHIP publishers (tests/whip_child.py, 640x360 at
30 fps and a tone, each in a process of its own, so this process is the service
alone) feed one 1280x720 grid to an MP4. This process's CPU time (user + system) is
measured over equal windows: publishers received with no graph, a graph with bob
excluded, a graph with everyone. Run it against an older checkout (PYTHONPATH) to
compare designs in one sitting.

    python3 bench/exclude.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import psutil
from aiohttp import web

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from publishers import WHIP_API_KEY, WHIP_API_SECRET, make_publisher_token  # noqa: E402

from egresskit import (  # noqa: E402
    FileOutput,
    GraphState,
    ParticipantChoice,
    RoomManager,
    composite_graph,
    whip_app,
)

PEOPLE = {"alice": "220,40,40", "bob": "40,60,220", "carol": "40,200,40"}
WARM_UP_S = 2.0


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


async def window(seconds: float) -> float:
    before = cpu_seconds()
    await asyncio.sleep(seconds)
    return cpu_seconds() - before


async def record(room, choice: ParticipantChoice, seconds: float, out: Path) -> float:
    """CPU seconds of one window while a graph records the room with this choice."""
    graph, _ = composite_graph(room, [FileOutput(out)], participants=choice, name="bench")
    await graph.start()
    await asyncio.sleep(WARM_UP_S)
    used = await window(seconds)
    state = await graph.stop()
    if state is not GraphState.COMPLETE:
        raise SystemExit(f"graph ended {state.value}: {graph.error}")
    return used


async def main(seconds: float) -> None:
    rooms = RoomManager()
    app = web.Application()
    app.add_subapp(
        "/whip", whip_app(rooms, {WHIP_API_KEY: WHIP_API_SECRET}, ice_addresses=["127.0.0.1"])
    )
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(TESTS / "whip_child.py"),
            f"http://127.0.0.1:{port}",
            "bench",
            make_publisher_token(WHIP_API_KEY, WHIP_API_SECRET, "bench", identity),
            colour,
            str(440 + 300 * n),
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        for n, (identity, colour) in enumerate(PEOPLE.items())
    ]
    try:
        for proc in procs:
            while not (await proc.stdout.readline()).startswith(b"published"):
                pass
        room = rooms.get("bench")
        await asyncio.sleep(WARM_UP_S)
        with tempfile.TemporaryDirectory() as out:
            idle = await window(seconds)
            excluded = await record(
                room, ParticipantChoice.of(exclude=["bob"]), seconds, Path(out) / "a.mp4"
            )
            everyone = await record(room, ParticipantChoice.of(), seconds, Path(out) / "b.mp4")
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()
        await rooms.close()
        await runner.cleanup()
    print(f"load average {os.getloadavg()[0]:.1f}; CPU s per {seconds:.0f} s window:")
    print(f"  publishers received, no graph  {idle:.2f}")
    print(f"  graph, bob excluded            {excluded:.2f}")
    print(f"  graph, everyone                {everyone:.2f}")
    print(
        f"excluded / everyone: {excluded / everyone:.2f} "
        f"(graph only: {(excluded - idle) / (everyone - idle):.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    asyncio.run(main(parser.parse_args().seconds))
