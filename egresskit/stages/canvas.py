"""Drawing on yuv420p pictures with numpy: solid boxes and (semi-transparent) patches.

The compositor draws straight into the planes of the frame it emits, so a
picture is three numpy views: full-size luma and half-size chroma. Every
coordinate and size here is even, so luma and chroma edges line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from egresskit.stages.layout import RGB, Rect

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]

# BT.601 limited range, what x264 and decoders assume for untagged yuv420p
_RGB_TO_Y = np.array([65.481, 128.553, 24.966]) / 255
_RGB_TO_U = np.array([-37.797, -74.203, 112.0]) / 255
_RGB_TO_V = np.array([112.0, -93.786, -18.214]) / 255


def rgb_to_yuv(rgb: RGB) -> tuple[int, int, int]:
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


def frame_planes(frame: av.VideoFrame) -> Planes:
    """Writable numpy views of a yuv420p frame's planes (rows may be padded: sliced off)."""
    views = []
    for plane in frame.planes:
        data = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        views.append(data[: plane.height, : plane.width])
    return views[0], views[1], views[2]


def blank_planes(width: int, height: int, rgb: RGB) -> Planes:
    y, u, v = rgb_to_yuv(rgb)
    return (
        np.full((height, width), y, np.uint8),
        np.full((height // 2, width // 2), u, np.uint8),
        np.full((height // 2, width // 2), v, np.uint8),
    )


def fill(planes: Planes, rect: Rect, rgb: RGB) -> None:
    y, u, v = rgb_to_yuv(rgb)
    planes[0][rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = y
    cy, cx, ch, cw = rect.y // 2, rect.x // 2, rect.height // 2, rect.width // 2
    planes[1][cy : cy + ch, cx : cx + cw] = u
    planes[2][cy : cy + ch, cx : cx + cw] = v


def paste(planes: Planes, source: Planes, x: int, y: int) -> None:
    """Copy a picture's planes at (x, y)."""
    h, w = source[0].shape
    planes[0][y : y + h, x : x + w] = source[0]
    planes[1][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = source[1]
    planes[2][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = source[2]


@dataclass(frozen=True, slots=True)
class Patch:
    """A small picture drawn once (text, icons) and laid over frames many times.

    Stored premultiplied in 8.8 fixed point: drawing is one multiply-add per
    sample, `under * keep + colour >> 8`, with no floating point per frame.
    An opaque patch (`keep` is None) is a plain copy.
    """

    width: int
    height: int
    colour: Planes  # premultiplied Y, U, V times 256 (uint32), or plain uint8 when opaque
    keep: tuple[np.ndarray, np.ndarray] | None  # 256 * (1 - alpha) for luma and chroma

    def draw(self, planes: Planes, x: int, y: int) -> None:
        if self.keep is None:
            paste(planes, self.colour, x, y)
            return
        h, w = self.height, self.width
        targets = (
            planes[0][y : y + h, x : x + w],
            planes[1][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2],
            planes[2][y // 2 : (y + h) // 2, x // 2 : (x + w) // 2],
        )
        for target, colour, keep in zip(
            targets, self.colour, (self.keep[0], self.keep[1], self.keep[1]), strict=True
        ):
            target[...] = (target * keep + colour) >> 8


def rgba_patch(image: np.ndarray) -> Patch:
    """A Patch from an RGBA uint8 array of even width and height."""
    height, width = image.shape[:2]
    assert not (width % 2 or height % 2), "patches need even sizes"
    rgb = image[..., :3].astype(np.float64)
    alpha = image[..., 3].astype(np.float64) / 255
    y = 16 + rgb @ _RGB_TO_Y
    u = 128 + rgb @ _RGB_TO_U
    v = 128 + rgb @ _RGB_TO_V
    if alpha.min() >= 1.0:
        return Patch(
            width,
            height,
            (
                _to_u8(y),
                _to_u8(_half(u)),
                _to_u8(_half(v)),
            ),
            None,
        )
    alpha_c = _half(alpha)
    colour = (
        np.rint(y * alpha * 256).astype(np.uint32),
        np.rint(_half(u * alpha) * 256).astype(np.uint32),
        np.rint(_half(v * alpha) * 256).astype(np.uint32),
    )
    keep = (
        np.rint((1 - alpha) * 256).astype(np.uint32),
        np.rint((1 - alpha_c) * 256).astype(np.uint32),
    )
    return Patch(width, height, colour, keep)


def _half(plane: np.ndarray) -> np.ndarray:
    """2x2 average: chroma (and alpha) at half resolution."""
    h, w = plane.shape
    return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _to_u8(plane: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(plane), 0, 255).astype(np.uint8)
