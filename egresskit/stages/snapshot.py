"""ImageSnapshotter: a JPEG of the composited picture every `capture_interval` seconds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from egresskit.pipeline import EOS, InputPort, Stage, StageEvent
from egresskit.storage.paths import confine, write_atomically

JPEG_QUALITY = 90

ImageNamer = Callable[[int, datetime], str]


def index_image_names(prefix: str) -> ImageNamer:
    """The default naming: `{prefix}_00000.jpeg`, `{prefix}_00001.jpeg`, ..."""
    return lambda index, _when: f"{prefix}_{index:05d}.jpeg"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One written image: where, and the wall-clock time (Unix ns) of the frame it shows."""

    index: int
    path: Path
    timestamp_ns: int
    media_time_s: float

    @property
    def filename(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True, eq=False)
class ImageWritten(StageEvent):
    image: Snapshot


def _write_jpeg(
    reformatter: VideoReformatter, frame: av.VideoFrame, path: Path, width: int, height: int
) -> None:
    confine(path.parent, path.name)  # a symlink planted under the name leads nowhere
    # Pillow writes the JPEG: it is already a dependency and needs no codec context
    # per snapshot; swscale scales and converts first, through this stage's own
    # reformatter (the frame is shared with the encoder's thread).
    image = reformatter.reformat(
        frame, width=width or frame.width, height=height or frame.height, format="rgb24"
    ).to_image()
    # NONE_OVERWRITE readers never see half an image.
    write_atomically(path, lambda out: image.save(out, format="JPEG", quality=JPEG_QUALITY))


class ImageSnapshotter(Stage):
    """Takes the first frame at or after each multiple of `capture_interval` of media time.

    Feed it raw composited frames through a DROP_OLDEST link, so snapshots
    never hold up the compositor. Encoding and writing run on the stage's
    worker thread. Each image is posted as `ImageWritten`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        image_names: ImageNamer | None = None,
        capture_interval: float = 10.0,
        width: int = 0,
        height: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if capture_interval <= 0:
            raise ValueError("capture interval must be positive")
        if width < 0 or height < 0:
            raise ValueError("image width and height must not be negative")
        self.directory = Path(directory)
        self.image_names = image_names or index_image_names("image")
        self.capture_interval = capture_interval
        self.width = width
        self.height = height
        self.input: InputPort[av.VideoFrame] = self.add_input("input")
        self.images: list[Snapshot] = []
        self._reformatter = VideoReformatter()

    async def run(self) -> None:
        next_capture = 0.0
        while (frame := await self.input.recv()) is not EOS:
            seconds = frame.time if frame.time is not None else self.clock.now()
            if seconds < next_capture:
                continue
            index = len(self.images)
            timestamp_ns = self.clock.wall_ns(seconds)
            when = datetime.fromtimestamp(timestamp_ns / 1e9, UTC)
            path = self.directory / self.image_names(index, when)
            await self.offload(_write_jpeg, self._reformatter, frame, path, self.width, self.height)
            image = Snapshot(index, path, timestamp_ns, seconds)
            self.images.append(image)
            self.post(ImageWritten(self, image))
            while next_capture <= seconds:
                next_capture += self.capture_interval

    def stats(self) -> dict[str, int]:
        return {"images": len(self.images)}
