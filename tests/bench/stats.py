"""Percentiles and result records shared by every benchmark."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def resource_usage(workload: str, link: str, processes: dict[str, int]) -> Iterator[list[dict]]:
    """CPU seconds and peak memory of each process over the `with` block (the shim is this process).

    Peak RSS is reset at the start (Linux clear_refs 5), so it is the workload's own peak.
    """
    pids = {"shim": os.getpid(), **processes}
    for pid in pids.values():
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass  # not permitted: the peak is then since the process started
    start = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    out: list[dict] = []
    yield out
    for name, pid in pids.items():
        cpu, peak = _cpu_seconds(pid) - start[name], _peak_rss_mib(pid)
        for metric, value, unit in (("cpu_seconds", cpu, "s"), ("peak_rss", peak, "MiB")):
            out.append({"metric": metric, "mode": name, "link": link, "p50": round(value, 3), "p99": round(value, 3),
                        "unit": unit, "paper": None, "workload": workload})  # fmt: skip
