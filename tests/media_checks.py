"""Independent checks of produced media: ffprobe for the container, PyAV for pixels and samples."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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


# Limited-range luma (16-235) onto the full range that `to_ndarray(format="gray")` gives.
_LIMITED_BLACK, _LIMITED_SCALE = 16, 255 / 219


def luma_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """(time, luma on the full 0-255 range as float32) of each video frame.

    Decoded on FFmpeg's threads; a yuv420p frame's luma is read from its first
    plane in place, which costs a quarter of converting the frame to gray.
    """
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        for frame in container.decode(video):
            if frame.format.name == "yuv420p":
                plane = frame.planes[0]
                rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
                luma = rows[: frame.height, : frame.width].astype(np.float32)
                luma = np.clip((luma - _LIMITED_BLACK) * _LIMITED_SCALE, 0, 255)
            else:
                luma = frame.to_ndarray(format="gray").astype(np.float32)
            yield float(frame.time), luma


@dataclass(frozen=True)
class Picture:
    """Per frame of a video: its time, mean luma and mean luma change from the frame before."""

    times: list[float]
    levels: list[float]
    changes: list[float]  # the first frame's is infinite


@functools.lru_cache(maxsize=8)
def _picture(path: str, modified_ns: int, size: int) -> Picture:
    times, levels, changes = [], [], []
    previous = None
    for time, luma in luma_frames(path):
        times.append(time)
        levels.append(float(luma.mean()))
        changes.append(float(np.abs(luma - previous).mean()) if previous is not None else np.inf)
        previous = luma
    return Picture(times, levels, changes)


def picture(path: str | Path) -> Picture:
    """`Picture` of a file, decoded once for every check of the same file."""
    status = Path(path).stat()
    return _picture(str(path), status.st_mtime_ns, status.st_size)


def flash_onsets(path: str | Path) -> list[float]:
    """Times (s) of the frames where the picture turns bright after being dark.

    Bright and dark are split halfway between the darkest and brightest
    mean luma of the recording.
    """
    seen = picture(path)
    times, levels = seen.times, seen.levels
    assert levels, f"no video in {path}"
    threshold = (min(levels) + max(levels)) / 2
    assert max(levels) - min(levels) > 50, f"no flash in {path}: luma {min(levels)}-{max(levels)}"
    bright = [level > threshold for level in levels]
    return [times[i] for i in range(1, len(times)) if bright[i] and not bright[i - 1]]


def sound_onsets(path: str | Path, quiet_s: float = 0.5) -> list[float]:
    """Times (s) where the audio gets loud after at least `quiet_s` of quiet.

    Loud is a fifth of the loudest sample; a sample's time comes from its
    decoded frame's own timestamp, so gaps in the stream cannot shift it.
    """
    times, samples = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            data = frame.to_ndarray()
            channels = len(frame.layout.channels)
            mono = data[0] if not frame.format.is_packed else data.reshape(-1, channels)[:, 0]
            samples.append(np.abs(mono.astype(np.float64)))
            times.append(float(frame.time) + np.arange(len(mono)) / frame.sample_rate)
    assert samples, f"no audio in {path}"
    level, when = np.concatenate(samples), np.concatenate(times)
    loud = when[level > level.max() / 5]
    if not len(loud):
        return []
    starts = np.flatnonzero(np.diff(loud) > quiet_s) + 1
    return [float(loud[0])] + [float(t) for t in loud[starts]]


def av_offsets(path: str | Path, max_offset: float = 0.5) -> list[tuple[float, float]]:
    """(flash time, beep onset - flash time) for each flash with a beep within `max_offset`.

    Positive offsets: the sound comes after the picture.
    """
    beeps = sound_onsets(path)
    pairs = []
    for flash in flash_onsets(path):
        nearest = min(beeps, key=lambda beep: abs(beep - flash), default=None)
        if nearest is not None and abs(nearest - flash) <= max_offset:
            pairs.append((flash, nearest - flash))
    return pairs


def longest_freeze(path: str | Path, still: float = 0.3) -> float:
    """The longest time (s) the picture did not change (mean luma difference below `still`)."""
    seen = picture(path)
    longest, frozen_since = 0.0, None
    for i in range(1, len(seen.times)):
        if seen.changes[i] < still:
            frozen_since = frozen_since if frozen_since is not None else seen.times[i - 1]
            longest = max(longest, seen.times[i] - frozen_since)
        else:
            frozen_since = None
    return longest
