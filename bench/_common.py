"""Shared parts of the benchmarks: cached test inputs, CPU accounting, medians."""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
REPO = BENCH_DIR.parent
TESTS_DIR = REPO / "tests"

INPUT_WIDTH, INPUT_HEIGHT, INPUT_FPS = 640, 360, 30
# Four lavfi sources with distinct, moving pictures (so every tile costs the encoder work).
INPUT_SOURCES = {
    "testsrc2": "testsrc2=size={w}x{h}:rate={fps}",
    "testsrc": "testsrc=size={w}x{h}:rate={fps}",
    "gradients": "gradients=size={w}x{h}:rate={fps}:speed=0.05",
    "life": "life=size={w}x{h}:rate={fps}:mold=10:ratio=0.5:death_color=#202060:life_color=#f0c040",
}


def vp8_inputs(seconds: int) -> list[Path]:
    """Four 640x360@30 VP8 WebM files of `seconds` each, made once with the ffmpeg CLI."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source in INPUT_SOURCES.items():
        path = OUT_DIR / f"input-{name}-{seconds}s.webm"
        if not path.exists():
            print(f"making {path.name} (once)", file=sys.stderr, flush=True)
            partial = path.with_suffix(".partial.webm")
            graph = source.format(w=INPUT_WIDTH, h=INPUT_HEIGHT, fps=INPUT_FPS)
            subprocess.run(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
                + ["-f", "lavfi", "-i", graph, "-t", str(seconds)]
                + ["-c:v", "libvpx", "-b:v", "1M", "-deadline", "good", "-cpu-used", "4"]
                + ["-g", "120", "-pix_fmt", "yuv420p", str(partial)],
                check=True,
                timeout=600,
            )
            partial.rename(path)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class CpuTimes:
    """User + system CPU seconds of this process and of its waited-for children."""

    own: float
    children: float

    @staticmethod
    def now() -> CpuTimes:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuTimes(own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.own - other.own, self.children - other.children)


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return "  ".join(f"{v:.3f}" for v in values)
