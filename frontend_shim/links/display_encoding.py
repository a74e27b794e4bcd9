"""Which encoding a pixel rectangle of a display frame travels in (the display link's encoding policy)."""

from __future__ import annotations

from services.common import codec

ENCODINGS = ("raw", "lzo", "lz4", "zstd", "auto")


class EncodingPolicy:
    """Which encoding a pixel rectangle travels in. Fixed, or `auto`: estimate the cost per byte of each
    candidate (compress time + wire time of the compressed size) from a compressibility sample and the
    measured speeds, and take the cheapest; raw when the link is fast and compression does not pay."""

    _SAMPLE = 4096
    _SMALL = 2048  # below this a rectangle goes raw: the codec call costs more than the bytes
    _DECODE_BPS = {"raw": float("inf"), "lz4": 3e9, "zstd": 1e9, "lzo": 2e9}  # service side, assumed

    def __init__(self, encoding: str) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        self.encoding = encoding
        self.link_bps = 125e6  # until measured: 1 Gb/s
        self.encode_bps = {"lz4": 1.5e9, "zstd": 4e8, "lzo": 1e9}
        self.zstd_vs_lz4 = 0.75  # compressed size of zstd relative to lz4, learned

    def choose(self, data: bytes | memoryview) -> str:
        if self.encoding != "auto":
            return self.encoding
        n = len(data)
        if n < self._SMALL:
            return "raw"
        if n <= 3 * self._SAMPLE:
            sample = bytes(data)
        else:
            s, mid = self._SAMPLE, n // 2
            sample = b"".join((data[:s], data[mid : mid + s], data[n - s :]))
        ratio = len(codec.encode("lz4", sample)) / len(sample)
        if ratio > 0.9:
            return "raw"
        costs = {
            "raw": 1 / self.link_bps,
            "lz4": 1 / self.encode_bps["lz4"] + ratio / self.link_bps + 1 / self._DECODE_BPS["lz4"],
            "zstd": 1 / self.encode_bps["zstd"]
            + ratio * self.zstd_vs_lz4 / self.link_bps
            + 1 / self._DECODE_BPS["zstd"],
        }
        return min(costs, key=costs.__getitem__)

    def encoded(self, encoding: str, n: int, out: int, seconds: float) -> None:
        if encoding in self.encode_bps and seconds > 0 and n >= 16384:
            self.encode_bps[encoding] = 0.8 * self.encode_bps[encoding] + 0.2 * (n / seconds)

    def link(self, nbytes: int, seconds: float) -> None:
        if nbytes >= 65536 and seconds > 0:
            self.link_bps = 0.8 * self.link_bps + 0.2 * (nbytes / max(seconds, 50e-6))
