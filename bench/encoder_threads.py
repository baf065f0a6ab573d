"""x264 threads at 1280x720@30: why VideoEncoder runs one thread up to that size.

Encodes the same 2x2 grid (made once by the ffmpeg CLI from composite.py's
inputs) with VideoEncoder as configured (one x264 thread up to
SINGLE_THREAD_PIXEL_RATE) and with x264 choosing its own thread count (sliced
threads under tune=zerolatency), alternating, and prints the CPU seconds per
media second of each, the ratio, and how much faster than real time the single
thread encodes.

Run: python bench/encoder_threads.py [--rounds 5] [--seconds 20]
"""

from __future__ import annotations

import argparse
import time

import av
from _common import OUT_DIR, CpuTimes, median, spread, vp8_inputs
from composite import ffmpeg_grid

from egresskit.stages import encoder
from egresskit.stages.encoder import VideoEncoder, VideoEncoding


def grid_frames(seconds: int) -> list[av.VideoFrame]:
    path = OUT_DIR / f"encoder-threads-grid-{seconds}s.mp4"
    if not path.exists():
        ffmpeg_grid(vp8_inputs(60), path, VideoEncoding(), seconds)
    with av.open(str(path)) as container:
        return [frame.reformat(format="yuv420p") for frame in container.decode(video=0)]


def encode(frames: list[av.VideoFrame], single_thread_pixel_rate: int) -> tuple[float, float]:
    """CPU seconds and wall seconds to encode `frames` with VideoEncoder's codec context."""
    saved = encoder.SINGLE_THREAD_PIXEL_RATE
    encoder.SINGLE_THREAD_PIXEL_RATE = single_thread_pixel_rate
    try:
        context = VideoEncoder(VideoEncoding()).context
    finally:
        encoder.SINGLE_THREAD_PIXEL_RATE = saved
    before, started = CpuTimes.now(), time.perf_counter()
    for index, frame in enumerate(frames):
        frame.pts = index
        context.encode(frame)
    context.encode(None)
    return (CpuTimes.now() - before).own, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    frames = grid_frames(args.seconds)
    media_s = len(frames) / VideoEncoding().fps
    single, auto, speed = [], [], []
    for _ in range(args.rounds):
        cpu, wall = encode(frames, encoder.SINGLE_THREAD_PIXEL_RATE)
        single.append(cpu / media_s)
        speed.append(media_s / wall)
        auto.append(encode(frames, 0)[0] / media_s)
    ratios = [s / a for s, a in zip(single, auto, strict=True)]
    print(f"{len(frames)} frames 1280x720@30 H.264 veryfast zerolatency, {args.rounds} rounds")
    print(f"one x264 thread:    {median(single):.3f} core per media s (runs: {spread(single)})")
    print(f"x264 auto threads:  {median(auto):.3f} core per media s (runs: {spread(auto)})")
    print(
        f"ratio one / auto {median(ratios):.2f}; one thread encodes {median(speed):.1f}x real time"
    )


if __name__ == "__main__":
    main()
