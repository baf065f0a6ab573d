"""Record an embedded room to an MP4, composed stage by stage.

Publishers join the room over WHIP (the URL, a development API key and
secret, and a ready publisher token are printed at start); egresskit draws
their cameras into a grid, mixes their microphones, encodes H.264 + AAC
once and writes an MP4 until `--seconds` have passed or Ctrl-C.

    python examples/record_room.py --room standup --seconds 60 --out standup.mp4
    python examples/record_room.py --demo --seconds 5   # two synthetic publishers, no browser
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from pathlib import Path

import av
import numpy as np
from aiohttp import web
from aiortc import AudioStreamTrack, VideoStreamTrack

from egresskit import (
    AudioEncoder,
    AudioMixer,
    BusEvent,
    FileClosed,
    FirstMedia,
    Graph,
    GraphState,
    LocalRoom,
    Mp4Muxer,
    RoomManager,
    RoomSubscriber,
    VideoCompositor,
    VideoEncoder,
    create_token,
    whip_app,
)

DEV_API_KEY = "devkey"


def record_graph(room: LocalRoom, out: Path) -> Graph:
    """Room -> subscriber -> compositor and mixer -> one encoder each -> MP4."""
    graph = Graph("record-room")
    subscriber = graph.add(RoomSubscriber(room))
    compositor = graph.add(VideoCompositor(1280, 720, fps=30))
    mixer = graph.add(AudioMixer())
    video, audio = graph.add(VideoEncoder()), graph.add(AudioEncoder())
    mp4 = graph.add(Mp4Muxer(out))
    graph.link(subscriber.video, compositor.input, maxsize=64)  # frames and track changes
    graph.link(subscriber.roster, compositor.roster, maxsize=64)  # who is in the room
    graph.link(subscriber.audio, mixer.input, maxsize=64)
    graph.link(compositor.output, video.input, maxsize=4)  # raw pictures: a few of slack
    graph.link(mixer.output, audio.input, maxsize=25)
    graph.link(video.output, mp4.input, maxsize=120)  # encoded packets never drop
    graph.link(audio.output, mp4.input, maxsize=120)
    graph.bus.subscribe(report)
    return graph


def report(event: BusEvent) -> None:
    """What the graph's bus says: typed events, each naming the stage that posted it."""
    if isinstance(event, FirstMedia):
        print(f"{event.stage.name}: first media written", flush=True)
    elif isinstance(event, FileClosed):
        print(f"{event.stage.name}: {event.path} closed, {event.size} bytes", flush=True)


class ColourCard(VideoStreamTrack):
    """A demo camera: one colour with a white bar sweeping across."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        super().__init__()
        self.card = np.empty((360, 640, 3), np.uint8)
        self.card[:] = rgb

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()  # paced at 30 frames a second
        image = self.card.copy()
        x = (pts // 3000 * 6) % 600
        image[:, x : x + 40] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A demo microphone: a steady sine tone."""

    def __init__(self, hz: float) -> None:
        super().__init__()
        self.hz = hz

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # paced silence, 20 ms at a time
        assert isinstance(frame, av.AudioFrame)
        t = ((frame.pts or 0) + np.arange(frame.samples)) / frame.sample_rate
        frame.planes[0].update((8000 * np.sin(2 * np.pi * self.hz * t)).astype(np.int16).tobytes())
        return frame


async def publish_demo(room: LocalRoom) -> None:
    for identity, rgb, hz in (("alice", (200, 40, 40), 440.0), ("bob", (40, 70, 200), 660.0)):
        await room.publish(ColourCard(rgb), identity=identity)
        await room.publish(Tone(hz), identity=identity)


async def main(args: argparse.Namespace) -> bool:
    rooms = RoomManager()
    room = rooms.get_or_create(args.room)
    secret = secrets.token_urlsafe(24)  # a fresh development secret every run
    app = web.Application()
    app.add_subapp("/whip", whip_app(rooms, {DEV_API_KEY: secret}))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    host, port = runner.addresses[0][:2]
    token = create_token(
        DEV_API_KEY,
        secret,
        identity="publisher",
        video={"roomJoin": True, "room": args.room, "canPublish": True},
    )
    print(f"WHIP endpoint: http://{host}:{port}/whip/{args.room}")
    print(f"development API key {DEV_API_KEY}, secret {secret}")
    print(f"publisher token (identity 'publisher'): {token}", flush=True)

    graph = record_graph(room, args.out)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        if args.demo:
            await publish_demo(room)
        await graph.start()
        print(f"recording {args.room} to {args.out} for {args.seconds:g} s", flush=True)
        ended = asyncio.create_task(graph.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {ended, stopped}, timeout=args.seconds, return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        state = await graph.stop()  # drains every stage and writes the MP4 index
        print(f"{state.value}: {args.out}" + (f" ({graph.error})" if graph.error else ""))
        return state is GraphState.COMPLETE
    finally:
        with contextlib.suppress(Exception):
            await graph.cancel()
        await rooms.close()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record an embedded room to an MP4.")
    parser.add_argument("--room", default="demo", help="room name (publishers join it)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to record")
    parser.add_argument("--out", type=Path, help="the MP4 to write (default: ROOM.mp4)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the WHIP endpoint")
    parser.add_argument("--port", type=int, default=8080, help="port of the WHIP endpoint (0: any)")
    parser.add_argument("--demo", action="store_true", help="publish two synthetic participants")
    arguments = parser.parse_args()
    arguments.out = arguments.out or Path(f"{arguments.room}.mp4")
    sys.exit(0 if asyncio.run(main(arguments)) else 1)
