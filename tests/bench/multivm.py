"""Several VMs on one display: 4 scripted guests (`draw-demo --vm vmN`, separate processes) animate their
desktops at 30 fps into one display service that shows each in its own SDL window (under a private Xvfb when
there is one, SDL's dummy driver otherwise), for RDV_BENCH_MULTIVM_SECONDS (default 300 s, the issue's five
minutes; 20 s with BENCH_QUICK=1).

Reported: each VM's presented frames per second (GetDisplayState, over the run after a warm-up) next to the
ticks its guest drew per second, and the display service's CPU (percent of one core) and memory (RSS above the
service with no VM) divided by the VMs; the JSON record of each figure has the per-VM values.

    python -m tests.bench.multivm [SECONDS]      # prints the figures as JSON
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from frontend_shim.commands.processes import ROOT, start_service
from rdv.display.v1 import display_pb2, display_pb2_grpc
from tests.fault_helpers import rss_kib
from tests.xvfb import xvfb

VMS = ("vm1", "vm2", "vm3", "vm4")
FPS = 30
WIDTH, HEIGHT = 640, 480
WARM_UP = 3.0  # seconds before the figures start: processes start, desktops are drawn
SECONDS_VAR = "RDV_BENCH_MULTIVM_SECONDS"


def seconds(quick: bool) -> float:
    text = os.environ.get(SECONDS_VAR, "")
    if not text:
        return 20.0 if quick else 300.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 5 <= value <= 86400:
        raise ValueError(f"{SECONDS_VAR}={text!r}: seconds of load, 5..86400")
    return value


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@contextlib.contextmanager
def screen(workdir: Path) -> Iterator[dict[str, str]]:
    """The environment for the display service: a private X server if Xvfb is installed."""
    if shutil.which("Xvfb"):
        with xvfb(workdir / "xvfb.log", 1920, 1080) as display:
            yield {"DISPLAY": display}
    else:
        yield {"SDL_VIDEODRIVER": "dummy"}


def run_multivm(secs: float, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    with screen(workdir) as env:
        display = start_service("display", workdir / "logs", "--presenter", "sdl", env=env)
        procs: dict[str, subprocess.Popen] = {}
        try:
            time.sleep(1.0)
            base_rss, base_cpu = rss_kib(display.proc.pid), cpu_seconds(display.proc.pid)
            for vm in VMS:
                procs[vm] = subprocess.Popen(
                    [sys.executable, "-m", "frontend_shim", "draw-demo", "--display", display.address, "--vm", vm,
                     "--fps", str(FPS), "--seconds", str(secs + WARM_UP), "--width", str(WIDTH), "--height",
                     str(HEIGHT), "--encoding", "lz4", "--json"],
                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            with grpc.insecure_channel(display.address) as ch:
                stub = display_pb2_grpc.DisplayServiceStub(ch)
                time.sleep(WARM_UP)
                t0, cpu0, first = time.monotonic(), cpu_seconds(display.proc.pid), _presented(stub)
                rss_peak = 0
                while time.monotonic() - t0 < secs and all(p.poll() is None for p in procs.values()):
                    rss_peak = max(rss_peak, rss_kib(display.proc.pid))
                    time.sleep(1.0)
                elapsed = time.monotonic() - t0
                cpu = cpu_seconds(display.proc.pid) - cpu0
                last = _presented(stub)
                presenter = stub.GetDisplayState(display_pb2.GetDisplayStateRequest(vm=VMS[0]), timeout=10).presenter
            reports = {}
            for vm, p in procs.items():
                out, err = p.communicate(timeout=secs + 120)
                if p.returncode != 0:
                    raise RuntimeError(f"draw-demo {vm} failed: {err.strip()[-500:]}")
                reports[vm] = json.loads(out)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            display.stop()
    n = len(VMS)
    return {
        "seconds": round(elapsed, 1),
        "presenter": presenter,
        "fps_presented": {vm: round((last.get(vm, 0) - first.get(vm, 0)) / elapsed, 1) for vm in VMS},
        "guest_ticks_per_s": {vm: round(r["ticks"] / r["seconds"], 1) for vm, r in reports.items()},
        "service_cpu_percent": round(100 * cpu / elapsed, 1),
        "service_cpu_percent_per_vm": round(100 * cpu / elapsed / n, 1),
        "service_rss_kib_idle": base_rss,
        "service_rss_kib_peak": rss_peak,
        "service_rss_kib_per_vm": (rss_peak - base_rss) // n,
        "service_cpu_seconds_before_vms": round(base_cpu, 2),
    }


def _presented(stub: display_pb2_grpc.DisplayServiceStub) -> dict[str, int]:
    out = {}
    for vm in VMS:
        try:
            out[vm] = stub.GetDisplayState(display_pb2.GetDisplayStateRequest(vm=vm), timeout=10).stats.frames_presented
        except grpc.RpcError:
            out[vm] = 0
    return out


def run(quick: bool, workdir: Path) -> list[dict]:
    secs = seconds(quick)
    res = run_multivm(secs, workdir / "multivm")
    workload = f"{len(VMS)} VMs drawing {WIDTH}x{HEIGHT} at {FPS} fps for {secs:.0f} s, {res['presenter']}"
    fps = res["fps_presented"]
    return [
        _figure("multivm_fps_presented", "min", min(fps.values()), "fps", workload, per_vm=fps,
                guest_ticks_per_s=res["guest_ticks_per_s"]),
        _figure("multivm_service_cpu_per_vm", "display", res["service_cpu_percent_per_vm"], "%", workload,
                total=res["service_cpu_percent"]),
        _figure("multivm_service_rss_per_vm", "display", res["service_rss_kib_per_vm"], "KiB", workload,
                idle=res["service_rss_kib_idle"], peak=res["service_rss_kib_peak"]),
    ]  # fmt: skip


def _figure(metric: str, mode: str, value: float, unit: str, workload: str, **extra: object) -> dict:
    return {"metric": metric, "mode": mode, "link": "loopback", "p50": value, "p99": value, "unit": unit,
            "paper": None, "workload": workload, **extra}  # fmt: skip


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else seconds(os.environ.get("BENCH_QUICK") == "1")
    print(json.dumps(run_multivm(secs, ROOT / "build" / "bench" / "multivm"), indent=1))
