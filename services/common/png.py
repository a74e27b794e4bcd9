"""PNG encoding and decoding of 8-bit RGB images with zlib and struct only (screenshots, tests)."""

from __future__ import annotations

import struct
import zlib

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_RGB = 2
_COLOR_RGBA = 6


class PngError(ValueError):
    """Not a PNG this module reads (8-bit RGB/RGBA, not interlaced)."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_rgb(width: int, height: int, rgb: bytes | bytearray | memoryview, level: int = 6) -> bytes:
    """A PNG of packed RGB rows (width * 3 bytes each); filter type 0 on every row."""
    row = width * 3
    if len(rgb) != row * height:
        raise ValueError(f"{len(rgb)} bytes of RGB for {width}x{height}")
    view = memoryview(rgb)
    raw = b"".join(b"\x00" + view[y * row : (y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_RGB, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def bgrx_to_rgb(data: bytes | bytearray | memoryview) -> bytearray:
    """Little-endian 32-bit XRGB pixels (bytes B, G, R, X) to packed RGB, without a per-pixel loop."""
    n = len(data) // 4
    out = bytearray(n * 3)
    out[0::3] = data[2::4]
    out[1::3] = data[1::4]
    out[2::3] = data[0::4]
    return out


def decode(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, packed RGB) of an 8-bit RGB or RGBA PNG (alpha dropped); all five filters."""
    if not png.startswith(_SIGNATURE):
        raise PngError("not a PNG")
    pos, idat, width, height, color = len(_SIGNATURE), [], 0, 0, -1
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data)
            if depth != 8 or color not in (_COLOR_RGB, _COLOR_RGBA) or interlace:
                raise PngError(f"unsupported PNG (depth {depth}, color type {color}, interlace {interlace})")
        elif kind == b"IDAT":
            idat.append(data)
        elif kind == b"IEND":
            break
    bpp = 3 if color == _COLOR_RGB else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        base = y * (stride + 1)
        ftype, line = raw[base], bytearray(raw[base + 1 : base + 1 + stride])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif ftype != 0:
            raise PngError(f"bad filter type {ftype}")
        out[y * stride : (y + 1) * stride] = line
        prev = line
    if bpp == 4:
        rgb = bytearray(width * height * 3)
        rgb[0::3], rgb[1::3], rgb[2::3] = out[0::4], out[1::4], out[2::4]
        return width, height, bytes(rgb)
    return width, height, bytes(out)
