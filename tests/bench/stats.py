"""Percentiles and result records shared by every benchmark."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def record(
    metric: str,
    mode: str,
    samples_ns: Sequence[float],
    paper_ns: float | None,
    link: str = "loopback",
    **extra: object,
) -> dict:
    return {
        "metric": metric,
        "mode": mode,
        "link": link,
        "p50": percentile(samples_ns, 0.5),
        "p99": percentile(samples_ns, 0.99),
        "unit": "ns",
        "paper": paper_ns,
        "samples": len(samples_ns),
        **extra,
    }
