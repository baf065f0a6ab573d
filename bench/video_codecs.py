"""CPU per media second of each video codec egresskit encodes: H.264, VP9 and AV1.

Encodes the same 1280x720@30 2x2 composite (encoder_threads.py's grid) with
VideoEncoder as it runs in an egress (x264 veryfast zerolatency; libvpx-vp9
and SVT-AV1 at their realtime settings), the codecs taking turns each round,
and prints per codec the CPU seconds per media second, how much faster than
real time it encoded (wall), the bitrate it reached, and the ratios to H.264.

Run: python bench/video_codecs.py [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import time

import av
from _common import CpuTimes, median, spread
from encoder_threads import grid_frames

from egresskit.stages.encoder import VideoEncoder, VideoEncoding

CODECS = ("h264", "vp9", "av1")


def encode(frames: list[av.VideoFrame], codec: str) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and bytes to encode `frames` as an egress would."""
    context = VideoEncoder(VideoEncoding(codec=codec)).context
    size = 0
    before, started = CpuTimes.now(), time.perf_counter()
    for index, frame in enumerate(frames):
        frame.pts = index
        size += sum(packet.size for packet in context.encode(frame))
    size += sum(packet.size for packet in context.encode(None))
    return (CpuTimes.now() - before).own, time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    frames = grid_frames(args.seconds)
    media_s = len(frames) / VideoEncoding().fps
    cpu: dict[str, list[float]] = {c: [] for c in CODECS}
    speed: dict[str, list[float]] = {c: [] for c in CODECS}
    kbps: dict[str, list[float]] = {c: [] for c in CODECS}
    for _ in range(args.rounds):
        for codec in CODECS:
            seconds, wall, size = encode(frames, codec)
            cpu[codec].append(seconds / media_s)
            speed[codec].append(media_s / wall)
            kbps[codec].append(size * 8 / media_s / 1000)
    print(
        f"{len(frames)} frames 1280x720@30 (2x2 composite), {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for codec in CODECS:
        ratios = [c / h for c, h in zip(cpu[codec], cpu["h264"], strict=True)]
        print(
            f"{codec:5s} {median(cpu[codec]):.3f} core per media s (runs: {spread(cpu[codec])}), "
            f"{median(speed[codec]):.1f}x real time, {median(kbps[codec]):.0f} kbit/s, "
            f"CPU ratio to H.264 {median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
