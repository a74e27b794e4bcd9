"""Bounds-checked rectangle operations on a framebuffer held in a flat byte buffer.

The buffer is a bytearray, a writable memoryview of bytes or an mmap (the shim may hand us shared memory
the guest writes directly). Where the pixels are is described by a `Surface`: a width x height image of
`bytes_per_pixel`-byte pixels, rows `pitch` bytes apart, starting `offset` bytes into the buffer.

Refusal policy: every operation checks the surface against the buffer and the rectangle against the
surface *before* touching anything, and raises `RasterError` (a ValueError) when either does not fit, so a
refused call has written nothing. Callers that take coordinates from a guest clip first (`clip`,
`clip_copy`) and only pass rectangles that fit. Empty rectangles are no-ops.

Work is done a row at a time with slice assignment (or one slice when rows are contiguous); there is no
per-pixel Python loop.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

Buffer = bytearray | memoryview | mmap.mmap


class RasterError(ValueError):
    """A surface that does not fit its buffer or a rectangle that does not fit its surface."""


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned rectangle; (x, y) is the top-left pixel, w x h its size."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    @property
    def empty(self) -> bool:
        return self.w <= 0 or self.h <= 0

    @property
    def area(self) -> int:
        return 0 if self.empty else self.w * self.h

    def intersection(self, other: Rect) -> Rect:
        """The overlap of both rectangles; EMPTY when they do not overlap."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.right, other.right), min(self.bottom, other.bottom)
        if self.empty or other.empty or x1 <= x0 or y1 <= y0:
            return EMPTY
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def union(self, other: Rect) -> Rect:
        """The bounding box of both; an empty operand does not contribute."""
        if self.empty:
            return other if not other.empty else EMPTY
        if other.empty:
            return self
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1, y1 = max(self.right, other.right), max(self.bottom, other.bottom)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def contains(self, other: Rect) -> bool:
        """True when `other` lies inside (an empty rectangle lies inside anything)."""
        if other.empty:
            return True
        return self.x <= other.x and self.y <= other.y and other.right <= self.right and other.bottom <= self.bottom

    def translate(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.w, self.h)


EMPTY = Rect(0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Surface:
    """Where an image lives inside a flat buffer."""

    width: int
    height: int
    pitch: int
    bytes_per_pixel: int
    offset: int = 0

    @property
    def row_bytes(self) -> int:
        return self.width * self.bytes_per_pixel

    @property
    def bounds(self) -> Rect:
        return Rect(0, 0, self.width, self.height)

    @property
    def span(self) -> int:
        """Bytes from the first pixel to one past the last (the last row needs no padding)."""
        if self.width <= 0 or self.height <= 0:
            return 0
        return (self.height - 1) * self.pitch + self.row_bytes

    def problem(self, buffer_size: int) -> str | None:
        """Why this surface does not fit a buffer of `buffer_size` bytes, or None when it does."""
        if self.width < 0 or self.height < 0:
            return f"negative surface size {self.width}x{self.height}"
        if self.bytes_per_pixel <= 0:
            return f"bytes per pixel {self.bytes_per_pixel} is not positive"
        if self.pitch < self.row_bytes:
            return f"pitch {self.pitch} is shorter than a row ({self.row_bytes} bytes)"
        if self.offset < 0:
            return f"negative offset {self.offset}"
        if self.offset + self.span > buffer_size:
            return f"surface needs {self.offset + self.span} bytes, buffer has {buffer_size}"
        return None

    def fits(self, buffer_size: int) -> bool:
        return self.problem(buffer_size) is None


def clip(rect: Rect, width: int, height: int) -> Rect:
    """`rect` cut to a width x height surface (EMPTY when nothing is left)."""
    return rect.intersection(Rect(0, 0, width, height))


def clip_copy(src: Rect, dst_x: int, dst_y: int, width: int, height: int) -> tuple[Rect, int, int]:
    """Cut a copy of `src` to (dst_x, dst_y) so both source and destination lie inside the surface.

    Returns (source rect, dst_x, dst_y) of what is left; the rect is EMPTY when nothing is.
    """
    if src.empty:
        return EMPTY, dst_x, dst_y
    cut_left = max(0, -src.x, -dst_x)
    cut_top = max(0, -src.y, -dst_y)
    sx, sy, dx, dy = src.x + cut_left, src.y + cut_top, dst_x + cut_left, dst_y + cut_top
    w = min(src.w - cut_left, width - sx, width - dx)
    h = min(src.h - cut_top, height - sy, height - dy)
    if w <= 0 or h <= 0:
        return EMPTY, dst_x, dst_y
    return Rect(sx, sy, w, h), dx, dy


def pixel_bytes(color: int, bytes_per_pixel: int) -> bytes:
    """One pixel of `color` in little-endian order; bits above the pixel size are dropped."""
    return (color & ((1 << (8 * bytes_per_pixel)) - 1)).to_bytes(bytes_per_pixel, "little")


def _check(buf: Buffer, surface: Surface, rect: Rect) -> None:
    problem = surface.problem(len(buf))
    if problem:
        raise RasterError(problem)
    if rect.w < 0 or rect.h < 0:
        raise RasterError(f"negative rectangle size {rect}")
    if not rect.empty and not surface.bounds.contains(rect):
        raise RasterError(f"{rect} is outside the {surface.width}x{surface.height} surface")


def _start(surface: Surface, x: int, y: int) -> int:
    return surface.offset + y * surface.pitch + x * surface.bytes_per_pixel


def _contiguous(surface: Surface, rect: Rect) -> bool:
    """True when the rectangle's rows follow each other without gaps in the buffer."""
    return rect.h == 1 or (rect.x == 0 and rect.w == surface.width and surface.pitch == surface.row_bytes)


def fill(buf: Buffer, surface: Surface, rect: Rect, color: int) -> None:
    """Set every pixel of `rect` to `color` (in the surface's pixel format, little-endian)."""
    _check(buf, surface, rect)
    if rect.empty:
        return
    row = pixel_bytes(color, surface.bytes_per_pixel) * rect.w
    n = len(row)
    start = _start(surface, rect.x, rect.y)
    if _contiguous(surface, rect):
        buf[start : start + n * rect.h] = row * rect.h
        return
    pitch = surface.pitch
    for o in range(start, start + rect.h * pitch, pitch):
        buf[o : o + n] = row


def read_rect(buf: Buffer, surface: Surface, rect: Rect) -> bytes:
    """The pixels of `rect` as packed rows (w * bytes_per_pixel bytes each, no padding)."""
    _check(buf, surface, rect)
    if rect.empty:
        return b""
    n = rect.w * surface.bytes_per_pixel
    start = _start(surface, rect.x, rect.y)
    view = memoryview(buf)  # slicing a view copies nothing: the rows are copied once, by the join
    if _contiguous(surface, rect):
        return bytes(view[start : start + n * rect.h])
    pitch = surface.pitch
    return b"".join([view[o : o + n] for o in range(start, start + rect.h * pitch, pitch)])


def write_rect(buf: Buffer, surface: Surface, rect: Rect, data: bytes | bytearray | memoryview) -> None:
    """Store packed rows (as `read_rect` returns them) into `rect`; `data` must be exactly that size."""
    _check(buf, surface, rect)
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    n = rect.w * surface.bytes_per_pixel
    expected = n * rect.h
    if len(view) != expected:
        raise RasterError(f"{len(view)} bytes of pixel data for {rect}, which needs {expected}")
    if rect.empty:
        return
    start = _start(surface, rect.x, rect.y)
    target = memoryview(buf)  # row stores into a view skip bytearray's resize checks
    if _contiguous(surface, rect):
        target[start : start + expected] = view
        return
    pitch = surface.pitch
    for i, o in enumerate(range(start, start + rect.h * pitch, pitch)):
        target[o : o + n] = view[i * n : (i + 1) * n]


def copy(buf: Buffer, surface: Surface, src: Rect, dst_x: int, dst_y: int) -> None:
    """Copy the pixels of `src` so its top-left lands on (dst_x, dst_y); overlap is handled (memmove).

    The source is read completely before anything is written, which makes every overlap safe.
    """
    dst = Rect(dst_x, dst_y, src.w, src.h)
    _check(buf, surface, src)
    _check(buf, surface, dst)
    if src.empty or (src.x == dst_x and src.y == dst_y):
        return
    write_rect(buf, surface, dst, read_rect(buf, surface, src))


def changed_tiles(
    new: Buffer | bytes, new_surface: Surface, old: Buffer | bytes, old_surface: Surface, tile: int
) -> list[Rect]:
    """Where two images of the same size differ, tile by tile: per band of `tile` rows, the runs of horizontally
    adjacent tiles that differ, cut to the band's first..last differing row (coordinates relative to the images'
    own top-left). Whole rows are compared first, tiles only on the rows that differ: about one comparison per
    row, plus one per tile when everything changed. Comparisons slice the buffers themselves (a copy, but
    compared with memcmp; a memoryview compares byte by byte). The one tile diff of the shim: what it sends
    (tile diff against the service's shadow) and the VRAM scan (against the last accounted framebuffer)."""
    width, height, row = new_surface.width, new_surface.height, new_surface.row_bytes
    tile_bytes = tile * new_surface.bytes_per_pixel
    columns = -(-width // tile)  # the last one may be narrower
    out: list[Rect] = []
    for y0 in range(0, height, tile):
        rows = []  # (y, start in new, start in old) of the rows that differ
        for y in range(y0, min(height, y0 + tile)):
            a = new_surface.offset + y * new_surface.pitch
            b = old_surface.offset + y * old_surface.pitch
            if new[a : a + row] != old[b : b + row]:
                rows.append((y, a, b))
        if not rows:
            continue
        hit = [
            any(new[a + x : a + end] != old[b + x : b + end] for _, a, b in rows)
            for x, end in ((x, min(x + tile_bytes, row)) for x in range(0, row, tile_bytes))
        ]
        top, bottom = rows[0][0], rows[-1][0]
        c = 0
        while c < columns:
            if not hit[c]:
                c += 1
                continue
            first = c
            while c < columns and hit[c]:
                c += 1
            x = first * tile
            out.append(Rect(x, top, min(width, c * tile) - x, bottom - top + 1))
    return out
