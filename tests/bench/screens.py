"""The screen contents the display benchmarks and the codec comparison use, as packed BGRX bytes (32 bpp).

- `text_window`: a 640x480 application window: coloured title bar, a grey menu line, 27 lines of glyph text of
  varied length on white, a scrollbar (the kind of update an editor or a terminal sends).
- `photo`: gradients plus noise shared by the three channels and a little per-channel noise (a photo or a video
  still: high entropy, smooth underneath).
- `tooltip`: a 200x100 yellow box with a border and 6 short text lines.
- `desktop_text`: the display benchmark's desktop window variants (white page, title bar, shifted text rows).

The glyphs are the scripted guest's (5x7 patterns at twice the size): text with the statistics of a font.
Every function is deterministic for a given seed.
"""

from __future__ import annotations

import random

import numpy as np

from frontend_shim.guests.scripted_svga import CELL_H, CELL_W, GLYPH_H, GLYPH_SCALE, GLYPH_W, _make_glyphs

_GLYPHS = _make_glyphs(random.Random(1))


def _canvas(w: int, h: int, color: int) -> np.ndarray:
    """A w x h image of one XRGB colour, as a (h, w) uint32 array."""
    return np.full((h, w), color, dtype=np.uint32)


def _text(img: np.ndarray, x: int, y: int, text: str, fg: int) -> None:
    """Draw `text` with the scripted guest's glyphs; top-left of the first cell at (x, y); clipped."""
    h, w = img.shape
    for i, ch in enumerate(text):
        if ch == " ":
            continue
        glyph = _GLYPHS[ord(ch) % len(_GLYPHS)]
        cx = x + i * CELL_W
        for gy, bits in enumerate(glyph):
            for gx in range(GLYPH_W):
                if bits >> gx & 1:
                    px, py = cx + gx * GLYPH_SCALE, y + GLYPH_SCALE + gy * GLYPH_SCALE
                    if px + GLYPH_SCALE <= w and py + GLYPH_SCALE <= h:
                        img[py : py + GLYPH_SCALE, px : px + GLYPH_SCALE] = fg


def _words(rng: random.Random, chars: int) -> str:
    out = ""
    while len(out) < chars:
        out += "".join(chr(97 + rng.randrange(26)) for _ in range(rng.randint(1, 9))) + " "
    return out[:chars]


def _bytes(img: np.ndarray) -> bytes:
    return img.astype("<u4").tobytes()


def text_window(w: int = 640, h: int = 480, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = _canvas(w, h, 0xFFFFFF)
    img[:20] = 0x2B5797
    _text(img, 6, 1, "notes.txt - editor", 0xFFFFFF)
    img[20:38] = 0xE8E8E8
    _text(img, 6, 20, "file  edit  view  search  help", 0x202020)
    img[38] = 0xA0A0A0
    cols = (w - 30) // CELL_W
    line_h = CELL_H - GLYPH_SCALE
    for row in range(27):
        y = 42 + row * line_h
        if y + CELL_H > h:
            break
        n = rng.randint(cols // 4, cols) if rng.random() > 0.1 else 0
        _text(img, 6, y, _words(rng, n), 0x101010)
    img[38:, w - 14 :] = 0xF0F0F0  # scrollbar: track, thumb, border
    img[60:160, w - 12 : w - 2] = 0xC0C0C0
    img[38:, w - 15] = 0xD0D0D0
    return _bytes(img)


def tooltip(w: int = 200, h: int = 100, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    img = _canvas(w, h, 0xFFFFE1)
    img[0], img[-1], img[:, 0], img[:, -1] = 0x767676, 0x767676, 0x767676, 0x767676
    for row in range(6):
        _text(img, 4, 2 + row * (GLYPH_H + 1) * GLYPH_SCALE, _words(rng, rng.randint(8, (w - 8) // CELL_W)), 0x000000)
    return _bytes(img)


def photo(w: int = 640, h: int = 480, seed: int = 0) -> bytes:
    """Smooth gradients, noise 0..31 added to every channel, and 0..15 more on one channel (varies by seed)."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int32)
    n = gen.integers(0, 32, size=(h, w), dtype=np.int32)
    b = xx * 255 // max(1, w - 1) + n
    g = yy * 255 // max(1, h - 1) + n
    r = (xx + yy) * 127 // max(1, w + h) + 64 + n
    chans = [b, g, r]
    chans[seed % 3] = chans[seed % 3] ^ gen.integers(0, 16, size=(h, w), dtype=np.int32)
    px = (chans[0] & 0xFF) | (chans[1] & 0xFF) << 8 | (chans[2] & 0xFF) << 16
    return _bytes(px.astype(np.uint32))


def desktop_text(w: int = 640, h: int = 480, seed: int = 0) -> bytes:
    """A window of shifted lines of dense text (the display benchmark's `desktop` content)."""
    rng = random.Random(7)
    img = _canvas(w, h, 0xF0F0F0)
    img[:20] = 0x2B572B
    line = "".join(chr(33 + rng.randrange(94)) if rng.random() > 0.2 else " " for _ in range(w // CELL_W))
    for row in range(1, (h - 24) // CELL_H):
        shift = (row * 7 + seed * 13) % len(line)
        _text(img, 4, 24 + row * CELL_H, line[shift:] + line[:shift], 0x101010)
    return _bytes(img)


CONTENTS = {"text": text_window, "photo": photo, "tooltip": tooltip, "desktop": desktop_text}
