"""A notice drawn over the screen (the pairing PIN) as seven-segment digits: rectangles any presenter can fill,
so showing a PIN needs no font."""

from __future__ import annotations

from services.common.raster import Rect

# Segments a..g of each digit, as (x, y, w, h) in units of a 4x7 cell with a stroke of 1.
_SEGMENTS = {
    "a": (0, 0, 4, 1),
    "b": (3, 0, 1, 4),
    "c": (3, 3, 1, 4),
    "d": (0, 6, 4, 1),
    "e": (0, 3, 1, 4),
    "f": (0, 0, 1, 4),
    "g": (0, 3, 4, 1),
}
_DIGITS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
    "-": "g",
}
CELL_W, CELL_H, GAP = 4, 7, 2


def size(text: str, unit: int) -> tuple[int, int]:
    """Width and height of `text` drawn with `unit` pixels per stroke."""
    n = len(text)
    return (n * CELL_W + max(0, n - 1) * GAP) * unit, CELL_H * unit


def segments(text: str, x: int, y: int, unit: int) -> list[Rect]:
    """The filled rectangles that draw `text` (digits and '-'; other characters leave a blank cell)."""
    out = []
    for i, ch in enumerate(text):
        left = x + i * (CELL_W + GAP) * unit
        for seg in _DIGITS.get(ch, ""):
            sx, sy, sw, sh = _SEGMENTS[seg]
            out.append(Rect(left + sx * unit, y + sy * unit, sw * unit, sh * unit))
    return out


def unit_for(text: str, width: int, height: int) -> int:
    """Pixels per stroke: as large as fits a third of the screen's width and a quarter of its height."""
    return max(2, min(width // 3 // max(1, size(text, 1)[0]), height // 4 // CELL_H))


def layout(text: str, width: int, height: int) -> tuple[Rect, list[Rect]]:
    """A box centred in a width x height screen and the digit rectangles inside it (see `unit_for`)."""
    unit = unit_for(text, width, height)
    tw, th = size(text, unit)
    pad = 2 * unit
    box = Rect((width - tw) // 2 - pad, (height - th) // 2 - pad, tw + 2 * pad, th + 2 * pad)
    return box, segments(text, box.x + pad, box.y + pad, unit)
