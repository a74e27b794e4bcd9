"""A line of text drawn over the picture (the switcher's VM name), rendered with Pillow's built-in font so the
node needs no font files."""

from __future__ import annotations

from functools import lru_cache

MARGIN = 8  # pixels from the window's top-left corner
_SIZE = 20  # font size in pixels
_PAD = 6


@lru_cache(maxsize=1)
def _font():  # noqa: ANN202
    from PIL import ImageFont

    return ImageFont.load_default(size=_SIZE)


def render(text: str) -> tuple[int, int, bytes]:
    """(width, height, ARGB8888 pixels as little-endian B, G, R, A bytes): white text on a dark box."""
    from PIL import Image, ImageDraw

    font = _font()
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left + 2 * _PAD, bottom - top + 2 * _PAD
    image = Image.new("RGBA", (w, h), (16, 16, 48, 220))
    ImageDraw.Draw(image).text((_PAD - left, _PAD - top), text, font=font, fill=(255, 255, 255, 255))
    r, g, b, a = image.split()
    return w, h, Image.merge("RGBA", (b, g, r, a)).tobytes()
