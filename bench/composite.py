"""Offline 2x2 composite: egresskit's compositor + x264 graph against the ffmpeg CLI.

Four 640x360@30 VP8 files (made once under bench/out/) become a 1280x720@30
H.264 grid. egresskit decodes them with PyAV (threaded) and feeds the frames
to a VideoCompositor -> VideoEncoder -> Mp4Muxer graph whose clock follows
media time, so the graph runs as fast as the CPU allows and frame n of the
output shows frame n of every input. ffmpeg does the same decode + xstack +
libx264 with the same settings. Both are measured in CPU seconds (user + sys)
per media second; the machine is shared, so the medians of several rounds
are printed.

Run: python bench/composite.py [--rounds 3] [--seconds 60] [--tune zerolatency]
     python bench/composite.py --breakdown   # decode, compose, encode timed apart
     python bench/composite.py --only egresskit --rounds 1 --threads   # CPU by thread
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
from _common import (
    INPUT_HEIGHT,
    INPUT_WIDTH,
    OUT_DIR,
    CpuTimes,
    ThreadCpu,
    median,
    print_threads,
    spread,
    vp8_inputs,
)
from av.video.reformatter import VideoReformatter
from livekit.protocol import models

from egresskit import Graph, LinkPolicy, Mp4Muxer, Stage, VideoCompositor, VideoEncoder
from egresskit.pipeline import GraphClock, Link
from egresskit.stages.encoder import AudioEncoding, VideoEncoding
from egresskit.stages.layout import GRID, fit, place
from egresskit.stages.media import TrackFrame, TrackInfo, TrackStarted

FPS = 30
WIDTH, HEIGHT = 1280, 720
DECODED_AHEAD = 8  # rows of frames the decoding thread may run ahead of the compositor


class MediaTimeClock(GraphClock):
    """A graph clock for offline work: media time moves in lock step with the inputs.

    The compositor only asks the clock to `sleep_until` a frame's time; here
    that returns once every input frame up to that time has been taken in by
    the compositor, instead of waiting for the wall clock. The source, in
    turn, feeds a frame only once the compositor has drawn every earlier
    tick, so output frame n shows input frame n however fast either side is.
    """

    def __init__(self, fps: int) -> None:
        super().__init__()
        self.slack = 0.5 / fps  # input timestamps are rounded (WebM: to the millisecond)
        self.fed_until = -math.inf
        self.wanted = -math.inf
        self.inbox: Link | None = None
        self._changed = asyncio.Condition()
        self._released = False

    def now(self) -> float:
        return max(self.fed_until, 0.0)

    async def _update(self, **values: float) -> None:
        async with self._changed:
            for name, value in values.items():
                setattr(self, name, value)
            self._changed.notify_all()

    async def drawn_before(self, media_time: float) -> None:
        """Wait until the compositor has drawn every tick before `media_time`."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.wanted >= media_time - self.slack or self._released
            )

    async def advance(self, media_time: float) -> None:
        """Every input frame up to `media_time` has been sent to the compositor."""
        await self._update(fed_until=media_time)

    async def release(self) -> None:
        """No more input: let a waiting compositor see that the graph is stopping."""
        await self._update(_released=True)

    async def sleep_until(self, media_time: float) -> None:
        await self._update(wanted=media_time)
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.fed_until >= media_time - self.slack or self._released
            )
        # the compositor's intake handles each item as soon as it runs: yield until it has
        # (the link is the compositor's own: there is no event to wait on, only turns to give)
        while self.inbox is not None and self.inbox.qsize():  # noqa: ASYNC110
            await asyncio.sleep(0)


class FileDecoders:
    """Decodes a set of files side by side on one thread, a frame of each at a time.

    The codecs' own frame threads decode in parallel; handing over one row of
    frames per tick keeps the thread-to-loop traffic at one wake-up a frame.
    """

    def __init__(self, paths: list[Path], loop: asyncio.AbstractEventLoop) -> None:
        self.paths = paths
        self.loop = loop
        self.rows: asyncio.Queue[list[av.VideoFrame] | None] = asyncio.Queue()
        self._room = threading.Semaphore(DECODED_AHEAD)  # bounds `rows` from the thread side
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="decode")
        self._thread.start()

    async def next_row(self) -> list[av.VideoFrame] | None:
        """A frame of every file, or None at the end of the shortest."""
        row = await self.rows.get()
        self._room.release()
        return row

    def _hand_over(self, row: list[av.VideoFrame] | None) -> bool:
        while not self._room.acquire(timeout=1.0):
            if self._closed.is_set():
                return False
        self.loop.call_soon_threadsafe(self.rows.put_nowait, row)
        return True

    def _decode(self) -> None:
        containers = [av.open(str(path)) for path in self.paths]
        try:
            streams = [container.streams.video[0] for container in containers]
            for stream in streams:
                stream.thread_type = "AUTO"
            decoders = [c.decode(s) for c, s in zip(containers, streams, strict=True)]
            for row in zip(*decoders, strict=False):
                if not self._hand_over(list(row)):
                    return
        finally:
            for container in containers:
                container.close()
            if not self._closed.is_set():
                self._hand_over(None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)


class FileTracks(Stage):
    """A source of TrackStarted / TrackFrame items for a set of files, in media-time order."""

    def __init__(self, paths: list[Path], clock: MediaTimeClock) -> None:
        super().__init__("files")
        self.paths = paths
        self.media_clock = clock
        self.output = self.add_output("video")
        self.frames_in = 0
        self.ended = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        decoders = FileDecoders(self.paths, loop)
        tracks = [
            TrackInfo(
                sid=f"TR_file{index}",
                kind=models.TrackType.VIDEO,
                source=models.TrackSource.CAMERA,
                participant_identity=path.stem,
            )
            for index, path in enumerate(self.paths)
        ]
        try:
            for track in tracks:
                await self.output.send(TrackStarted(track))
            while True:
                frames = await decoders.next_row()
                if frames is None:
                    # the end: once the compositor has drawn the last frames, stop the graph
                    await self.media_clock.drawn_before(self.media_clock.fed_until + 1 / FPS)
                    self.ended.set()
                    return
                media_time = min(float(frame.time) for frame in frames)
                await self.media_clock.drawn_before(media_time)
                for track, frame in zip(tracks, frames, strict=True):
                    await self.output.send(TrackFrame(track, frame))
                self.frames_in += 1
                await self.media_clock.advance(media_time)
        finally:
            decoders.close()


async def egresskit_grid(inputs: list[Path], out: Path, encoding: VideoEncoding) -> int:
    """Runs the graph over every input frame; returns how many frames it wrote."""
    graph = Graph("bench-composite")
    clock = graph.clock = MediaTimeClock(FPS)
    source = graph.add(FileTracks(inputs, clock))
    compositor = graph.add(VideoCompositor(WIDTH, HEIGHT, FPS))
    encoder = graph.add(VideoEncoder(encoding))
    muxer = graph.add(Mp4Muxer(out))
    clock.inbox = graph.link(source.output, compositor.input, maxsize=16)
    graph.link(compositor.output, encoder.input, maxsize=4)
    graph.link(encoder.output, muxer.input, maxsize=120, policy=LinkPolicy.BLOCK)
    await graph.start()
    ended = asyncio.create_task(source.ended.wait())
    failed = asyncio.create_task(graph.wait())
    await asyncio.wait({ended, failed}, return_when=asyncio.FIRST_COMPLETED)
    ended.cancel()
    await clock.release()
    state = await graph.stop(timeout=60)
    if graph.error is not None:
        raise RuntimeError(f"graph ended {state.value}: {graph.error}")
    return compositor.frames_out


def ffmpeg_grid(
    inputs: list[Path],
    out: Path,
    encoding: VideoEncoding,
    seconds: float | None = None,
    audio: Sequence[Path] = (),
) -> None:
    """The reference: ffmpeg's own decode + xstack + libx264 (of the first `seconds`).

    With `audio`, also what a room composite does with its participants' sound:
    decode each, mix them (amix) and encode AAC (AudioEncoding's defaults).
    """
    gop = round(encoding.keyframe_interval_s * encoding.fps)
    x264_params = (
        f"keyint={gop}:min-keyint={gop}:scenecut=0"
        f":vbv-maxrate={encoding.bitrate_kbps}:vbv-bufsize={encoding.bitrate_kbps * 2}"
    )
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    for path in [*inputs, *audio]:
        command += ["-i", str(path)]
    graph = "[0:v][1:v][2:v][3:v]xstack=inputs=4:layout=0_0|w0_0|0_h0|w0_h0[grid]"
    maps = ["-map", "[grid]"]
    if audio:
        sound = AudioEncoding()
        mixed = "".join(f"[{len(inputs) + i}:a]" for i in range(len(audio)))
        graph += f";{mixed}amix=inputs={len(audio)}:normalize=0[mix]"
        maps += ["-map", "[mix]", "-c:a", sound.codec, "-b:a", f"{sound.bitrate_kbps}k"]
        maps += ["-ar", str(sound.sample_rate), "-ac", "2"]
    command += [
        "-filter_complex",
        graph,
        *maps,
        "-c:v",
        "libx264",
        "-preset",
        encoding.preset,
        "-tune",
        encoding.tune,
        "-profile:v",
        encoding.profile,
        "-b:v",
        f"{encoding.bitrate_kbps}k",
        "-x264-params",
        x264_params,
        "-pix_fmt",
        "yuv420p",
        *(["-t", str(seconds)] if seconds else []),
        str(out),
    ]
    subprocess.run(command, check=True, timeout=600)


def breakdown(inputs: list[Path], seconds: int, encoding: VideoEncoding) -> None:
    """The same work done serially on one thread, each step timed in process CPU seconds.

    Shows where the time goes without the graph: what the graph costs on
    top is its total minus the sum of these.
    """
    costs: dict[str, float] = dict.fromkeys(("decode", "compose", "encode", "tile scaling"), 0.0)

    def timed(step: str, fn, *args):
        before = CpuTimes.now().own
        result = fn(*args)
        costs[step] += CpuTimes.now().own - before
        return result

    containers = [av.open(str(path)) for path in inputs]
    for container in containers:
        container.streams.video[0].thread_type = "AUTO"
    decoders = [c.decode(c.streams.video[0]) for c in containers]
    compositor = VideoCompositor(WIDTH, HEIGHT, FPS)
    tracks = [
        TrackInfo(f"TR_file{i}", models.TrackType.VIDEO, models.TrackSource.CAMERA, path.stem)
        for i, path in enumerate(inputs)
    ]
    for track in tracks:
        compositor.apply(TrackStarted(track))
    tile = fit(INPUT_WIDTH, INPUT_HEIGHT, place(GRID, len(inputs), WIDTH, HEIGHT).rects[0])
    scaler = VideoReformatter()
    encoder = VideoEncoder(encoding).context
    for n in range(seconds * FPS):
        frames = timed("decode", lambda: [next(d) for d in decoders])
        for track, frame in zip(tracks, frames, strict=True):
            compositor.apply(TrackFrame(track, frame))
        picture = timed("compose", compositor.compose)
        picture.pts, picture.time_base = n, Fraction(1, FPS)
        timed("encode", encoder.encode, picture)
        for frame in frames:
            timed("tile scaling", scaler.reformat, frame, tile.width, tile.height, "yuv420p")
    timed("encode", encoder.encode, None)
    for container in containers:
        container.close()
    print(f"serial breakdown, {seconds} s of media, core per media second:")
    for step, cpu in costs.items():
        print(f"  {step:13s} {cpu / seconds:.3f}")
    print(
        f"  (tile scaling is measured apart: what compose spends scaling {INPUT_WIDTH}x"
        f"{INPUT_HEIGHT} into {tile.width}x{tile.height} tiles)"
    )


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.demux(container.streams.video[0]) if _.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60, help="media length of each input")
    parser.add_argument("--tune", default="zerolatency", help="x264 tune for both encoders")
    parser.add_argument("--only", choices=["egresskit", "ffmpeg"], help="run one side (profiling)")
    parser.add_argument(
        "--breakdown", action="store_true", help="time decode, compose and encode apart"
    )
    parser.add_argument("--threads", action="store_true", help="egresskit's CPU by thread")
    args = parser.parse_args()
    if args.breakdown:
        breakdown(vp8_inputs(args.seconds), args.seconds, VideoEncoding(tune=args.tune))
        return
    names = [args.only] if args.only else ["egresskit", "ffmpeg"]

    inputs = vp8_inputs(args.seconds)
    encoding = VideoEncoding(preset="veryfast", tune=args.tune)
    runs: dict[str, list[float]] = {"egresskit": [], "ffmpeg": []}
    walls: dict[str, list[float]] = {"egresskit": [], "ffmpeg": []}
    outputs = {"egresskit": OUT_DIR / "grid-egresskit.mp4", "ffmpeg": OUT_DIR / "grid-ffmpeg.mp4"}
    for round_ in range(1, args.rounds + 1):
        for name in names:
            before, start = CpuTimes.now(), time.monotonic()
            if name == "egresskit":
                threads = ThreadCpu()
                if args.threads:
                    threads.start()
                asyncio.run(egresskit_grid(inputs, outputs[name], encoding))
                cpu = (CpuTimes.now() - before).own
                if args.threads:
                    print_threads(threads.stop(), args.seconds)
            else:
                ffmpeg_grid(inputs, outputs[name], encoding)
                cpu = (CpuTimes.now() - before).children
            wall = time.monotonic() - start
            runs[name].append(cpu / args.seconds)
            walls[name].append(wall)
            print(
                f"round {round_} {name:9s}: {cpu:6.1f} cpu s in {wall:5.1f} s wall "
                f"= {cpu / args.seconds:.3f} core per media second",
                flush=True,
            )
    for name in names:
        print(f"{name} wrote {frame_count(outputs[name])} frames to {outputs[name]}")
    if args.only:
        return
    ours, theirs = median(runs["egresskit"]), median(runs["ffmpeg"])
    print(f"\n2x2 grid of {args.seconds} s, 1280x720@30 H.264 veryfast tune={args.tune}")
    print(f"egresskit: {ours:.3f} core per media second (runs: {spread(runs['egresskit'])})")
    print(f"ffmpeg:    {theirs:.3f} core per media second (runs: {spread(runs['ffmpeg'])})")
    print(f"ratio egresskit / ffmpeg: {ours / theirs:.2f} (target <= 1.2)")
    print(
        f"realtime factor: egresskit {args.seconds / median(walls['egresskit']):.1f}x, "
        f"ffmpeg {args.seconds / median(walls['ffmpeg']):.1f}x"
    )


if __name__ == "__main__":
    main()
