"""Compositor cost per output frame at 1280x720 next to the encode of the same frames.

Every participant sends a new 640x360 frame for every output frame (30 fps
in, 30 fps out), so each frame pays for scaling every tile; labels and one
placeholder tile are drawn as in a real room. The encode is the graph's own
VideoEncoder context (x264 veryfast, zerolatency, 3000 kbps) on the frames
the compositor drew, in the same run.

    python3 bench/compositor.py [frames]
"""

from __future__ import annotations

import sys
import time

import av
import numpy as np
from livekit.protocol.models import TrackSource, TrackType

from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.encoder import VideoEncoder, VideoEncoding
from egresskit.stages.media import TrackFrame, TrackInfo, TrackStarted

WIDTH, HEIGHT = 1280, 720
SOURCE_W, SOURCE_H = 640, 360
CYCLE = 8  # distinct source frames per participant, reused in turn


def source_frames(index: int) -> list[av.VideoFrame]:
    """A coloured gradient with a block moving across it, as yuv420p frames."""
    rng = np.random.default_rng(index)
    colour = rng.integers(40, 220, 3)
    ramp = np.linspace(0.6, 1.1, SOURCE_W, dtype=np.float32)[None, :, None]
    base = np.clip(colour * ramp * np.ones((SOURCE_H, 1, 1), np.float32), 0, 255).astype(np.uint8)
    frames = []
    for step in range(CYCLE):
        image = base.copy()
        x = step * 40
        image[140:220, x : x + 80] = 255 - colour
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frames.append(frame)
    return frames


def compositor(participants: int) -> tuple[VideoCompositor, list[tuple[TrackInfo, list]]]:
    comp = VideoCompositor(WIDTH, HEIGHT, 30)
    sources = []
    for i in range(participants):
        identity = f"participant-{i}"
        mic = TrackInfo(f"TR_m{i}", TrackType.AUDIO, TrackSource.MICROPHONE, identity, identity)
        comp.apply(TrackStarted(mic))
        if i == participants - 1:
            continue  # the last one has no camera: a placeholder tile
        cam = TrackInfo(f"TR_c{i}", TrackType.VIDEO, TrackSource.CAMERA, identity, identity)
        comp.apply(TrackStarted(cam))
        sources.append((cam, source_frames(i)))
    return comp, sources


def measure(participants: int, frames: int, encoder: VideoEncoder) -> tuple[float, float, float]:
    """ms per frame: compositing (CPU), encoding (wall), encoding (CPU of all x264 threads)."""
    comp, sources = compositor(participants)
    drawn = []
    composite = 0.0
    for n in range(frames + 5):
        for info, cycle in sources:
            comp.apply(TrackFrame(info, cycle[n % CYCLE]))
        start = time.process_time()
        frame = comp.compose()
        if n >= 5:  # the first frames draw labels and placeholders once
            composite += time.process_time() - start
            drawn.append(frame)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for n, frame in enumerate(drawn):
        frame.pts = n
        encoder.context.encode(frame)
    encoder.context.encode(None)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    return composite / frames * 1e3, wall / frames * 1e3, cpu / frames * 1e3


def main(frames: int) -> None:
    print(f"1280x720, {frames} frames each, new 640x360 frame per tile per output frame")
    print(
        f"{'participants':>12} {'composite':>10} {'encode wall':>12} {'encode cpu':>11} {'ratio':>7}"
    )
    for participants in (4, 9, 16):
        encoder = VideoEncoder(VideoEncoding(width=WIDTH, height=HEIGHT))
        composite, encode_wall, encode_cpu = measure(participants, frames, encoder)
        print(
            f"{participants:>12} {composite:>8.2f}ms {encode_wall:>10.2f}ms {encode_cpu:>9.2f}ms"
            f" {composite / encode_cpu:>6.0%}"
        )
    print("ratio: compositor time / x264 CPU time for the same frames")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
