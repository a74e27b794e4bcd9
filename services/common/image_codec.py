"""`image`: a lossless encoding of 32-bit pixel rectangles that sees image structure, then Zstandard.

Generic byte compressors on packed BGRX rows do not see that a text window has a handful of colours, that rows
repeat, or that a photo is smooth underneath its noise. This codec turns the pixels into something that says so,
with a few vectorised numpy passes, and lets Zstandard do the entropy coding. It was chosen by measurement
against QOI, PNG (Pillow, level 1), lossless WebP (Pillow, method 0), a whole-rectangle byte palette and plain
zstd/lz4/lzo on the project's own text, tooltip, desktop and photo content (README, "Lossless pixels"): it is
within a few percent of the best of them on bytes and 5-20x faster than WebP/PNG, which were the only ones as
small.

Payload (all integers little-endian), method byte first:
  0  STORED   zstd frame of the bytes as they are (any length: data that is not whole 32-bit rows, or no width)
  1  PALETTE  u16 width, u8 k-1 (k = 1..16 colours), k x u32 colours, then one zstd frame of n = bits(k-1)
              (at least 1) bit planes: plane b holds bit b of every pixel's palette index, each row packed
              MSB-first into ceil(width/8) bytes, and every packed row XORed with the row above (rows that
              repeat become zeros). Text, UI, tooltips: usually 1-4 planes.
  2  PLANES   u16 width, then one zstd frame of height rows, each of 4 plane rows of width bytes: B-G, G, R-G,
              X (the colour transform takes grey and shared noise out of B and R), every byte minus the one a
              row above (mod 256).
              Photos and gradients: the residual is the noise, which zstd's entropy coder packs.
The encoder takes PALETTE when the rectangle has at most 16 colours (found colour by colour with one numpy
comparison each; a sample of pixels turns a photo away first), else PLANES.

`decode` is as strict as the other codecs (`services.common.codec` calls it inside its own checks): the header
must fit the expected size exactly (width divides it into whole rows), the zstd frame must declare exactly the
size the header implies (checked before anything is decompressed), palette indexes must be below k, and nothing
is allocated beyond a fixed multiple of the expected size. Bad input raises `ImageCodecError`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

STORED, PALETTE, PLANES = 0, 1, 2
MAX_PALETTE = 16
MAX_WIDTH = 0xFFFF
SAMPLE = 512  # pixels looked at before deciding a rectangle might have a palette
ZSTD_LEVEL = 1  # measured: level 3 makes palette planes 14 % larger and planes 0.6 % smaller, and is slower
_BYPP = 4
# byte -> the 8 bytes 0/1 of its bits, most significant first (np.unpackbits' order), as one uint64
_SPREAD = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).view(np.uint64).reshape(256)

Bytes = bytes | bytearray | memoryview
# (payload, expected size) -> bytes: the codec module's bounded zstd decoder / its compressor at ZSTD_LEVEL.
ZstdDecode = Callable[[Bytes, int], bytes]
ZstdEncode = Callable[[Bytes], bytes]


class ImageCodecError(ValueError):
    """An `image` payload that does not decode to exactly the expected pixels."""


# ----------------------------------------------------------------------------------------------- encode
def encode(data: Bytes, width: int, zstd: ZstdEncode) -> bytes:
    """Encode packed 32-bit rows `width` pixels wide (any other shape is STORED)."""
    n = len(data)
    if not 0 < width <= MAX_WIDTH or n % (width * _BYPP):
        return bytes((STORED,)) + zstd(data)
    height = n // (width * _BYPP)
    px = np.frombuffer(data, dtype="<u4").reshape(height, width)
    return _encode_palette(px, zstd) or _encode_planes(px, zstd)


def _palette(px: np.ndarray) -> tuple[list[int], np.ndarray] | None:
    """(colours, index of every pixel) when there are at most MAX_PALETTE colours, else None.

    Colour by colour: the first pixel not yet indexed brings the next colour (argmax of a bool array stops at
    the first True), one comparison indexes all of its pixels. A few passes for text; a photo is turned away
    by a sample of SAMPLE pixels before any pass."""
    flat = px.reshape(-1)
    if len(np.unique(flat[:: max(1, flat.size // SAMPLE)])) > MAX_PALETTE:
        return None
    idx = np.zeros(flat.size, dtype=np.uint8)
    colours = [int(flat[0])]
    left = flat != flat[0]
    while True:
        pos = int(np.argmax(left))
        if not left[pos]:
            return colours, idx.reshape(px.shape)
        if len(colours) == MAX_PALETTE:
            return None
        colour = flat[pos]
        mask = flat == colour
        idx += mask.view(np.uint8) * np.uint8(len(colours))
        left &= ~mask
        colours.append(int(colour))


def _encode_palette(px: np.ndarray, zstd: ZstdEncode) -> bytes | None:
    found = _palette(px)
    if found is None:
        return None
    colours, idx = found
    height, width = px.shape
    nbits = max(1, (len(colours) - 1).bit_length())
    planes = np.stack([np.packbits((idx >> b) & 1, axis=1) for b in range(nbits)])
    planes[:, 1:] ^= planes[:, :-1].copy()
    head = bytes((PALETTE,)) + width.to_bytes(2, "little") + bytes((len(colours) - 1,))
    return head + np.asarray(colours, dtype="<u4").tobytes() + zstd(planes.tobytes())


def _encode_planes(px: np.ndarray, zstd: ZstdEncode) -> bytes:
    height, width = px.shape
    p = px.view(np.uint8).reshape(height, width, _BYPP).transpose(0, 2, 1).copy()  # rows of B, G, R, X planes
    p[:, 0] -= p[:, 1]
    p[:, 2] -= p[:, 1]
    p[1:] -= p[:-1].copy()
    return bytes((PLANES,)) + width.to_bytes(2, "little") + zstd(p.tobytes())


# ----------------------------------------------------------------------------------------------- decode
def decode(payload: Bytes, expected_size: int, zstd: ZstdDecode, width: int = 0) -> bytes:
    """Exactly `expected_size` bytes of packed 32-bit rows, or ImageCodecError; a `width` (the rectangle's) must
    match the payload's."""
    payload = memoryview(payload)
    if len(payload) < 1:
        raise ImageCodecError("image: empty payload")
    method = payload[0]
    if method == STORED:
        return zstd(payload[1:], expected_size)
    if method not in (PALETTE, PLANES):
        raise ImageCodecError(f"image: unknown method {method}")
    if len(payload) < 3:
        raise ImageCodecError("image: header is truncated")
    if width and width != payload[1] | payload[2] << 8:
        raise ImageCodecError(f"image: payload is {payload[1] | payload[2] << 8} pixels wide, the rectangle {width}")
    width = payload[1] | payload[2] << 8
    if width == 0 or expected_size % (width * _BYPP):
        raise ImageCodecError(f"image: width {width} does not divide {expected_size} bytes into 32-bit rows")
    height = expected_size // (width * _BYPP)
    if method == PLANES:
        p = np.frombuffer(zstd(payload[3:], expected_size), dtype=np.uint8).reshape(height, _BYPP, width).copy()
        for y in range(1, height):  # a row loop over contiguous rows: 3-6x faster than cumsum across rows
            np.add(p[y], p[y - 1], out=p[y])
        p[:, 0] += p[:, 1]
        p[:, 2] += p[:, 1]
        out = np.empty((height, width, _BYPP), dtype=np.uint8)
        for c in range(_BYPP):
            out[:, :, c] = p[:, c]
        return out.tobytes()
    if len(payload) < 4:
        raise ImageCodecError("image: palette header is truncated")
    k = payload[3] + 1
    if k > MAX_PALETTE:
        raise ImageCodecError(f"image: {k} palette colours (at most {MAX_PALETTE})")
    start = 4 + k * _BYPP
    if len(payload) < start:
        raise ImageCodecError("image: palette is truncated")
    palette = np.frombuffer(payload[4:start], dtype="<u4")
    nbits = max(1, (k - 1).bit_length())
    row = (width + 7) // 8
    packed = np.frombuffer(zstd(payload[start:], nbits * height * row), dtype=np.uint8).reshape(nbits, height, row)
    # Undo the row XOR in 64-bit words (rows padded to a multiple of 8 bytes): ~15x faster than in bytes.
    padded = -(-row // 8) * 8
    planes = np.zeros((nbits, height, padded), dtype=np.uint8)
    planes[:, :, :row] = packed
    words = planes.view(np.uint64)
    np.bitwise_xor.accumulate(words, axis=1, out=words)
    # Each packed byte becomes its 8 pixels' bits, one byte each, by table; plane b's are shifted into bit b.
    spread = np.take(_SPREAD, planes[0])
    for b in range(1, nbits):
        bits = np.take(_SPREAD, planes[b])
        bits <<= np.uint64(b)
        spread |= bits
    idx = spread.view(np.uint8).reshape(height, padded * 8)[:, :width]
    if k < 1 << nbits and int(idx.max(initial=0)) >= k:
        raise ImageCodecError(f"image: palette index beyond the {k} colours")
    return np.take(palette, idx).astype("<u4", copy=False).tobytes()
