"""A stage of your own in a recording: a watermark drawn onto the composite before it is encoded.

A stage is a class with named ports and a `run` coroutine; `composite_graph`
puts it between the compositor and the encoder, so every output (the file,
HLS, streams, images) shows what it drew. A demo participant publishes a
colour card and a tone into an embedded room; the MP4 is written until
`--seconds` have passed.

    python examples/watermark.py --seconds 5 --out watermarked.mp4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import av
from record_room import ColourCard, Tone  # the demo publishers, beside this file

from egresskit import (
    FileOutput,
    GraphState,
    InputPort,
    OutputPort,
    RoomManager,
    Stage,
    VideoEncoding,
    composite_graph,
)

YELLOW = (240, 200, 0)


class Watermark(Stage):
    """Draws a filled box into the top right corner of every picture."""

    def __init__(
        self, rgb: tuple[int, int, int] = YELLOW, size: tuple[int, int] = (80, 40), margin: int = 16
    ) -> None:
        super().__init__("watermark")
        self.input: InputPort[av.VideoFrame] = self.add_input("input")
        self.output: OutputPort[av.VideoFrame] = self.add_output("output")
        self.rgb, self.size, self.margin = rgb, size, margin

    async def run(self) -> None:
        # Until end of stream; the graph then forwards it from `output` by itself.
        async for frame in self.input:
            await self.output.send(await self.offload(self.stamp, frame))

    def stamp(self, frame: av.VideoFrame) -> av.VideoFrame:
        """On the stage's own worker thread, off the event loop. A new frame: the one that
        came in may be shared with other stages."""
        image = frame.to_ndarray(format="rgb24")
        width, height = self.size
        left = frame.width - width - self.margin
        image[self.margin : self.margin + height, left : left + width] = self.rgb
        stamped = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        stamped.pts, stamped.time_base = frame.pts, frame.time_base
        return stamped


async def main(args: argparse.Namespace) -> bool:
    rooms = RoomManager()
    room = rooms.get_or_create("watermark")
    await room.publish(ColourCard((200, 40, 40)), identity="alice")
    await room.publish(Tone(440.0), identity="alice")
    graph, _ = composite_graph(
        room,
        [FileOutput(args.out)],
        video=VideoEncoding(width=640, height=360, fps=15),
        video_stages=[Watermark()],
    )
    try:
        await graph.start()
        await asyncio.sleep(args.seconds)
        state = await graph.stop()  # drains every stage, the watermark too
        print(f"{state.value}: {args.out}" + (f" ({graph.error})" if graph.error else ""))
        return state is GraphState.COMPLETE
    finally:
        await rooms.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record a demo room with a watermark.")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to record")
    parser.add_argument("--out", type=Path, default=Path("watermarked.mp4"), help="the MP4")
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
