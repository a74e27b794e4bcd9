"""Runs every benchmark, prints one table beside the paper's figures, writes build/bench/results.json."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import platform
from pathlib import Path

from frontend_shim.commands.processes import ROOT
from tests.bench import netlinks
from tests.bench import plots as plots_mod

# Each module has run(quick, workdir) -> list of records (see tests/bench/stats.py).
SUITES = (
    "tests.bench.audio",
    "tests.bench.display",
    "tests.bench.traces",
    "tests.bench.input",
    "tests.bench.vfio",
    "tests.bench.load",
)
def target(r: dict) -> float | None:
    """The issues' targets for a record (p50, in its unit), or None."""
    metric, mode, link = r["metric"], r["mode"], r["link"]
    if metric == "register_read":
        return {"mirrored": 500, "backend": 150_000}.get(mode)
    if metric == "register_write" and mode in ("mirrored", "backend"):
        return 1_000  # a posted write
    if metric == "register_traffic_ratio":
        return 10  # percent of backend's register traffic
    if metric == "display_refresh_ns_per_px" and mode != "local":
        if r.get("content") == "desktop" and not (mode == "raw" and link != "loopback"):  # raw: the wire's limit
            return 60 if link == "100mbit" else 30
        if r.get("content") == "photo" and link == "100mbit" and mode == "auto":
            return 1.1 * r["wire_ns_per_px"]
    return None


def _fmt(value: float | None, unit: str = "ns") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit != "ns":
        return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.2f} {unit}"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} ms"
    if value >= 1_000:
        return f"{value / 1e3:.1f} µs"
    return f"{value:.1f} ns"


def table(results: list[dict]) -> str:
    lines = [
        "| metric | mode | link | detail | p50 | p99 | paper | target p50 | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        goal = target(r)
        met = "-" if goal is None else ("yes" if r["p50"] <= goal else "NO")
        detail = r.get("content") or r.get("direction") or r.get("workload") or r.get("device") or "-"
        lines.append(
            f"| {r['metric']} | {r['mode']} | {r['link']} | {detail} | {_fmt(r['p50'], r['unit'])} | "
            f"{_fmt(r['p99'], r['unit'])} | {_fmt(r['paper'], r['unit'])} | {_fmt(goal, r['unit'])} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    quick = os.environ.get("BENCH_QUICK") == "1"
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    why_not = netlinks.can_shape()
    if why_not:
        print(f"shaped links skipped: {why_not}")
    for make_link in netlinks.all_links(quick):
        with make_link() as link:
            for name in SUITES:
                suite = importlib.import_module(name)
                # Suites that take a link run on every one; the others only once, on loopback.
                if "link" in inspect.signature(suite.run).parameters:
                    results += suite.run(quick, out, link=link)
                elif link.name == "loopback":
                    results += suite.run(quick, out)
    text = (
        f"rdv benchmark ({'quick' if quick else 'full'} run) on {platform.node()}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n\n{table(results)}\n"
    )
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plots = [p for p in (plots_mod.display_ns_per_px(results, out), plots_mod.audio_latencies(results, out)) if p]
    print(f"written to {Path(out, 'results.json')}, {out / 'results.md'}" + "".join(f", {p}" for p in plots))


if __name__ == "__main__":
    main()
