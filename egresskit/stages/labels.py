"""Text and icons for composite tiles, drawn with Pillow once and cached as patches.

Name labels, the muted-microphone mark, placeholders for participants
without video and the "+N" overflow tile change rarely, so each is drawn
once per text, size and theme (twice as large, then downsampled, for smooth
edges) and kept as a Patch; a frame only lays the cached patch over the
picture.
"""

from __future__ import annotations

import functools
import hashlib
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from egresskit.stages.canvas import Patch, rgba_patch
from egresskit.stages.layout import RGB, Theme

SUPERSAMPLE = 2
# FreeType faces are not thread-safe and compositors of several graphs draw at once.
_PILLOW_LOCK = threading.Lock()
# Avatar colours for participants without video, picked by identity.
AVATAR_COLOURS: tuple[RGB, ...] = (
    (92, 107, 192),
    (38, 166, 154),
    (239, 108, 0),
    (171, 71, 188),
    (66, 165, 245),
    (120, 144, 156),
    (212, 94, 121),
    (124, 179, 66),
)


@functools.lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled default face: no system font needed
    return ImageFont.load_default(size=px)


def _even_up(value: float) -> int:
    return max(2, (int(np.ceil(value)) + 1) & ~1)


def _shrink(image: Image.Image, width: int, height: int) -> Patch:
    small = image.resize((width, height), Image.Resampling.LANCZOS)
    return rgba_patch(np.asarray(small))


def _fit_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    max_width: float,
) -> str:
    """`text`, cut with an ellipsis to fit `max_width`."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text.rstrip() + "…"


def _mic_off(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, colour: RGB) -> None:
    """A microphone with a slash through it, in a `size` square at (x, y)."""
    line = max(1, round(size / 9))
    body_w = size * 0.36
    left = x + (size - body_w) / 2
    draw.rounded_rectangle(
        (left, y + size * 0.06, left + body_w, y + size * 0.58), radius=body_w / 2, fill=colour
    )
    draw.arc(
        (x + size * 0.18, y + size * 0.22, x + size * 0.82, y + size * 0.76),
        start=0,
        end=180,
        fill=colour,
        width=line,
    )
    draw.line(
        (x + size / 2, y + size * 0.76, x + size / 2, y + size * 0.94), fill=colour, width=line
    )
    draw.line(
        (x + size * 0.12, y + size * 0.06, x + size * 0.88, y + size * 0.94),
        fill=colour,
        width=line + 1,
    )


@functools.lru_cache(maxsize=512)
def label_patch(text: str, mic_muted: bool, theme: Theme, font_px: int, max_width: int) -> Patch:
    """A rounded name label, with the muted-microphone mark first when `mic_muted`."""
    s = SUPERSAMPLE
    with _PILLOW_LOCK:
        font = _font(font_px * s)
        pad = font_px * 0.5 * s
        icon = font_px * 1.05 * s if mic_muted else 0.0
        spacing = font_px * 0.3 * s if mic_muted else 0.0
        height = _even_up(font_px * 1.7)
        scratch = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
        room = max_width * s - 2 * pad - icon - spacing
        shown = _fit_text(scratch, text, font, room) if text else ""
        text_w = scratch.textlength(shown, font=font) if shown else 0.0
        if not shown:
            spacing = 0.0
        width = min(max_width, _even_up((2 * pad + icon + spacing + text_w) / s))
        image = Image.new("RGBA", (width * s, height * s), (*theme.label, 0))
        draw = ImageDraw.Draw(image)
        draw.rounded_rectangle(
            (0, 0, width * s - 1, height * s - 1),
            radius=height * s * 0.3,
            fill=(*theme.label, theme.label_opacity),
        )
        x = pad
        if mic_muted:
            _mic_off(draw, x, (height * s - icon) / 2, icon, theme.muted)
            x += icon + spacing
        if shown:
            draw.text((x, height * s / 2), shown, font=font, fill=(*theme.text, 255), anchor="lm")
        return _shrink(image, width, height)


def initials(name: str) -> str:
    """Up to two letters standing for a name: 'Ada Lovelace' -> 'AL', 'bob' -> 'B'."""
    words = [w for w in name.replace("_", " ").replace("-", " ").split() if w[:1].isalnum()]
    if not words:
        return "?"
    letters = words[0][0] + (words[-1][0] if len(words) > 1 else "")
    return letters.upper()


def avatar_colour(identity: str) -> RGB:
    digest = hashlib.blake2s(identity.encode(), digest_size=1).digest()[0]
    return AVATAR_COLOURS[digest % len(AVATAR_COLOURS)]


@functools.lru_cache(maxsize=128)
def placeholder_patch(name: str, identity: str, theme: Theme, width: int, height: int) -> Patch:
    """A whole tile for someone without video: their initials in a coloured circle."""
    s = SUPERSAMPLE
    with _PILLOW_LOCK:
        image = Image.new("RGBA", (width * s, height * s), (*theme.tile, 255))
        draw = ImageDraw.Draw(image)
        diameter = min(width, height) * 0.42 * s
        cx, cy = width * s / 2, height * s / 2
        box = (cx - diameter / 2, cy - diameter / 2, cx + diameter / 2, cy + diameter / 2)
        draw.ellipse(box, fill=(*avatar_colour(identity), 255))
        font = _font(max(8, round(diameter * 0.4)))
        draw.text((cx, cy), initials(name), font=font, fill=(255, 255, 255, 255), anchor="mm")
        return _shrink(image, width, height)


@functools.lru_cache(maxsize=32)
def overflow_patch(hidden: int, theme: Theme, width: int, height: int) -> Patch:
    """The last grid place when more participants are present than fit: '+N'."""
    s = SUPERSAMPLE
    with _PILLOW_LOCK:
        image = Image.new("RGBA", (width * s, height * s), (*theme.tile, 255))
        draw = ImageDraw.Draw(image)
        font = _font(max(8, round(min(width, height) * 0.3 * s)))
        draw.text(
            (width * s / 2, height * s / 2),
            f"+{hidden}",
            font=font,
            fill=(*theme.text, 255),
            anchor="mm",
        )
        return _shrink(image, width, height)
