"""VideoCompositor: many live tracks into one constant-frame-rate picture."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from egresskit.pipeline import EOS, Stage
from egresskit.stages.layout import Rect, fit, grid_rects
from egresskit.stages.media import TrackEnded, TrackFrame, TrackMuteChanged, TrackStarted

DARK_BACKGROUND = (18, 18, 22)


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited range, the colour space x264 assumes for yuv420p input."""
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


@dataclass(slots=True)
class _Tile:
    """One track's place in the picture and the newest frame it has shown."""

    sid: str
    frame: av.VideoFrame | None = None
    version: int = 0
    muted: bool = False
    scaled: dict[tuple[int, int], tuple[int, np.ndarray]] = field(default_factory=dict)
    # Frames are shared by every graph subscribed to the track: scaling through the
    # frame's own cached reformatter from two compositor threads at once crashes
    # swscale, so each tile owns one.
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)


class VideoCompositor(Stage):
    """Draws the newest frame of every video track into a grid, `fps` times a second.

    Frames are produced on the graph clock, not on arrival: frame n has
    pts n in a 1/fps time base and is emitted when the clock reaches n/fps,
    so the output is constant frame rate and its length equals wall time
    however the sources behave. A stalled track keeps showing its last frame.
    """

    def __init__(
        self,
        width: int = 1280,
        height: int = 720,
        fps: int = 30,
        *,
        background: tuple[int, int, int] = DARK_BACKGROUND,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if width % 2 or height % 2:
            raise ValueError("compositor width and height must be even")
        self.width = width
        self.height = height
        self.fps = fps
        self.time_base = Fraction(1, fps)
        self.input = self.add_input("input")
        self.output = self.add_output("output")
        self._tiles: dict[str, _Tile] = {}
        self._background = self._canvas(background)
        self.frames_out = 0

    def _canvas(self, rgb: tuple[int, int, int]) -> np.ndarray:
        y, u, v = rgb_to_yuv(rgb)
        canvas = np.empty((self.height * 3 // 2, self.width), np.uint8)
        canvas[: self.height] = y
        chroma = self.height // 4
        canvas[self.height : self.height + chroma] = u
        canvas[self.height + chroma :] = v
        return canvas

    async def run(self) -> None:
        intake = asyncio.create_task(self._intake())
        try:
            await self._tick()
        finally:
            intake.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await intake

    async def _intake(self) -> None:
        while True:
            item = await self.input.recv()
            if item is EOS:
                return
            if isinstance(item, TrackFrame):
                tile = self._tiles.get(item.track.sid)
                if tile is not None:
                    tile.frame = item.frame
                    tile.version += 1
            elif isinstance(item, TrackStarted):
                self._tiles.setdefault(item.track.sid, _Tile(item.track.sid))
            elif isinstance(item, TrackEnded):
                self._tiles.pop(item.track.sid, None)
            elif isinstance(item, TrackMuteChanged):
                tile = self._tiles.get(item.track.sid)
                if tile is not None:
                    tile.muted = item.muted

    async def _tick(self) -> None:
        n = 0
        while not self.stopping.is_set():
            await self.clock.sleep_until(n / self.fps)
            if self.stopping.is_set():
                break
            # snapshot in the loop thread: intake may replace frames while the worker draws
            tiles = [(tile, tile.frame, tile.version) for tile in self._tiles.values()]
            frame = await self.offload(self._render, tiles)
            frame.pts = n
            frame.time_base = self.time_base
            await self.output.send(frame)
            n += 1
            self.frames_out = n

    def _render(self, tiles: list[tuple[_Tile, av.VideoFrame | None, int]]) -> av.VideoFrame:
        canvas = self._background.copy()
        h, w = self.height, self.width
        planes = (
            canvas[:h],
            canvas[h : h + h // 4].reshape(h // 2, w // 2),
            canvas[h + h // 4 :].reshape(h // 2, w // 2),
        )
        for (tile, frame, version), rect in zip(tiles, grid_rects(len(tiles), w, h), strict=True):
            if frame is not None:
                self._draw(planes, tile, frame, version, rect)
        return av.VideoFrame.from_ndarray(canvas, format="yuv420p")

    @staticmethod
    def _draw(
        planes: tuple[np.ndarray, ...], tile: _Tile, frame: av.VideoFrame, version: int, rect: Rect
    ) -> None:
        box = fit(frame.width, frame.height, rect)
        key = (box.width, box.height)
        cached = tile.scaled.get(key)
        if cached is None or cached[0] != version:
            # swscale runs without the GIL; the result is reused until a new frame arrives
            scaled = tile.reformatter.reformat(frame, box.width, box.height, "yuv420p")
            data = scaled.to_ndarray()
            tile.scaled = {key: (version, data)}
        else:
            data = cached[1]
        bh, bw = box.height, box.width
        planes[0][box.y : box.y + bh, box.x : box.x + bw] = data[:bh]
        u = data[bh : bh + bh // 4].reshape(bh // 2, bw // 2)
        v = data[bh + bh // 4 :].reshape(bh // 2, bw // 2)
        cy, cx = box.y // 2, box.x // 2
        planes[1][cy : cy + bh // 2, cx : cx + bw // 2] = u
        planes[2][cy : cy + bh // 2, cx : cx + bw // 2] = v

    def stats(self) -> dict[str, int]:
        return {"frames_out": self.frames_out, "tiles": len(self._tiles)}
