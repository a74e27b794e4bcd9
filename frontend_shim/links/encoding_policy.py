"""Which lossless encoding a pixel rectangle travels in, and whether tile diff pays: the frame builder's policy.

`EncodingPolicy.encode(data, width)` returns (encoding, payload) for one rectangle (a band of one):
- a fixed encoding (raw, lzo, lz4, zstd, image) is used as asked, except that a payload not smaller than the
  pixels goes raw (incompressible content must not cost more than itself);
- `auto` estimates, for raw, lz4, zstd and image, the time until the pixels are on the service's screen:
  encode time (learned per encoding from every encode the shim does, in ns per byte; the figures of the others
  follow the host's slowdown that encode shows) + wire time (the
  estimated payload / the link throughput the acknowledgements measure) + decode time (the service's, measured
  once per codec on the project's content and kept below). Payload sizes come from encoding a sample of whole
  rows with each candidate, corrected by what the previous full encodes of that encoding actually gave against
  their sample. Among the candidates within SLACK of the fastest it takes the smallest: bytes are what a user
  pays on Wi-Fi or a shared link, and a few percent of latency buys a lot of them. So on a slow link photos go
  `image` (half of raw), and on loopback too; only a link faster than ~2 GB/s sends them zstd or raw; text goes
  `image` everywhere.

`TileDiffGate` switches tile diff off while it does not pay: it compares, per batch, what comparing cost in
shim time with the wire time the skipped bytes saved; after GATE_WINDOW batches that did not pay it rests for
GATE_REST batches (the builder then only keeps its shadow up to date) and tries again.
"""

from __future__ import annotations

import time

import numpy as np

from services.common import codec, image_codec

ENCODINGS = (*codec.ENCODINGS, "auto")
AUTO_CANDIDATES = ("raw", "lz4", "lzo", "zstd", "image")
# Encode (shim, a starting point: learned from every encode) and decode (service, kept) cost in ns per pixel byte,
# measured on 640x480 text and photo rectangles on this project's 2-core VM (`python -m tests.bench.codecs`,
# 2026-12-05, idle host; image's figures had been twice these since the first measurement); image per method
# (0 stored, 1 palette, 2 planes); raw is a slice.
ENCODE_NS = {"raw": 0.0, "lz4": 0.35, "zstd": 0.8, "lzo": 0.35, "image:0": 0.8, "image:1": 0.6, "image:2": 1.8}
DECODE_NS = {"raw": 0.0, "lz4": 0.3, "zstd": 0.6, "lzo": 0.4, "image:0": 0.6, "image:1": 0.4, "image:2": 1.3}
# Candidates within 25 % + 1.5 ns per byte (about 1.8 ms for a 640x480 window; more in proportion while the host is
# busy and every encode slower) of the fastest compete on bytes.
SLACK, SLACK_NS = 1.25, 1.5
DRIFT = 0.2  # per encode, how far figures not measured then move towards their defaults times the slowdown
GATE_WINDOW = 8
GATE_REST = 64

Bytes = bytes | bytearray | memoryview


class EncodingPolicy:
    _SAMPLE = 16384  # bytes of whole rows per sample strip
    _STRIPS = 3
    _SMALL = 2048  # below this a rectangle goes raw: the codec call costs more than the bytes

    def __init__(self, encoding: str) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        self.encoding = encoding
        self.link_bps = 125e6  # until measured: 1 Gb/s
        # Learned from every full encode: actual / sample-estimated payload size, and ns per byte (per method).
        self.size_bias = dict.fromkeys(AUTO_CANDIDATES, 1.0)
        self.encode_ns = dict(ENCODE_NS)
        self.slowdown = 1.0  # the latest encode's figure over its default: how busy the host is
        self._last_choice: tuple[tuple[bool, int], str, float] | None = None  # (kind, width), encoding, ratio

    # ------------------------------------------------------------------ choosing and encoding
    def encode(self, data: Bytes, width: int, band: bool = False) -> tuple[str, bytes]:
        """(encoding, payload) for `data`: packed 32-bit rows `width` pixels wide, or any bytes (then image is
        only used when asked for). `band`: `data` continues the rectangle of the previous call (a row band after
        the first): `auto` keeps that band's choice while the content stays of its kind (few colours or many),
        sampling every codec again only when it changes."""
        n = len(data)
        estimate = None
        if self.encoding != "auto":
            enc = self.encoding
        elif n < self._SMALL:
            enc = "raw"
        else:
            enc, estimate = self._choose_band(data, width, band)
        started = time.perf_counter()
        payload = codec.encode(enc, data, width)
        seconds = time.perf_counter() - started
        if enc != "raw" and n >= 65536:
            key = _key(enc, payload)
            # A preempted encode (a busy host) may take 10x its time: one sample moves the figure at most 2x.
            # A busy host slows every codec alike: the figures not refreshed drift towards their defaults times
            # the slowdown this encode shows, so the codec in use is not judged on loaded figures against others
            # last measured on an idle host (auto flipped between image and zstd on text that way), and a
            # candidate that looked slow once is tried again instead of being shut out for good.
            self.encode_ns[key] = _ewma(self.encode_ns[key], min(seconds * 1e9 / n, 2 * self.encode_ns[key]))
            self.slowdown = self.encode_ns[key] / ENCODE_NS[key]
            for other in self.encode_ns:
                if other != key:
                    self.encode_ns[other] += (ENCODE_NS[other] * self.slowdown - self.encode_ns[other]) * DRIFT
        if estimate is not None and enc != "raw":
            self.size_bias[enc] = _ewma(self.size_bias[enc], len(payload) / max(1.0, estimate))
        if enc != "raw" and len(payload) >= n:
            enc, payload = "raw", bytes(data)
        return enc, payload

    def _choose_band(self, data: Bytes, width: int, band: bool) -> tuple[str, float]:
        kind = _few_colours(data, width)
        last = self._last_choice
        if band and last is not None and last[0] == (kind, width):
            return last[1], last[2] * len(data)
        enc, estimate = self.choose(data, width)
        self._last_choice = ((kind, width), enc, estimate / max(1, len(data)))
        return enc, estimate

    def choose(self, data: Bytes, width: int) -> tuple[str, float]:
        """The `auto` choice for `data`, with its estimated payload bytes."""
        n = len(data)
        row = width * 4 if width > 0 and n % (width * 4) == 0 else 0
        sample = self._sample(data, row)
        wire_ns = 1e9 / self.link_bps
        est = {"raw": (1.0, 0.0, 0.0)}  # ratio, encode ns/B, decode ns/B
        for enc in AUTO_CANDIDATES[1:]:
            if enc == "image" and not row:
                continue
            payload = codec.encode(enc, sample, width)
            ratio = min(1.0, len(payload) / len(sample) * self.size_bias[enc])
            key = _key(enc, payload)
            est[enc] = (ratio, self.encode_ns[key], DECODE_NS[key])
        cost = {e: enc_ns + ratio * wire_ns + dec_ns for e, (ratio, enc_ns, dec_ns) in est.items()}
        allowed = min(cost.values()) * SLACK + SLACK_NS * max(1.0, self.slowdown)  # a busy host: every ns is longer
        enc = min((e for e in cost if cost[e] <= allowed), key=lambda e: (est[e][0], cost[e]))
        return enc, est[enc][0] * n

    def _sample(self, data: Bytes, row: int) -> bytes:
        """Strips of whole rows from the top, the middle and the bottom third (all of `data` when small)."""
        n = len(data)
        if n <= self._SAMPLE * self._STRIPS:
            return bytes(data)
        if not row:
            s = self._SAMPLE
            return b"".join(bytes(data[o : o + s]) for o in (n // 6, n // 2, n * 5 // 6 - s))
        rows = n // row
        per = max(1, self._SAMPLE // row)
        starts = [min(rows - per, rows * k // (2 * self._STRIPS)) for k in (1, 3, 5)]
        return b"".join(bytes(data[y * row : (y + per) * row]) for y in starts)

    # ------------------------------------------------------------------ measurements
    def link(self, nbytes: int, seconds: float) -> None:
        """A frame of `nbytes` payload took `seconds` on the wire (send to acknowledgement, minus the service)."""
        if nbytes >= 65536 and seconds > 0:
            self.link_bps = _ewma(self.link_bps, nbytes / max(seconds, 50e-6))


def _few_colours(data: Bytes, width: int) -> bool:
    """Whether a strided sample of 32-bit pixels has at most image's palette of colours (text, UI) or more
    (photos, gradients): the kind of content `auto` decides for; a few microseconds."""
    if width <= 0 or len(data) % (width * 4):
        return False
    px = np.frombuffer(data, dtype="<u4")
    return len(np.unique(px[:: max(1, px.size // image_codec.SAMPLE)])) <= image_codec.MAX_PALETTE


def _key(encoding: str, payload: bytes) -> str:
    """The cost tables' key: image's cost depends on its method (the payload's first byte)."""
    return f"image:{payload[0]}" if encoding == "image" and payload else encoding


def _ewma(old: float, new: float) -> float:
    return 0.8 * old + 0.2 * new


class TileDiffGate:
    """Tile diff on while it pays: `active()` before a batch, `record()` after one that was diffed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.losing = 0  # consecutive diffed batches that did not pay
        self.resting = 0  # batches left without diffing
        self.switched_off = 0  # times it rested (for stats and tests)

    def active(self) -> bool:
        if not self.enabled:
            return False
        if self.resting:
            self.resting -= 1
            return False
        return True

    def record(self, pixel_bytes: int, skipped_bytes: int, seconds: float, link_bps: float) -> None:
        """`seconds` of diffing skipped `skipped_bytes` of `pixel_bytes`; it paid if their wire time was more."""
        if pixel_bytes == 0:
            return
        if skipped_bytes / link_bps > seconds:
            self.losing = 0
            return
        self.losing += 1
        if self.losing >= GATE_WINDOW:
            self.losing, self.resting = 0, GATE_REST
            self.switched_off += 1
