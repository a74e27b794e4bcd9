"""Framebuffer rectangle operations, checked pixel by pixel against a plain-Python reference."""

from __future__ import annotations

import mmap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import raster
from services.common.raster import EMPTY, RasterError, Rect, Surface

SENTINEL = 0xA5
BPP = 4
W, H = 9, 7
SURF = Surface(W, H, pitch=W * BPP + 6, bytes_per_pixel=BPP, offset=5)  # padded rows, not at offset 0
BUF_SIZE = SURF.offset + SURF.span + 11


def pattern(x: int, y: int) -> int:
    return 0x10000000 | (y << 16) | (x << 8) | (x ^ y)


def make_buffer(surface: Surface = SURF, size: int = BUF_SIZE) -> tuple[bytearray, list[list[int]]]:
    """A buffer full of SENTINEL with a recognisable pattern in the surface, and the same as a 2D list."""
    buf = bytearray([SENTINEL]) * size
    ref = [[pattern(x, y) for x in range(surface.width)] for y in range(surface.height)]
    for y, row in enumerate(ref):
        for x, v in enumerate(row):
            o = surface.offset + y * surface.pitch + x * surface.bytes_per_pixel
            buf[o : o + surface.bytes_per_pixel] = v.to_bytes(4, "little")[: surface.bytes_per_pixel]
    return buf, ref


def pixels(buf: bytearray | memoryview | mmap.mmap, surface: Surface = SURF) -> list[list[int]]:
    out = []
    for y in range(surface.height):
        row = []
        for x in range(surface.width):
            o = surface.offset + y * surface.pitch + x * surface.bytes_per_pixel
            row.append(int.from_bytes(buf[o : o + surface.bytes_per_pixel], "little"))
        out.append(row)
    return out


def outside_intact(buf: bytearray | memoryview | mmap.mmap, surface: Surface = SURF) -> bool:
    """Every byte that is not a pixel of the surface still holds SENTINEL."""
    inside = set()
    for y in range(surface.height):
        start = surface.offset + y * surface.pitch
        inside.update(range(start, start + surface.row_bytes))
    return all(buf[i] == SENTINEL for i in range(len(buf)) if i not in inside)


def ref_fill(ref: list[list[int]], r: Rect, color: int) -> None:
    for y in range(r.y, r.bottom):
        for x in range(r.x, r.right):
            ref[y][x] = color


def ref_copy(ref: list[list[int]], src: Rect, dx: int, dy: int) -> None:
    snapshot = [row[:] for row in ref]
    for j in range(src.h):
        for i in range(src.w):
            ref[dy + j][dx + i] = snapshot[src.y + j][src.x + i]


# ----------------------------------------------------------------------------------------------- Rect
def test_rect_geometry() -> None:
    a, b = Rect(2, 3, 10, 5), Rect(8, 1, 10, 4)
    assert (a.right, a.bottom, a.area) == (12, 8, 50)
    assert a.intersection(b) == Rect(8, 3, 4, 2)
    assert b.intersection(a) == Rect(8, 3, 4, 2)
    assert a.union(b) == Rect(2, 1, 16, 7)
    assert a.intersection(Rect(12, 3, 5, 5)) == EMPTY  # touching edges do not overlap
    assert EMPTY.union(a) == a and a.union(Rect(50, 50, 0, 3)) == a
    assert Rect(0, 0, -3, 4).empty and Rect(0, 0, -3, 4).area == 0
    assert a.contains(Rect(2, 3, 10, 5)) and not a.contains(Rect(2, 3, 11, 5)) and a.contains(EMPTY)
    assert a.translate(-2, 1) == Rect(0, 4, 10, 5)


@given(
    st.tuples(*[st.integers(-20, 20)] * 2, *[st.integers(-3, 20)] * 2),
    st.tuples(*[st.integers(-20, 20)] * 2, *[st.integers(-3, 20)] * 2),
)
def test_rect_intersection_matches_point_sets(ra: tuple[int, ...], rb: tuple[int, ...]) -> None:
    a, b = Rect(*ra), Rect(*rb)

    def points(r: Rect) -> set[tuple[int, int]]:
        return {(x, y) for x in range(r.x, r.right) for y in range(r.y, r.bottom)}

    assert points(a.intersection(b)) == points(a) & points(b)
    assert a.union(b).contains(a) and a.union(b).contains(b)


def test_clip_and_clip_copy() -> None:
    assert raster.clip(Rect(-2, -3, 5, 5), 4, 4) == Rect(0, 0, 3, 2)
    assert raster.clip(Rect(10, 0, 5, 5), 4, 4) == EMPTY
    assert raster.clip(Rect(1, 1, 2**32, 2**32), 4, 4) == Rect(1, 1, 3, 3)
    # Source and destination both cut so that each stays inside.
    assert raster.clip_copy(Rect(0, 0, 4, 4), 2, 3, 5, 5) == (Rect(0, 0, 3, 2), 2, 3)
    assert raster.clip_copy(Rect(3, 0, 4, 4), 0, 0, 5, 5) == (Rect(3, 0, 2, 4), 0, 0)
    assert raster.clip_copy(Rect(-1, -1, 3, 3), 1, 1, 5, 5) == (Rect(0, 0, 2, 2), 2, 2)
    assert raster.clip_copy(Rect(0, 0, 2, 2), 5, 0, 5, 5)[0] == EMPTY


@given(
    st.integers(-12, 12), st.integers(-12, 12), st.integers(0, 14), st.integers(0, 14),
    st.integers(-12, 12), st.integers(-12, 12),
)  # fmt: skip
def test_clip_copy_keeps_exactly_the_pixels_that_fit(sx: int, sy: int, w: int, h: int, dx: int, dy: int) -> None:
    src, (cw, ch) = Rect(sx, sy, w, h), (W, H)
    got, gx, gy = raster.clip_copy(src, dx, dy, cw, ch)
    expected = {
        (sx + i, sy + j)
        for i in range(w)
        for j in range(h)
        if 0 <= sx + i < cw and 0 <= sy + j < ch and 0 <= dx + i < cw and 0 <= dy + j < ch
    }
    kept = {(x, y) for x in range(got.x, got.right) for y in range(got.y, got.bottom)}
    assert kept == expected
    if not got.empty:
        assert (gx - got.x, gy - got.y) == (dx - sx, dy - sy)


# ----------------------------------------------------------------------------------------------- ops
def test_fill_matches_reference_and_leaves_padding() -> None:
    buf, ref = make_buffer()
    r = Rect(2, 1, 5, 4)
    raster.fill(buf, SURF, r, 0xDEADBEEF)
    ref_fill(ref, r, 0xDEADBEEF)
    assert pixels(buf) == ref
    assert outside_intact(buf)


def test_fill_full_width_contiguous_surface() -> None:
    surf = Surface(6, 5, pitch=24, bytes_per_pixel=4, offset=3)
    buf, ref = make_buffer(surf, surf.offset + surf.span + 7)
    raster.fill(buf, surf, Rect(0, 1, 6, 3), 0x01020304)
    ref_fill(ref, Rect(0, 1, 6, 3), 0x01020304)
    assert pixels(buf, surf) == ref and outside_intact(buf, surf)


@pytest.mark.parametrize("bpp", [1, 2, 3, 4])
def test_fill_uses_low_bytes_of_color_for_small_pixels(bpp: int) -> None:
    surf = Surface(4, 3, pitch=4 * bpp + 2, bytes_per_pixel=bpp, offset=1)
    buf, ref = make_buffer(surf, surf.offset + surf.span + 3)
    raster.fill(buf, surf, Rect(1, 1, 2, 2), 0xAABBCCDD)
    ref_fill(ref, Rect(1, 1, 2, 2), 0xAABBCCDD & ((1 << (8 * bpp)) - 1))
    for row in ref:
        row[:] = [v & ((1 << (8 * bpp)) - 1) for v in row]
    assert pixels(buf, surf) == ref and outside_intact(buf, surf)


@pytest.mark.parametrize("dx", [-3, -1, 0, 1, 3])
@pytest.mark.parametrize("dy", [-2, -1, 0, 1, 2])
def test_overlapping_copy_behaves_like_memmove(dx: int, dy: int) -> None:
    buf, ref = make_buffer()
    src = Rect(3, 2, 3, 3)
    raster.copy(buf, SURF, src, src.x + dx, src.y + dy)
    ref_copy(ref, src, src.x + dx, src.y + dy)
    assert pixels(buf) == ref
    assert outside_intact(buf)


def test_read_and_write_rect_round_trip() -> None:
    buf, ref = make_buffer()
    r = Rect(1, 2, 3, 4)
    data = raster.read_rect(buf, SURF, r)
    assert data == b"".join(ref[y][x].to_bytes(4, "little") for y in range(2, 6) for x in range(1, 4))
    new = bytes(range(len(data)))
    raster.write_rect(buf, SURF, Rect(5, 0, 3, 4), new)
    assert raster.read_rect(buf, SURF, Rect(5, 0, 3, 4)) == new
    assert outside_intact(buf)
    assert raster.read_rect(buf, SURF, Rect(0, 0, 0, 3)) == b""


def test_write_rect_refuses_wrong_length() -> None:
    buf, _ = make_buffer()
    before = bytes(buf)
    with pytest.raises(RasterError):
        raster.write_rect(buf, SURF, Rect(0, 0, 2, 2), b"\0" * 15)
    assert bytes(buf) == before


@pytest.mark.parametrize(
    "rect",
    [Rect(-1, 0, 2, 2), Rect(0, -1, 2, 2), Rect(8, 0, 2, 1), Rect(0, 6, 1, 2), Rect(0, 0, W + 1, 1), Rect(0, 0, -1, 2)],
)
def test_out_of_bounds_is_refused_without_writing(rect: Rect) -> None:
    buf, _ = make_buffer()
    before = bytes(buf)
    with pytest.raises(RasterError):
        raster.fill(buf, SURF, rect, 0)
    with pytest.raises(RasterError):
        raster.copy(buf, SURF, rect, 0, 0)
    if not rect.empty:  # the same rectangle as a destination
        with pytest.raises(RasterError):
            raster.copy(buf, SURF, Rect(0, 0, rect.w, rect.h), rect.x, rect.y)
    with pytest.raises(RasterError):
        raster.read_rect(buf, SURF, rect)
    assert bytes(buf) == before


@pytest.mark.parametrize(
    "surface",
    [
        Surface(4, 4, pitch=15, bytes_per_pixel=4),  # pitch shorter than a row
        Surface(4, 4, pitch=16, bytes_per_pixel=4, offset=BUF_SIZE - 60),  # runs past the end
        Surface(4, 4, pitch=16, bytes_per_pixel=4, offset=-1),
        Surface(4, 4, pitch=16, bytes_per_pixel=0),
        Surface(-1, 4, pitch=16, bytes_per_pixel=4),
    ],
)
def test_surface_that_does_not_fit_is_refused(surface: Surface) -> None:
    buf = bytearray([SENTINEL]) * BUF_SIZE
    assert not surface.fits(len(buf))
    with pytest.raises(RasterError):
        raster.fill(buf, surface, Rect(0, 0, 1, 1), 0)
    assert all(b == SENTINEL for b in buf)


def test_last_row_needs_no_padding() -> None:
    surf = Surface(2, 2, pitch=100, bytes_per_pixel=4)
    assert surf.fits(108) and not surf.fits(107)
    buf = bytearray(108)
    raster.fill(buf, surf, Rect(0, 0, 2, 2), 0xFFFFFFFF)
    assert buf[100:108] == b"\xff" * 8 and buf[8:100] == bytes(92)


@pytest.mark.parametrize("kind", ["memoryview", "mmap"])
def test_other_buffer_types(kind: str) -> None:
    base, ref = make_buffer()
    if kind == "mmap":
        buf = mmap.mmap(-1, len(base))
        buf[:] = base
    else:
        buf = memoryview(bytearray(base))
    raster.fill(buf, SURF, Rect(0, 0, 2, 2), 7)
    ref_fill(ref, Rect(0, 0, 2, 2), 7)
    raster.copy(buf, SURF, Rect(0, 0, 5, 5), 1, 1)
    ref_copy(ref, Rect(0, 0, 5, 5), 1, 1)
    raster.write_rect(buf, SURF, Rect(7, 5, 2, 2), memoryview(bytes(16)).cast("I"))
    ref_fill(ref, Rect(7, 5, 2, 2), 0)
    assert pixels(buf) == ref
    assert raster.read_rect(buf, SURF, Rect(0, 0, 2, 1)) == b"\x07\0\0\0" * 2
    assert outside_intact(buf)
    if kind == "mmap":
        buf.close()


ops = st.one_of(
    st.tuples(st.just("fill"), *[st.integers(-3, 12)] * 4, st.integers(0, 2**32 - 1)),
    st.tuples(st.just("copy"), *[st.integers(-3, 12)] * 6),
)


@settings(max_examples=300)
@given(st.lists(ops, max_size=6))
def test_random_operations_match_reference_or_refuse(seq: list[tuple]) -> None:
    buf, ref = make_buffer()
    for op in seq:
        before = bytes(buf)
        if op[0] == "fill":
            _, x, y, w, h, color = op
            r = Rect(x, y, w, h)
            ok = w >= 0 and h >= 0 and (r.empty or SURF.bounds.contains(r))
            try:
                raster.fill(buf, SURF, r, color)
            except RasterError:
                assert not ok and bytes(buf) == before
                continue
            assert ok
            ref_fill(ref, r, color)
        else:
            _, sx, sy, w, h, dx, dy = op
            src, dst = Rect(sx, sy, w, h), Rect(dx, dy, w, h)
            ok = w >= 0 and h >= 0 and (src.empty or (SURF.bounds.contains(src) and SURF.bounds.contains(dst)))
            try:
                raster.copy(buf, SURF, src, dx, dy)
            except RasterError:
                assert not ok and bytes(buf) == before
                continue
            assert ok
            if not src.empty:
                ref_copy(ref, src, dx, dy)
        assert pixels(buf) == ref
    assert outside_intact(buf)
