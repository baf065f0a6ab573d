"""Independent checks of produced media: ffprobe for the container, PyAV for pixels and samples."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import av
import numpy as np


def ffprobe(path: str | Path) -> dict:
    """ffprobe's view of a file: format and streams (raises if ffprobe cannot read it)."""
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-count_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"ffprobe cannot read {path}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def stream(info: dict, kind: str) -> dict:
    streams = [s for s in info["streams"] if s["codec_type"] == kind]
    assert streams, f"no {kind} stream in {[s['codec_type'] for s in info['streams']]}"
    return streams[0]


def frame_at(path: str | Path, seconds: float) -> np.ndarray:
    """The decoded RGB picture shown at `seconds`."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        chosen = None
        for frame in container.decode(video):
            if frame.time is not None and frame.time > seconds:
                break
            chosen = frame
        assert chosen is not None, f"no frame at {seconds} s in {path}"
        return chosen.to_ndarray(format="rgb24")


def region_color(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int]:
    """Median colour of a region (robust to a small moving block)."""
    r, g, b = np.median(image[y0:y1, x0:x1].reshape(-1, 3), axis=0)
    return int(r), int(g), int(b)


def audio_samples(
    path: str | Path, start: float = 0.0, end: float | None = None
) -> tuple[np.ndarray, int]:
    """Decoded audio (first channel, float) between two times, and its sample rate."""
    chunks = []
    rate = 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            rate = frame.sample_rate
            if frame.time is None or frame.time < start or (end is not None and frame.time > end):
                continue
            data = frame.to_ndarray()
            chunks.append(
                data[0]
                if not frame.format.is_packed
                else data.reshape(-1, len(frame.layout.channels))[:, 0]
            )
    assert chunks, f"no audio between {start} and {end} s in {path}"
    return np.concatenate(chunks).astype(np.float64), rate


def tone_strengths(samples: np.ndarray, rate: int, freqs: list[float]) -> list[float]:
    """Energy around each frequency relative to the spectrum's median (a tone scores >> 10)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    floor = float(np.median(spectrum)) + 1e-9
    bin_hz = rate / len(samples)
    out = []
    for f in freqs:
        i = int(round(f / bin_hz))
        out.append(float(spectrum[max(0, i - 3) : i + 4].max() / floor))
    return out
