"""Lossless codecs for pixel rectangles compared on the project's own content: bytes, encode and decode CPU.

The candidates issue #18 named: the byte compressors rdv had (lz4, LZO, zstd level 1), zstd at level 3, QOI
(`qoi`), PNG at a low level and lossless WebP (both through Pillow), and `image` (services/common/image_codec.py)
with each of its two methods forced, so the choice between them is measured too. Contents come from
tests/bench/screens.py. Times are the best of several runs on one core (ns per pixel); `python -m
tests.bench.codecs` prints the table the README quotes.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import qoi
import zstandard
from PIL import Image

from services.common import codec, image_codec
from tests.bench import screens
from tests.bench.stats import record

SHAPES = {"text": (640, 480), "photo": (640, 480), "tooltip": (200, 100), "desktop": (640, 480)}
Codec = tuple[Callable[[bytes, int, int], bytes], Callable[[bytes, int, int], bytes]]


def _rgb(data: bytes, w: int, h: int) -> Image.Image:
    return Image.frombuffer("RGBX", (w, h), data, "raw", "RGBX", 0, 1).convert("RGB")


def _pillow(fmt: str, **kw: object) -> Codec:
    def enc(data: bytes, w: int, h: int) -> bytes:
        out = io.BytesIO()
        _rgb(data, w, h).save(out, fmt, **kw)
        return out.getvalue()

    def dec(payload: bytes, w: int, h: int) -> bytes:
        return Image.open(io.BytesIO(payload)).convert("RGBX").tobytes()

    return enc, dec


def _qoi() -> Codec:
    def enc(data: bytes, w: int, h: int) -> bytes:
        return qoi.encode(np.ascontiguousarray(np.frombuffer(data, np.uint8).reshape(h, w, 4)[:, :, :3]))

    def dec(payload: bytes, w: int, h: int) -> bytes:
        return qoi.decode(payload).tobytes()

    return enc, dec


def _rdv(name: str) -> Codec:
    return (lambda d, w, h: codec.encode(name, d, w)), (lambda p, w, h: codec.decode(name, p, w * h * 4))


def _forced(method: int) -> Codec:
    """`image` with one method only (PALETTE falls back to PLANES when a rectangle has more than 16 colours)."""
    z = zstandard.ZstdCompressor(level=image_codec.ZSTD_LEVEL, write_content_size=True).compress

    def enc(data: bytes, w: int, h: int) -> bytes:
        px = np.frombuffer(data, dtype="<u4").reshape(h, w)
        if method == image_codec.PALETTE:
            return image_codec._encode_palette(px, z) or image_codec._encode_planes(px, z)
        return image_codec._encode_planes(px, z)

    return enc, _rdv("image")[1]


def _zstd3() -> Codec:
    z = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return (lambda d, w, h: z.compress(d)), (lambda p, w, h: codec.decode("zstd", p, w * h * 4))


CODECS: dict[str, Codec] = {
    "lz4": _rdv("lz4"),
    "lzo": _rdv("lzo"),
    "zstd (level 1)": _rdv("zstd"),
    "zstd (level 3)": _zstd3(),
    "QOI": _qoi(),
    "PNG (Pillow, level 1)": _pillow("PNG", compress_level=1),
    "WebP lossless (Pillow, method 0)": _pillow("WEBP", lossless=True, method=0, quality=0),
    "image: planes only": _forced(image_codec.PLANES),
    "image: palette, else planes": _forced(image_codec.PALETTE),
    "image (rdv)": _rdv("image"),
}


def _best(f: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def measure(runs: int = 5) -> list[dict]:
    rows = []
    for content, (w, h) in SHAPES.items():
        data = screens.CONTENTS[content](w, h, 1)
        for name, (enc, dec) in CODECS.items():
            payload = enc(data, w, h)
            lossless = name in ("QOI", "PNG (Pillow, level 1)", "WebP lossless (Pillow, method 0)")
            back = dec(payload, w, h)
            if lossless:  # RGB codecs: compare without the X byte (always 0 in our content)
                back_rgb = np.frombuffer(back, np.uint8).reshape(-1, 4 if len(back) == w * h * 4 else 3)[:, :3]
                assert np.array_equal(back_rgb, np.frombuffer(data, np.uint8).reshape(-1, 4)[:, :3]), name
            else:
                assert back == data, name
            rows.append({
                "content": content, "codec": name, "bytes": len(payload), "b_per_px": len(payload) / (w * h),
                "encode_ns_per_px": _best(lambda e=enc, a=(data, w, h): e(*a), runs) * 1e9 / (w * h),
                "decode_ns_per_px": _best(lambda d=dec, a=(payload, w, h): d(*a), runs) * 1e9 / (w * h),
            })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    contents = list(SHAPES)
    lines = [
        "| codec | " + " | ".join(f"{c} {SHAPES[c][0]}x{SHAPES[c][1]}: B/px, enc/dec ns/px" for c in contents) + " |",
        "|---|" + "---|" * len(contents),
    ]
    for name in CODECS:
        cells = []
        for c in contents:
            r = next(r for r in rows if r["codec"] == name and r["content"] == c)
            cells.append(f"{r['b_per_px']:.4f}, {r['encode_ns_per_px']:.1f}/{r['decode_ns_per_px']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(quick: bool, workdir: Path) -> list[dict]:
    rows = measure(3 if quick else 7)
    (workdir / "codecs.md").write_text(table(rows) + "\n")
    return [
        record("codec_bytes_per_px", r["codec"], [r["b_per_px"]], None, link="none", unit="B/px",
               content=r["content"], encode_ns_per_px=round(r["encode_ns_per_px"], 2),
               decode_ns_per_px=round(r["decode_ns_per_px"], 2))  # fmt: skip
        for r in rows
    ]


if __name__ == "__main__":
    print(table(measure()))
