"""What MP4 faststart adds to finishing a recording: the second pass that puts moov first.

Writes a 720p30 H.264 recording as Mp4Muxer does (fragmented, index at the
end), from encoder_threads.py's 2x2 grid looped to `--minutes`, then times
`remux_faststart` on it (wall and CPU, median of `--rounds`) and prints the
time per minute recorded.

Run: python bench/faststart.py [--minutes 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import av
from _common import OUT_DIR, CpuTimes, median, spread
from encoder_threads import grid_frames

from egresskit.stages.encoder import VideoEncoder, VideoEncoding
from egresskit.stages.muxer import MP4_OPTIONS, remux_faststart


def recording(minutes: int) -> tuple[str, float]:
    """A fragmented MP4 of `minutes` (made once); its path and size in MB."""
    path = OUT_DIR / f"faststart-{minutes}min.mp4"
    if not path.exists():
        frames = grid_frames(10)
        encoder = VideoEncoder(VideoEncoding())
        partial = path.with_suffix(".partial.mp4")
        count = minutes * 60 * 30
        with av.open(str(partial), "w", format="mp4", options=MP4_OPTIONS) as container:
            stream = encoder.header().add_to(container)
            written = 0
            for index in range(count + 1):
                packets = encoder.context.encode(
                    frames[index % len(frames)] if index < count else None
                )
                for packet in packets:
                    # zerolatency has no B-frames: packets come in frame order, one per frame
                    packet.pts = packet.dts = written
                    packet.duration = 1
                    packet.stream = stream
                    container.mux(packet)
                    written += 1
        partial.rename(path)
    return str(path), path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source, size_mb = recording(args.minutes)
    walls, cpus = [], []
    for _ in range(args.rounds):
        copy = OUT_DIR / "faststart-copy.mp4"
        shutil.copyfile(source, copy)
        before, started = CpuTimes.now(), time.perf_counter()
        remux_faststart(copy)
        walls.append((time.perf_counter() - started) / args.minutes)
        cpus.append((CpuTimes.now() - before).own / args.minutes)
        copy.unlink()
    print(
        f"{args.minutes} min 720p30 H.264 ({size_mb:.0f} MB), {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"faststart: {median(walls):.3f} s wall per recorded minute (runs: {spread(walls)})")
    print(f"           {median(cpus):.3f} s CPU per recorded minute (runs: {spread(cpus)})")


if __name__ == "__main__":
    main()
