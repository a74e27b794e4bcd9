"""Runs every benchmark, prints one table beside the paper's figures, writes build/bench/results.json."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import platform
import sys
from pathlib import Path

from frontend_shim.commands.processes import ROOT
from tests.bench import netlinks
from tests.bench import plots as plots_mod
from tests.bench.stats import HOT_PATHS, ratio_goal

# Each module has run(quick, workdir) -> list of records (see tests/bench/stats.py).
SUITES = (
    "tests.bench.floors",  # first: the floors the later figures are divided by, in the same run
    "tests.bench.audio",
    "tests.bench.display",
    "tests.bench.frames",
    "tests.bench.codecs",
    "tests.bench.traces",
    "tests.bench.input",
    "tests.bench.vfio",
    "tests.bench.load",
    "tests.bench.multivm",
    "tests.bench.video",
    "tests.bench.slack",
)
HIGHER_IS_BETTER = ("video_fps", "video_psnr_db", "video_ssim")  # their targets are floors


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
        if r.get("content") == "desktop" and mode == "auto" and link == "100mbit":
            return 32.4  # issue #18: at least as good as LZO's 32.4 ns/px in the 2026-11-26 run
        if r.get("content") == "desktop" and not (mode == "raw" and link != "loopback"):  # raw: the wire's limit
            return 60 if link == "100mbit" else 30
        if r.get("content") == "photo" and link == "100mbit" and mode == "auto":
            return 1.1 * r["wire_ns_per_px"]
    if metric == "lossless_bytes_per_px" and mode in ("auto", "image"):  # issue #18: VNC's ZRLE or better
        return {"text": 0.036, "photo": 2.3, "tooltip": 1300 / 20_000}.get(r.get("content", ""))
    if metric == "lossless_sync_to_presented" and mode == "auto" and link == "loopback" and r.get("content") == "text":
        return 5e6  # issue #18: a 640x480 text window on screen within 5 ms
    if metric.startswith("video_") and r.get("video") != "off" and r.get("resolution") == "1920x1080":
        if link == "100mbit":  # #17: 1080p on the 100 Mbit link
            return {"video_fps": 30, "video_mbps": 20, "video_psnr_db": 35, "video_added_latency": 40}.get(metric)
    return None


def add_ratios(results: list[dict]) -> None:
    """Give every hot-path record (HOT_PATHS) `ratio_to_floor` (its p50 over the sum of its floors' p50 in this
    run), `floor` (which) and `ratio_goal` (the issue's, or None); records measured interleaved with their floors
    (tests/bench/vfio.py) keep the ratio they came with."""
    floors = {r["metric"]: r["p50"] for r in results if r["metric"].startswith("floor_") and r["link"] == "loopback"}
    for r in results:
        names = HOT_PATHS.get((r["metric"], r["mode"]), ((), None))[0]
        if "ratio_to_floor" in r or not names or not all(n in floors for n in names) or r["unit"] != "ns":
            continue
        base = sum(floors[n] for n in names)
        r["floor"] = "+".join(names)
        r["ratio_to_floor"] = round(r["p50"] / base, 2) if base and not math.isnan(r["p50"]) else None
        r["ratio_goal"] = ratio_goal(r)


def _fmt(value: float | None, unit: str = "ns") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit != "ns":
        if abs(value) < 1:
            return f"{value:.4f} {unit}"
        return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.2f} {unit}"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} ms"
    if value >= 1_000:
        return f"{value / 1e3:.1f} µs"
    return f"{value:.1f} ns"


def table(results: list[dict]) -> str:
    lines = [
        "| metric | mode | link | detail | p50 | p99 | paper | target p50 | met | × floor | goal × | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        goal = target(r)
        if goal is None:
            met = "-"
        else:
            met = "yes" if (r["p50"] >= goal if r["metric"] in HIGHER_IS_BETTER else r["p50"] <= goal) else "NO"
        detail = (
            r.get("content") or r.get("path") or r.get("direction") or r.get("workload") or r.get("device") or "-"
        )
        if "resolution" in r:
            detail = f"{r['resolution']} clip"
        if "placement" in r:  # tests/bench/vfio.py: who chose the CPUs (the kernel, or the benchmark: pinned)
            detail = r["placement"] if detail == "-" else f"{detail}, {r['placement']}"
        ratio, ratio_goal = r.get("ratio_to_floor"), r.get("ratio_goal")
        ratio_met = "-" if ratio is None or ratio_goal is None else ("yes" if ratio <= ratio_goal else "NO")
        lines.append(
            f"| {r['metric']} | {r['mode']} | {r['link']} | {detail} | {_fmt(r['p50'], r['unit'])} | "
            f"{_fmt(r['p99'], r['unit'])} | {_fmt(r['paper'], r['unit'])} | {_fmt(goal, r['unit'])} | {met} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {'-' if ratio_goal is None else f'{ratio_goal:g}'} | "
            f"{ratio_met} |"
        )
    return "\n".join(lines)


def main() -> None:
    quick = os.environ.get("BENCH_QUICK") == "1"
    only = [n.strip() for n in os.environ.get("BENCH_SUITES", "").split(",") if n.strip()]  # e.g. display,frames
    suites = [s for s in SUITES if not only or s.rpartition(".")[2] in only]
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    if not suites:
        names = ", ".join(n.rpartition(".")[2] for n in SUITES)
        raise SystemExit(f"BENCH_SUITES={','.join(only)} names none of: {names}")
    failed: list[str] = []
    why_not = netlinks.can_shape()
    if why_not:
        print(f"shaped links skipped: {why_not}")
    for make_link in netlinks.all_links(quick):
        with make_link() as link:
            for name in suites:
                suite = importlib.import_module(name)
                # Suites that take a link run on every one; the others only once, on loopback.
                takes_link = "link" in inspect.signature(suite.run).parameters
                if not takes_link and link.name != "loopback":
                    continue
                try:
                    results += suite.run(quick, out, link=link) if takes_link else suite.run(quick, out)
                except Exception as exc:  # one suite failing (say, on an overloaded machine) keeps the others' figures
                    failed.append(f"{name} on {link.name}: {type(exc).__name__}: {exc}")
                    print(f"benchmark suite failed: {failed[-1]}", file=sys.stderr)
    add_ratios(results)
    text = (
        f"rdv benchmark ({'quick' if quick else 'full'} run) on {platform.node()}: "
        f"{os.cpu_count()} cores, Python {platform.python_version()}\n\n{table(results)}\n"
    )
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    made = [f(results, out) for f in (plots_mod.display_ns_per_px, plots_mod.audio_latencies, plots_mod.video)]
    plots = [p for p in made if p]
    print(f"written to {Path(out, 'results.json')}, {out / 'results.md'}" + "".join(f", {p}" for p in plots))
    if failed:
        raise SystemExit("failed suites (their figures are missing):\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
