"""The frame builder's encoding policy (`auto`, raw fallback) and the tile-diff gate, on the project's content."""

from __future__ import annotations

import os
import time

import pytest

from frontend_shim.links import encoding_policy
from frontend_shim.links.encoding_policy import GATE_REST, GATE_WINDOW, EncodingPolicy, TileDiffGate
from services.common import codec
from tests.bench import screens

TEXT = screens.text_window(640, 480)
PHOTO = screens.photo(640, 480)
NOISE = os.urandom(640 * 480 * 4)
MBIT_100, LOOPBACK = 12.5e6, 400e6  # bytes per second


def auto(link_bps: float) -> EncodingPolicy:
    p = EncodingPolicy("auto")
    p.link_bps = link_bps
    return p


def test_auto_follows_content_and_link() -> None:
    assert auto(MBIT_100).choose(NOISE, 640)[0] == "raw"  # incompressible: compression only costs time
    assert auto(MBIT_100).encode(b"\x01" * 100, 25)[0] == "raw"  # tiny: the codec call costs more than the bytes
    # A link faster than any codec: photos go by the cheap byte compressors; text's image costs ~1 ns a byte
    # more than lz4 for a fifth of its bytes, within the slack.
    assert auto(10e9).choose(PHOTO, 640)[0] in ("raw", "lz4", "zstd")
    assert auto(10e9).choose(TEXT, 640)[0] == "image"
    # A link that is the bottleneck: photos are not sent raw when their encoded form is half the size.
    assert auto(MBIT_100).choose(PHOTO, 640)[0] == "image"
    assert auto(MBIT_100).choose(TEXT, 640)[0] == "image"
    # Loopback: text still goes image (few bytes for little time), and so does the photo: image's extra ~3 ns a
    # byte of encode and decode is within the slack that buys half the bytes. A link that outruns that: not.
    assert auto(LOOPBACK).choose(TEXT, 640)[0] == "image"
    assert auto(LOOPBACK).choose(PHOTO, 640)[0] == "image"
    assert auto(2e9).choose(PHOTO, 640)[0] in ("raw", "zstd")
    assert auto(MBIT_100).choose(NOISE[:100_000], 0)[0] == "raw"  # no width: image is not a candidate


def test_auto_estimate_is_close_and_learns_from_full_encodes() -> None:
    p = auto(MBIT_100)
    enc, size = p.choose(PHOTO, 640)
    actual = len(codec.encode(enc, PHOTO, 640))
    assert 0.7 < size / actual < 1.4
    for _ in range(5):
        p.encode(PHOTO, 640)
    assert p.size_bias["image"] != 1.0 and 0.7 < p.size_bias["image"] < 1.4  # measured against the sample
    assert p.encode_ns["image:2"] != EncodingPolicy("auto").encode_ns["image:2"]  # measured, not assumed


@pytest.mark.parametrize("encoding", ["lzo", "lz4", "zstd", "image"])
def test_fixed_encoding_falls_back_to_raw_when_not_smaller(encoding: str) -> None:
    p = EncodingPolicy(encoding)
    enc, payload = p.encode(NOISE, 640)
    assert enc == "raw" and payload == NOISE
    enc, payload = p.encode(TEXT, 640)
    assert enc == encoding and len(payload) < len(TEXT) // 10
    assert codec.decode(enc, payload, len(TEXT)) == TEXT


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="encoding must be one of raw, lzo, lz4, zstd, image, auto"):
        EncodingPolicy("png")


def test_tile_diff_gate_rests_while_it_does_not_pay_and_tries_again() -> None:
    gate = TileDiffGate(True)
    for _ in range(GATE_WINDOW - 1):
        assert gate.active()
        gate.record(1_000_000, 0, 0.001, MBIT_100)  # nothing skipped: comparing was pure cost
    assert gate.active()
    gate.record(1_000_000, 500_000, 0.001, MBIT_100)  # paid: 40 ms of wire saved for 1 ms
    for _ in range(GATE_WINDOW):
        assert gate.active()
        gate.record(1_000_000, 1000, 0.002, 1e9)  # 1 µs of wire saved for 2 ms of comparing
    assert gate.switched_off == 1
    assert [gate.active() for _ in range(GATE_REST)] == [False] * GATE_REST
    assert gate.active()  # tries again
    assert not TileDiffGate(False).active()


def test_a_slow_encode_on_a_busy_host_does_not_shut_image_out() -> None:
    p = auto(MBIT_100)
    default = p.encode_ns["image:1"]
    p.encode_ns["image:1"] = 50 * default  # as if it had been measured while the host was swapping
    for _ in range(100):
        p.encode(PHOTO[: 640 * 40 * 4], 640)  # other encodes: the figure drifts back (to the host's slowdown)
    assert p.encode_ns["image:1"] < 2 * default * p.slowdown
    assert p.choose(TEXT, 640)[0] == "image"
    before = p.encode_ns["image:1"]
    p.encoding = "image"
    p.encode(TEXT, 640)
    assert p.encode_ns["image:1"] <= before * 1.2 + 1e-9  # one slow sample moves it at most 2x, weighted 0.2


def test_a_busy_host_slows_every_codec_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text on loopback keeps going `image` while every encode takes 3x its time: the slowdown the image encodes
    show applies to the figures of the codecs not in use too (auto flipped to zstd, 4x the bytes, when only the
    codec in use carried the load)."""
    real = codec.encode

    def slow(enc: str, data: bytes, width: int = 0) -> bytes:
        started = time.perf_counter()
        out = real(enc, data, width)
        time.sleep(2 * (time.perf_counter() - started))
        return out

    idle = auto(LOOPBACK)
    for _ in range(20):
        idle.encode(TEXT, 640)
    monkeypatch.setattr(encoding_policy.codec, "encode", slow)
    p = auto(LOOPBACK)
    chosen = [p.encode(TEXT, 640)[0] for _ in range(20)]
    assert chosen == ["image"] * 20
    # against this host's own unloaded figure (its speed differs from the defaults' machine): about 3x
    assert p.slowdown > 1.5 * idle.slowdown


def test_auto_samples_a_rectangle_once_while_its_bands_stay_of_one_kind(monkeypatch) -> None:
    """Row bands of one rectangle: the first is sampled with every codec; the next keep its choice while the
    content stays of its kind, and a band of the other kind (photo after text) is sampled again."""
    p = auto(LOOPBACK)
    chosen: list[str] = []
    real = p.choose
    monkeypatch.setattr(p, "choose", lambda data, width: chosen.append(real(data, width)[0]) or real(data, width))
    row = 640 * 4
    text_bands = [TEXT[y * row : (y + 160) * row] for y in (0, 160, 320)]
    photo_band = PHOTO[: 160 * row]
    encs = [p.encode(b, 640, band=i > 0)[0] for i, b in enumerate(text_bands)]
    assert chosen == ["image"] and encs == ["image"] * 3
    photo_enc = p.encode(photo_band, 640, band=True)[0]
    assert len(chosen) == 2 and photo_enc == chosen[1]  # the photo was judged on its own
    p.encode(text_bands[0], 640)  # a new rectangle: sampled again
    assert len(chosen) == 3
