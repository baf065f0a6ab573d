"""Record a room of your LiveKit server into an MP4, as a hidden recorder.

python examples/record_livekit_room.py ws://127.0.0.1:7880 KEY SECRET my-room out.mp4 10
"""

import asyncio
import sys

from egresskit import FileOutput, LiveKitRoom, composite_graph


async def main(url: str, key: str, secret: str, room_name: str, out: str, seconds: float) -> None:
    room = await LiveKitRoom.connect(url, key, secret, room_name, identity="recorder")
    graph, _ = composite_graph(room, [FileOutput(out)])
    await graph.start()
    await asyncio.sleep(seconds)
    await graph.stop()
    await room.close()
    print(f"complete: {out}")


if __name__ == "__main__":
    url, key, secret, room_name, out, seconds = sys.argv[1:7]
    asyncio.run(main(url, key, secret, room_name, out, float(seconds)))
