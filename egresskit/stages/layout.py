"""Where each tile of a composite goes."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


def _even(value: float) -> int:
    return max(2, int(value) & ~1)


def grid_rects(count: int, width: int, height: int) -> list[Rect]:
    """A balanced grid: as many columns as the square root, rows filled in order.

    Edges are even so every tile maps onto whole chroma samples.
    """
    if count <= 0:
        return []
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    rects = []
    for index in range(count):
        row, col = divmod(index, cols)
        x0 = _even(col * width / cols) if col else 0
        x1 = _even((col + 1) * width / cols) if col + 1 < cols else width
        y0 = _even(row * height / rows) if row else 0
        y1 = _even((row + 1) * height / rows) if row + 1 < rows else height
        rects.append(Rect(x0, y0, x1 - x0, y1 - y0))
    return rects


def fit(src_width: int, src_height: int, rect: Rect) -> Rect:
    """The largest rectangle of the source's aspect ratio centred in `rect` (even edges)."""
    scale = min(rect.width / src_width, rect.height / src_height)
    w = min(rect.width, _even(src_width * scale))
    h = min(rect.height, _even(src_height * scale))
    x = rect.x + ((rect.width - w) // 2 & ~1)
    y = rect.y + ((rect.height - h) // 2 & ~1)
    return Rect(x, y, w, h)
