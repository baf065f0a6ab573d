"""A recording process for the crash test: records a synthetic room until it is killed."""

from __future__ import annotations

import asyncio
import sys

from publishers import SineAudioTrack, SyntheticVideoTrack

from egresskit import FileOutput, RoomManager, composite_graph
from egresskit.pipeline import FirstMedia


async def main(path: str) -> None:
    room = RoomManager().get_or_create("crash")
    await room.publish(SyntheticVideoTrack((220, 40, 40)), identity="alice")
    await room.publish(SineAudioTrack(440.0), identity="alice")
    graph, _ = composite_graph(room, [FileOutput(path)])
    announced = asyncio.Event()
    graph.bus.subscribe(lambda e: announced.set() if isinstance(e, FirstMedia) else None)
    await graph.start()
    await announced.wait()
    print("recording", flush=True)
    await graph.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
