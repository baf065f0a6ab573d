"""Shared parts of the benchmarks: cached test inputs, CPU accounting, medians."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import threading
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


def opus_inputs(seconds: int, frequencies: list[int]) -> list[Path]:
    """Stereo 48 kHz Opus tones of `seconds` each (one per frequency), made once with the ffmpeg CLI.

    The live benches' publishers send these tones (tests/publishers.py SineAudioTrack,
    aiortc's stereo Opus), so the offline reference decodes and mixes the same audio.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for frequency in frequencies:
        path = OUT_DIR / f"input-tone-{frequency}hz-{seconds}s.ogg"
        if not path.exists():
            partial = path.with_suffix(".partial.ogg")
            subprocess.run(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"]
                + ["-i", f"sine=frequency={frequency}:sample_rate=48000", "-t", str(seconds)]
                + ["-ac", "2", "-c:a", "libopus", "-b:a", "64k", str(partial)],
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


def missing_packets(path: Path) -> int:
    """Packets missing between the first and the last of a file's first stream.

    A gap of n steps (the median distance between packets) is n - 1 packets
    missing: frames lost anywhere between the publisher and the file.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams[0]
        times = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    if not steps:
        return 0
    step = statistics.median(steps) or 1
    return sum(max(0, round(gap / step) - 1) for gap in steps)


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return "  ".join(f"{v:.3f}" for v in values)


class ThreadCpu:
    """CPU seconds of each thread of this process between `start` and `stop`, by thread name.

    Reads Linux's /proc/self/task; threads that are not Python's (codec
    workers such as x264's) are grouped under their kernel name. A sampler
    thread re-reads every 0.2 s so threads that end early still count.
    """

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._done = threading.Event()
        self._sampler: threading.Thread | None = None
        self._ticks = os.sysconf("SC_CLK_TCK")

    def _poll(self) -> None:
        python = {t.native_id: t.name for t in threading.enumerate()}
        for entry in os.scandir("/proc/self/task"):
            tid = int(entry.name)
            try:
                stat = Path(entry.path, "stat").read_text()
                comm = Path(entry.path, "comm").read_text().strip()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            self._last[tid] = (int(fields[11]) + int(fields[12])) / self._ticks
            if tid in python:
                self._names[tid] = python[tid].rstrip("0123456789").rstrip("_")
            else:
                self._names.setdefault(tid, f"{comm} (native threads)")

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self._poll()

    def start(self) -> None:
        self._poll()
        self._start = dict(self._last)
        self._sampler = threading.Thread(target=self._sample, name="thread-cpu", daemon=True)
        self._sampler.start()

    def stop(self) -> dict[str, float]:
        self._done.set()
        if self._sampler is not None:
            self._sampler.join()
        self._poll()
        totals: dict[str, float] = {}
        for tid, cpu in self._last.items():
            name = self._names[tid]
            if name != "thread-cpu":
                totals[name] = totals.get(name, 0.0) + cpu - self._start.get(tid, 0.0)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def print_threads(totals: dict[str, float], media_seconds: float) -> None:
    print("  core per media second by thread:")
    for name, cpu in totals.items():
        if cpu / media_seconds >= 0.001:
            print(f"    {cpu / media_seconds:.3f}  {name}")
