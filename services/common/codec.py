"""Framebuffer payload codecs: one `encode` / `decode` pair over raw, LZO, LZ4, Zstandard and `image`.

Payload formats (nothing else is framed: the caller sends the decoded size next to the payload):
  raw   the bytes themselves
  lzo   LZO1X-1 without python-lzo's 5-byte header
  lz4   one LZ4 block, without the 4-byte size prefix lz4.block can store
  zstd  exactly one Zstandard frame that records its content size (a frame without it is accepted too)
  image 32-bit pixel rows made compressible (palette bit planes or colour-transformed delta planes), then
        one Zstandard frame: see `services.common.image_codec`. `encode` needs the rectangle's width for it
        (without one, or for data that is not whole 32-bit rows, the bytes are stored as one zstd frame).
An empty input always encodes to an empty payload, in every encoding.

`decode` treats the payload as hostile. It allocates at most `expected_size` bytes for the output (plus the
libraries' small fixed contexts), never asks a library to guess a size, and returns exactly `expected_size`
bytes or raises `CodecError`: for corrupt, truncated, trailing or oversized ("decompression bomb") data, for
an unknown encoding and for a size beyond MAX_DECODED_SIZE. How each library is bounded:
  lzo   `decompress(payload, header=False, buflen=expected)` uses LZO's safe decoder into a buffer of
        exactly that length; more output is an overrun error, leftover input an error too.
  lz4   `decompress(payload, uncompressed_size=expected)` likewise (LZ4_decompress_safe).
  zstd  the frame's declared content size must equal `expected` (checked in the header before anything is
        decompressed: a 100 MB bomb is refused in microseconds); the block headers are walked to find the
        frame's end, so truncation and trailing bytes are refused; a frame without a declared size is
        decompressed with max_output_size=expected.
  image its header must fit `expected` exactly and its zstd frame is decoded as above to the size the header
        implies; palette indexes are checked against the palette.

"auto" is not an encoding: choosing one is policy and lives with the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import lz4.block
import lzo
import zstandard

from services.common import image_codec

ENCODINGS: tuple[str, ...] = ("raw", "lzo", "lz4", "zstd", "image")

MAX_DECODED_SIZE = 1 << 28  # 256 MiB: far above any framebuffer (8192x8192x4 is exactly this)
ZSTD_LEVEL = 1  # the frame path wants speed; higher levels gain little on screen content
LZO_LEVEL = 1  # python-lzo: 1 is LZO1X-1 (fast), 9 is LZO1X-999 (slow)

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_FHD_CHECKSUM = 0x04  # frame header descriptor: a 4-byte checksum follows the last block
_ZSTD_BLOCK_RAW, _ZSTD_BLOCK_RLE, _ZSTD_BLOCK_COMPRESSED = 0, 1, 2
_ZSTD_BLOCK_HEADER = 3
_ZSTD_CHECKSUM = 4

Bytes = bytes | bytearray | memoryview


class CodecError(ValueError):
    """A payload that does not decode to exactly the expected bytes, or a request no codec can serve."""


# Compression contexts are reused per thread: building one costs more than compressing a small rect,
# and they must not be shared between threads.
_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "zc", None)
    if c is None:
        c = _local.zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _zstd_image_compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "zic", None)
    if c is None:
        c = _local.zic = zstandard.ZstdCompressor(level=image_codec.ZSTD_LEVEL, write_content_size=True)
    return c


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "zd", None)
    if d is None:
        d = _local.zd = zstandard.ZstdDecompressor()
    return d


# ----------------------------------------------------------------------------------------------- encode
def _encode_raw(data: Bytes, width: int) -> bytes:
    return bytes(data)


def _encode_lzo(data: Bytes, width: int) -> bytes:
    return lzo.compress(bytes(data), LZO_LEVEL, False)


def _encode_lz4(data: Bytes, width: int) -> bytes:
    return lz4.block.compress(data, store_size=False)


def _encode_zstd(data: Bytes, width: int) -> bytes:
    return _zstd_compressor().compress(data)


def _encode_image(data: Bytes, width: int) -> bytes:
    return image_codec.encode(data, width, _zstd_image_compressor().compress)


_ENCODERS: dict[str, Callable[[Bytes, int], bytes]] = {
    "raw": _encode_raw,
    "lzo": _encode_lzo,
    "lz4": _encode_lz4,
    "zstd": _encode_zstd,
    "image": _encode_image,
}


def encode(encoding: str, data: Bytes, width: int = 0) -> bytes:
    """Compress `data` with `encoding` (one of ENCODINGS); `width`: pixels per row of a 32-bit rectangle,
    which only `image` uses."""
    encoder = _ENCODERS.get(encoding)
    if encoder is None:
        raise CodecError(f"unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if len(data) == 0:
        return b""
    return encoder(data, width)


# ----------------------------------------------------------------------------------------------- decode
def _decode_raw(payload: Bytes, expected_size: int) -> bytes:
    if len(payload) != expected_size:
        raise CodecError(f"raw: payload has {len(payload)} bytes, expected {expected_size}")
    return bytes(payload)


def _decode_lzo(payload: Bytes, expected_size: int) -> bytes:
    return lzo.decompress(bytes(payload), False, expected_size)


def _decode_lz4(payload: Bytes, expected_size: int) -> bytes:
    return lz4.block.decompress(payload, uncompressed_size=expected_size)


def _zstd_frame_end(frame: Bytes) -> int:
    """Byte length of the Zstandard frame at the start of `frame`, found by walking its block headers."""
    if bytes(frame[:4]) != _ZSTD_MAGIC:
        raise CodecError("zstd: payload does not start with a Zstandard frame")
    pos = zstandard.frame_header_size(frame)
    checksum = frame[4] & _ZSTD_FHD_CHECKSUM
    n = len(frame)
    while True:
        if pos + _ZSTD_BLOCK_HEADER > n:
            raise CodecError("zstd: frame is truncated (block header missing)")
        header = frame[pos] | (frame[pos + 1] << 8) | (frame[pos + 2] << 16)
        pos += _ZSTD_BLOCK_HEADER
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == _ZSTD_BLOCK_RLE:
            pos += 1  # one byte, repeated `size` times
        elif kind in (_ZSTD_BLOCK_RAW, _ZSTD_BLOCK_COMPRESSED):
            pos += size
        else:
            raise CodecError("zstd: reserved block type")
        if pos > n:
            raise CodecError("zstd: frame is truncated (block data missing)")
        if last:
            break
    if checksum:
        pos += _ZSTD_CHECKSUM
        if pos > n:
            raise CodecError("zstd: frame is truncated (checksum missing)")
    return pos


def _decode_zstd(payload: Bytes, expected_size: int) -> bytes:
    params = zstandard.get_frame_parameters(payload)
    end = _zstd_frame_end(payload)
    if end != len(payload):
        raise CodecError(f"zstd: {len(payload) - end} bytes after the end of the frame")
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        return _zstd_decompressor().decompress(payload, max_output_size=expected_size)
    if params.content_size != expected_size:
        raise CodecError(f"zstd: frame declares {params.content_size} bytes, expected {expected_size}")
    # The declared size equals expected_size: the library allocates exactly that and fails on overrun.
    return _zstd_decompressor().decompress(payload)


def _decode_zstd_checked(payload: Bytes, expected_size: int) -> bytes:
    out = _decode_zstd(payload, expected_size)
    if len(out) != expected_size:
        raise CodecError(f"zstd: payload decodes to {len(out)} bytes, expected {expected_size}")
    return out


def _decode_image(payload: Bytes, expected_size: int) -> bytes:
    return image_codec.decode(payload, expected_size, _decode_zstd_checked)


_DECODERS: dict[str, Callable[[Bytes, int], bytes]] = {
    "raw": _decode_raw,
    "lzo": _decode_lzo,
    "lz4": _decode_lz4,
    "zstd": _decode_zstd,
    "image": _decode_image,
}


def decode(encoding: str, payload: Bytes, expected_size: int, width: int = 0) -> bytes:
    """Decompress `payload`; the result is exactly `expected_size` bytes, or CodecError is raised. `width`, when
    given, is the rectangle's: an `image` payload must say the same."""
    decoder = _DECODERS.get(encoding)
    if decoder is None:
        raise CodecError(f"unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if isinstance(expected_size, bool) or not isinstance(expected_size, int):
        raise CodecError(f"{encoding}: expected size must be an int, not {type(expected_size).__name__}")
    if not 0 <= expected_size <= MAX_DECODED_SIZE:
        raise CodecError(f"{encoding}: expected size {expected_size} outside 0..{MAX_DECODED_SIZE}")
    if isinstance(payload, memoryview) and (payload.format != "B" or payload.ndim != 1):
        payload = payload.cast("B")
    if expected_size == 0 or len(payload) == 0:
        if expected_size == 0 and len(payload) == 0:
            return b""
        raise CodecError(f"{encoding}: {len(payload)}-byte payload for {expected_size} bytes of data")
    try:
        if encoding == "image" and width:
            out = image_codec.decode(payload, expected_size, _decode_zstd_checked, width)
        else:
            out = decoder(payload, expected_size)
    except CodecError:
        raise
    except image_codec.ImageCodecError as e:
        raise CodecError(str(e)) from None
    except Exception as e:  # each library has its own error types; all mean "this payload is bad"
        raise CodecError(f"{encoding}: corrupt payload ({type(e).__name__}: {e})") from e
    if len(out) != expected_size:
        raise CodecError(f"{encoding}: payload decodes to {len(out)} bytes, expected {expected_size}")
    return out
