"""Percentiles, result records, timing loops and the floors' table shared by every benchmark."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
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


def time_calls(fn: Callable[[], object], n: int, warmup: int = 200) -> list[int]:
    """ns per call of `fn`, `n` calls after `warmup` untimed ones."""
    for _ in range(min(warmup, n)):
        fn()
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


# Which floors (summed) each hot path is built on, and issue #19's goal for the ratio (None: reported only).
# Mirrored accesses and interrupts cross one UNIX socket; backend ones also cross the service's gRPC stream.
_SOCKET, _VFIO, _GRPC = "floor_socket_echo", "floor_vfio_user_echo", "floor_grpc_echo"
HOT_PATHS: dict[tuple[str, str], tuple[tuple[str, ...], float | None]] = {
    ("vfio_user_read", "mirrored"): ((_SOCKET,), 2.0),
    ("vfio_user_read", "backend"): ((_VFIO, _GRPC), 1.3),
    ("vfio_user_write", "mirrored"): ((_VFIO,), None),
    ("vfio_user_write", "backend"): ((_VFIO,), None),
    ("vfio_user_config_read", "mirrored"): ((_VFIO,), None),
    ("vfio_user_config_read", "backend"): ((_VFIO,), None),
    ("register_read", "backend"): ((_GRPC,), 1.2),
    ("interrupt", "mirrored"): ((_SOCKET,), 2.0),
    ("interrupt", "backend"): ((_GRPC,), 1.2),
    ("audio_chunk", "backend"): ((_GRPC,), None),
    ("audio_chunk", "mirrored"): ((_GRPC,), None),
}
P99_GOAL = 3.0  # issue #19: p99 at most 3x p50 on the hot paths


def ratio_goal(r: dict) -> float | None:
    """The issue's goal for a record's ratio to its floor. An interrupt's goal is from its cause to the eventfd;
    to a thread waking on it is reported only. A mirrored read with the CPUs left to the kernel is reported only
    too: there its floor and it may sit on one CPU or on two, each as the kernel pleases, and a round trip across
    CPUs costs 6-10x one on a CPU here; the goal holds it to the floor placed alike (tests/bench/vfio.py,
    `measure_placements`)."""
    goal = HOT_PATHS.get((r["metric"], r["mode"]), ((), None))[1]
    if r.get("placement") == "kernel":
        return None
    return goal if r["metric"] != "interrupt" or r.get("path", "").endswith("to_eventfd") else None


def interleaved(
    series: dict[str, Callable[[], object]], rounds: int, per_round: int, warmup: int = 20
) -> dict[str, list[list[int]]]:
    """Round after round, `per_round` timed calls of each series (floors and the paths built on them); the order
    rotates from round to round. On a shared machine whose load comes and goes, a path and its floor then see the
    same machine, which floors measured minutes before the paths do not. {name: [samples of each round]}."""
    names = list(series)
    out: dict[str, list[list[int]]] = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            out[name].append(time_calls(series[name], per_round, warmup))
    return out


def interleaved_record(
    metric: str,
    mode: str,
    path_rounds: list[list[int]],
    floor_rounds: dict[str, list[list[int]]],
    paper_ns: float | None,
    **extra: object,
) -> dict:
    """A record of a path measured in rounds interleaved with its floors (HOT_PATHS): p50/p99 of all its samples,
    `ratio_to_floor` the median over the rounds of (the path's p50 / its floors' summed p50 in that round),
    `ratio_rounds` each round's, `floor_p50` the floors' summed p50 over all their samples, `p99_over_p50`."""
    r = record(metric, mode, [x for rnd in path_rounds for x in rnd], paper_ns, **extra)
    names = HOT_PATHS.get((metric, mode), ((), None))[0]
    if r["p50"] > 0:
        r["p99_over_p50"] = round(r["p99"] / r["p50"], 2)
    if names and all(n in floor_rounds for n in names):
        per_round = [
            percentile(p, 0.5) / sum(percentile(floor_rounds[n][k], 0.5) for n in names)
            for k, p in enumerate(path_rounds)
        ]
        r["floor"] = "+".join(names)
        r["floor_p50"] = sum(percentile([x for rnd in floor_rounds[n] for x in rnd], 0.5) for n in names)
        r["ratio_to_floor"] = round(statistics.median(per_round), 2)
        r["ratio_rounds"] = [round(x, 2) for x in per_round]
        r["ratio_goal"] = ratio_goal(r)
    return r


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _threads_cpu_ns(pid: int) -> int:
    """CPU time so far of all of a process's threads in ns (the first field of each thread's schedstat): finer
    than `_cpu_seconds`' clock ticks, for the CPU of one access."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(FileNotFoundError):  # a thread that ended meanwhile
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


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
