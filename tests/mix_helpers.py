"""What the service's mixer (`--mix service`) should have played, rebuilt from its mix log and the inputs.

The mix log (`--mix-log`) says where each run of an input's frames landed in the output. The inputs are what each
session's player got (the guest's PCM, or what the card took from the ring), converted here on their own: 8-bit
and mono exactly, another rate with a one-shot soxr resample of the whole stream (the service resamples as a stream
in chunks; the two differ by at most `RESAMPLE_TOLERANCE` per sample, measured: 2). The output must be the
saturated sum: exactly where only same-rate inputs play, within the tolerance per resampled input elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from services.devices.es1370 import PcmFormat

RESAMPLE_TOLERANCE = 4  # LSB per resampled input playing in a frame


def stereo16(data: bytes, fmt: PcmFormat) -> np.ndarray:
    """The test's own conversion to 16-bit stereo (8-bit: unsigned, offset 128, scaled by 256; mono doubled)."""
    if fmt.bits == 8:
        s = (np.frombuffer(data, np.uint8).astype(np.int32) - 128) * 256
    else:
        s = np.frombuffer(data, "<i2").astype(np.int32)
    s = s[: len(s) - len(s) % fmt.channels].reshape(-1, fmt.channels)
    return np.concatenate([s, s], axis=1) if fmt.channels == 1 else s


@dataclass
class Stream:
    """One input segment as the mixer should have seen it."""

    frames: np.ndarray  # int32 (n, 2) at the mixer's rate
    resampled: bool


def stream(data: bytes, fmt: PcmFormat, rate: int) -> Stream:
    s = stereo16(data, fmt)
    if fmt.rate == rate:
        return Stream(s, False)
    r = soxr.resample(s.astype(np.int16), fmt.rate, rate, quality="HQ")
    return Stream(r.astype(np.int32), True)


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(runs, ends) of a mix log."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "out" in r], [r for r in records if r.get("end")]


def check_coverage(runs: list[dict], key: tuple, total: int, slack: int = 0) -> None:
    """The runs of one input segment place its frames once each, in order, from 0 (within `slack` at the end)."""
    mine = sorted((r for r in runs if (r["vm"], r["session"], r["segment"]) == key), key=lambda r: r["in"])
    at = 0
    for r in mine:
        assert r["in"] == at, f"{key}: a run starts at input frame {r['in']}, expected {at} (lost or repeated)"
        at += r["frames"]
    assert abs(at - total) <= slack, f"{key}: {at} frames placed, the input had {total}"


def expected_mix(runs: list[dict], streams: dict[tuple, Stream], out_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(saturated sum, resampled inputs playing per frame) for the runs of the inputs in `streams`, keyed
    (vm, session, segment); runs of other inputs must have gain 0 (muted)."""
    acc = np.zeros((out_frames, 2), np.int64)
    resampled = np.zeros(out_frames, np.int32)
    for r in runs:
        key = (r["vm"], r["session"], r["segment"])
        if key not in streams:
            assert r["gain"] == 0, f"{key} played at gain {r['gain']} but is not one of the inputs"
            continue
        s = streams[key]
        src = s.frames[r["in"] : r["in"] + r["frames"]]
        n = len(src)
        assert n >= r["frames"] - 2, f"{key}: a run past the input's end ({r})"
        out = slice(r["out"], r["out"] + n)
        g = r["gain"]
        acc[out] += src if g == 1.0 else np.rint(src.astype(np.float64) * g).astype(np.int64)
        if s.resampled:
            resampled[r["out"] : r["out"] + r["frames"]] += 1
    return np.clip(acc, -32768, 32767), resampled


def assert_mix(out_raw: bytes, runs: list[dict], streams: dict[tuple, Stream]) -> dict:
    """The output equals the saturated sum: exactly where no resampled input plays. Returns figures."""
    out = np.frombuffer(out_raw, "<i2").astype(np.int64).reshape(-1, 2)
    expected, resampled = expected_mix(runs, streams, len(out))
    diff = np.abs(out - expected).max(axis=1)
    exact = resampled == 0
    bad = np.flatnonzero(exact & (diff != 0))
    assert not len(bad), f"{len(bad)} frames differ where only same-rate inputs play, first at {bad[0]}"
    over = np.flatnonzero(diff > RESAMPLE_TOLERANCE * resampled)
    assert not len(over), f"{len(over)} frames beyond the resampling tolerance, first at {over[0]}: {diff[over[0]]}"
    clipped = int(((expected == 32767) | (expected == -32768)).sum())
    return {
        "frames": len(out),
        "exact_frames": int(exact.sum()),
        "max_diff_resampled": int(diff[~exact].max()) if (~exact).any() else 0,
        "clipped_samples": clipped,
    }
