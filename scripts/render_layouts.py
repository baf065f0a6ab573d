"""Render every room composite layout and theme from synthetic participants to PNG.

    python3 scripts/render_layouts.py [OUT_DIR]   (default docs/layouts)

The pictures come from the real VideoCompositor, driven with the same track
items a room subscriber sends, so they show exactly what a recording shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np
from livekit.protocol.models import TrackSource, TrackType

from egresskit.stages.compositor import VideoCompositor
from egresskit.stages.layout import ARRANGEMENTS, THEMES
from egresskit.stages.media import TrackFrame, TrackInfo, TrackMuteChanged, TrackStarted
from egresskit.stages.speaker import SpeakerTracker

WIDTH, HEIGHT = 960, 540
PEOPLE = [
    ("ada", "Ada Lovelace", (86, 120, 180)),
    ("grace", "Grace Hopper", (176, 98, 84)),
    ("alan", "Alan Turing", (90, 150, 110)),
    ("edsger", "Edsger Dijkstra", None),  # audio only: a placeholder
    ("barbara", "Barbara Liskov", (160, 130, 70)),
    ("ken", "Ken Thompson", (120, 100, 160)),
]
SPEAKER = "grace"
MUTED = "alan"


def camera_picture(colour: tuple[int, int, int], width: int = 640, height: int = 360) -> np.ndarray:
    """A head-and-shoulders silhouette in front of a soft gradient wall."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = np.array(colour, np.float32) * (0.75 + 0.35 * (1 - yy / height))[..., None]
    person = np.array(colour, np.float32) * 0.35
    head = ((xx - width / 2) / (height * 0.13)) ** 2 + ((yy - height * 0.42) / (height * 0.17)) ** 2
    body = ((xx - width / 2) / (height * 0.36)) ** 2 + ((yy - height * 1.05) / (height * 0.36)) ** 2
    # about one pixel of soft edge, so the outline is smooth at any size
    mask = np.maximum(
        np.clip((1 - np.sqrt(head)) * height * 0.15, 0, 1),
        np.clip((1 - np.sqrt(body)) * height * 0.36, 0, 1),
    )[..., None]
    return np.clip(wall * (1 - mask) + person * mask, 0, 255).astype(np.uint8)


def slide_picture(width: int = 1280, height: int = 720) -> np.ndarray:
    """A presentation slide: a title bar and a few lines of 'text'."""
    image = np.full((height, width, 3), 250, np.uint8)
    image[: height // 6] = (40, 70, 140)
    for row in range(5):
        y = height // 4 + row * height // 9
        image[y : y + height // 30, width // 10 : width // 10 + width * (7 - row) // 10] = 160
    return image


def frame(picture: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(picture, format="rgb24")


def compositor(layout: str, *, share: bool = False) -> VideoCompositor:
    speakers = SpeakerTracker()
    for tick in range(60):  # 1.2 s of one participant talking
        speakers.observe(tick * 0.02, {SPEAKER: 0.2})
    comp = VideoCompositor(WIDTH, HEIGHT, layout=layout, speakers=speakers)
    for identity, name, colour in PEOPLE:
        mic = TrackInfo(
            f"TR_{identity}_mic", TrackType.AUDIO, TrackSource.MICROPHONE, identity, name
        )
        comp.apply(TrackStarted(mic))
        if identity == MUTED:
            comp.apply(TrackMuteChanged(mic, True))
        if colour is not None:
            cam = TrackInfo(
                f"TR_{identity}_cam", TrackType.VIDEO, TrackSource.CAMERA, identity, name
            )
            comp.apply(TrackStarted(cam))
            comp.apply(TrackFrame(cam, frame(camera_picture(colour))))
    if share:
        screen = TrackInfo(
            "TR_ada_screen", TrackType.VIDEO, TrackSource.SCREEN_SHARE, "ada", "Ada Lovelace"
        )
        comp.apply(TrackStarted(screen))
        comp.apply(TrackFrame(screen, frame(slide_picture())))
    return comp


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(f"{a}-{t}", f"{a}-{t}", False) for a in ARRANGEMENTS for t in THEMES]
    jobs.append(("grid-dark-screenshare", "grid-dark", True))
    for file_name, layout, share in jobs:
        picture = compositor(layout, share=share).compose().to_image()
        path = out_dir / f"{file_name}.png"
        picture.save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/layouts"))
