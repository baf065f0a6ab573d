"""Room composite layouts: their names, themes and where each tile goes.

Names follow LiveKit's room composite templates: `grid` (also for an empty
name), `speaker` and `single-speaker`, each optionally suffixed `-dark`
(the default) or `-light`. Everything here is pure geometry on even pixel
edges, so every tile maps onto whole chroma samples of a yuv420p picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RGB = tuple[int, int, int]

GRID = "grid"
SPEAKER = "speaker"
SINGLE_SPEAKER = "single-speaker"
ARRANGEMENTS = (GRID, SPEAKER, SINGLE_SPEAKER)

# A grid shows at most this many tiles; past it the last one reads "+N".
MAX_GRID_TILES = 16
# Tiles are cut to the usual camera shape; other shapes are letterboxed inside.
TILE_ASPECT = 16 / 9
# The speaker strip takes this share of the long side...
STRIP_SHARE = 0.2
# ... and holds at least this many tiles (portrait canvases: smaller tiles).
STRIP_MIN_TILES = 4


@dataclass(frozen=True, slots=True)
class Theme:
    """Colours of one theme (sRGB; label background with its opacity 0..255)."""

    name: str
    background: RGB
    tile: RGB
    text: RGB
    label: RGB
    label_opacity: int
    muted: RGB
    highlight: RGB


DARK = Theme(
    "dark",
    background=(18, 18, 22),
    tile=(44, 45, 52),
    text=(240, 240, 244),
    label=(0, 0, 0),
    label_opacity=150,
    muted=(235, 72, 72),
    highlight=(64, 150, 255),
)
LIGHT = Theme(
    "light",
    background=(238, 239, 243),
    tile=(208, 211, 219),
    text=(28, 29, 34),
    label=(255, 255, 255),
    label_opacity=210,
    muted=(214, 48, 48),
    highlight=(24, 110, 235),
)
THEMES = {DARK.name: DARK, LIGHT.name: LIGHT}


@dataclass(frozen=True, slots=True)
class Layout:
    """A parsed layout name: how tiles are arranged and in which theme."""

    arrangement: str
    theme: Theme

    @property
    def name(self) -> str:
        return self.arrangement if self.theme is DARK else f"{self.arrangement}-{self.theme.name}"


LAYOUT_NAMES = frozenset(
    [""] + [a + suffix for a in ARRANGEMENTS for suffix in ("", "-dark", "-light")]
)


def parse_layout(name: str) -> Layout:
    """The layout a LiveKit layout name asks for; ValueError for anything else."""
    if name not in LAYOUT_NAMES:
        raise ValueError(
            f"unknown layout {name!r}: use grid, speaker or single-speaker, "
            "optionally with -light or -dark"
        )
    theme = DARK
    for candidate in THEMES.values():
        if name.endswith("-" + candidate.name):
            theme = candidate
            name = name.removesuffix("-" + candidate.name)
    return Layout(name or GRID, theme)


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where tiles go: `rects[i]` is tile i (the focus first in speaker arrangements).

    When `hidden` is non-zero the last rect is not a tile of its own but the
    overflow tile reading "+hidden".
    """

    rects: tuple[Rect, ...]
    hidden: int = 0

    @property
    def shown(self) -> int:
        """How many tiles get their own rect."""
        return len(self.rects) - (1 if self.hidden else 0)


def _even(value: float) -> int:
    return max(2, int(value) & ~1)


def gap_for(width: int, height: int) -> int:
    """The space between tiles and around them: about 1 % of the short side, even."""
    return max(4, _even(min(width, height) / 90))


def _tile_size(cell_width: float, cell_height: float, aspect: float) -> tuple[int, int]:
    height = _even(min(cell_width / aspect, cell_height))
    return _even(min(cell_width, height * aspect + 0.5)), height


def grid_rects(count: int, width: int, height: int, aspect: float = TILE_ASPECT) -> list[Rect]:
    """A balanced grid of equal tiles, centred, the last row centred too.

    The column count is the one that gives the largest tiles (ties go to
    more columns), so two tiles sit side by side on a landscape canvas and
    stack on a portrait one.
    """
    if count <= 0:
        return []
    gap = gap_for(width, height)
    best: tuple[int, int, int, int] | None = None
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        tile_w, tile_h = _tile_size(
            (width - (cols + 1) * gap) / cols, (height - (rows + 1) * gap) / rows, aspect
        )
        if best is None or tile_w * tile_h >= best[2] * best[3]:
            best = (cols, rows, tile_w, tile_h)
    assert best is not None
    cols, rows, tile_w, tile_h = best
    top = (height - rows * tile_h - (rows - 1) * gap) // 2 & ~1
    rects = []
    for index in range(count):
        row, col = divmod(index, cols)
        in_row = min(cols, count - row * cols)
        left = (width - in_row * tile_w - (in_row - 1) * gap) // 2 & ~1
        rects.append(Rect(left + col * (tile_w + gap), top + row * (tile_h + gap), tile_w, tile_h))
    return rects


def _speaker_rects(count: int, width: int, height: int, aspect: float) -> list[Rect]:
    """The focus large, then up to `strip_capacity` small tiles beside it (right or below)."""
    if count <= 1:
        return grid_rects(count, width, height, aspect)
    gap = gap_for(width, height)
    landscape = width >= height
    long_side, short_side = (width, height) if landscape else (height, width)
    strip = _even((long_side - 3 * gap) * STRIP_SHARE)
    along = (short_side - (STRIP_MIN_TILES + 1) * gap) / STRIP_MIN_TILES
    if landscape:
        small_w, small_h = _tile_size(strip, along, aspect)
    else:
        small_w, small_h = _tile_size(along, strip, aspect)
    step = (small_h if landscape else small_w) + gap
    capacity = max(1, (short_side - gap) // step)
    others = min(count - 1, capacity)
    run = others * step - gap
    start = (short_side - run) // 2 & ~1
    if landscape:
        main_area = Rect(gap, gap, width - 3 * gap - small_w, height - 2 * gap)
        strip_x = width - gap - small_w
        smalls = [Rect(strip_x, start + i * step, small_w, small_h) for i in range(others)]
    else:
        main_area = Rect(gap, gap, width - 2 * gap, height - 3 * gap - small_h)
        strip_y = height - gap - small_h
        smalls = [Rect(start + i * step, strip_y, small_w, small_h) for i in range(others)]
    main_w, main_h = _tile_size(main_area.width, main_area.height, aspect)
    main = Rect(
        main_area.x + ((main_area.width - main_w) // 2 & ~1),
        main_area.y + ((main_area.height - main_h) // 2 & ~1),
        main_w,
        main_h,
    )
    return [main, *smalls]


def place(
    arrangement: str, count: int, width: int, height: int, aspect: float = TILE_ASPECT
) -> Placement:
    """Where `count` tiles go in an arrangement, with an overflow tile when they do not fit."""
    if count <= 0:
        return Placement(())
    if arrangement == SINGLE_SPEAKER:
        return Placement(tuple(grid_rects(1, width, height, aspect)))
    if arrangement == SPEAKER:
        rects = _speaker_rects(count, width, height, aspect)
    else:
        rects = grid_rects(min(count, MAX_GRID_TILES), width, height, aspect)
    hidden = count - len(rects)
    if hidden > 0:
        # the last place shows how many more there are, so one more tile is hidden
        hidden += 1
    return Placement(tuple(rects), max(0, hidden))


def fit(src_width: int, src_height: int, rect: Rect, tolerance: float = 0.02) -> Rect:
    """The largest rectangle of the source's shape centred in `rect` (even edges).

    A source within `tolerance` of the rect's shape fills it exactly: a
    sliver of letterbox is uglier than an invisible stretch.
    """
    scale = min(rect.width / src_width, rect.height / src_height)
    w = min(rect.width, _even(src_width * scale + 0.5))
    h = min(rect.height, _even(src_height * scale + 0.5))
    if w >= rect.width * (1 - tolerance) and h >= rect.height * (1 - tolerance):
        return rect
    x = rect.x + ((rect.width - w) // 2 & ~1)
    y = rect.y + ((rect.height - h) // 2 & ~1)
    return Rect(x, y, w, h)
