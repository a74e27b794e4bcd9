"""Several VMs on one node: 4 scripted guests each animate their desktop at 30 fps (`draw-demo --vm vmN`) into
one display service that shows each in its own SDL window (under a private Xvfb when there is one, SDL's dummy
driver otherwise) and at once play sound (`play --vm vmN`, a different rate per VM) into one audio service that
mixes them (`--mix service`, into an ALSA file PCM), for RDV_BENCH_MULTIVM_SECONDS (default 300 s, the issue's
five minutes; 20 s with BENCH_QUICK=1).

Reported: each VM's presented frames per second (GetDisplayState, over the run after a warm-up) next to the
ticks its guest drew per second; each VM's audio underruns and late DMA transfers (the audio service's
ListSessions); and both services' CPU (seconds and percent of one core, /proc/PID/stat) and memory (RSS from
/proc/PID/status, peak and above the service with no VM), in total and divided by the VMs.

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
from frontend_shim.guests.pcm import melody, write_wav
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.devices.es1370 import PcmFormat
from tests.fault_helpers import list_sessions, rss_kib
from tests.xvfb import xvfb

VMS = ("vm1", "vm2", "vm3", "vm4")
FPS = 30
WIDTH, HEIGHT = 640, 480
RATES = (44100, 22050, 29400, 11025)  # each VM's sound (rates an ES1370 makes), resampled by the mixer to MIX_RATE
MIX_RATE = 48000
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
    wavs = {vm: _tone(workdir / f"{vm}.wav", rate, secs + WARM_UP) for vm, rate in zip(VMS, RATES, strict=True)}
    with screen(workdir) as env:
        display = start_service("display", workdir / "logs", "--presenter", "sdl", env=env)
        audio = start_service("audio", workdir / "logs", "--mix", "service", "--mix-rate", str(MIX_RATE),
                              "--alsa-device", f"file:FILE={workdir / 'mix.raw'},FORMAT=raw")  # fmt: skip
        services = {"display": display, "audio": audio}
        procs: dict[str, subprocess.Popen] = {}
        try:
            time.sleep(1.0)
            base_rss = {name: rss_kib(svc.proc.pid) for name, svc in services.items()}
            for vm in VMS:
                procs[vm] = _guest("draw-demo", "--display", display.address, "--vm", vm, "--fps", str(FPS),
                                   "--seconds", str(secs + WARM_UP), "--width", str(WIDTH), "--height", str(HEIGHT),
                                   "--encoding", "lz4")  # fmt: skip
                procs[f"{vm}-audio"] = _guest("play", "--audio", audio.address, "--vm", vm, "--wav", str(wavs[vm]))
            with grpc.insecure_channel(display.address) as ch:
                stub = display_pb2_grpc.DisplayServiceStub(ch)
                time.sleep(WARM_UP)
                t0, first = time.monotonic(), _presented(stub)
                cpu0 = {name: cpu_seconds(svc.proc.pid) for name, svc in services.items()}
                rss_peak = dict.fromkeys(services, 0)
                warm = _audio_counters(audio.address, {})  # the warm-up's, subtracted from the run's
                counters = dict(warm)  # each VM's audio session, last seen (it closes when its sound ends)
                while time.monotonic() - t0 < secs and all(p.poll() is None for p in procs.values()):
                    for name, svc in services.items():
                        rss_peak[name] = max(rss_peak[name], rss_kib(svc.proc.pid))
                    counters = _audio_counters(audio.address, counters)
                    time.sleep(1.0)
                counters = _audio_counters(audio.address, counters)
                elapsed = time.monotonic() - t0
                cpu = {name: cpu_seconds(svc.proc.pid) - cpu0[name] for name, svc in services.items()}
                last = _presented(stub)
                presenter = stub.GetDisplayState(display_pb2.GetDisplayStateRequest(vm=VMS[0]), timeout=30).presenter
            reports = {}
            for name, p in procs.items():
                out, err = p.communicate(timeout=secs + 120)
                if p.returncode != 0:
                    raise RuntimeError(f"{p.args[3]} {name} failed: {err.strip()[-500:]}")
                reports[name] = json.loads(out)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            audio.stop()
            display.stop()
    n = len(VMS)
    return {
        "seconds": round(elapsed, 1),
        "presenter": presenter,
        "fps_presented": {vm: round((last.get(vm, 0) - first.get(vm, 0)) / elapsed, 1) for vm in VMS},
        "guest_ticks_per_s": {vm: round(reports[vm]["ticks"] / reports[vm]["seconds"], 1) for vm in VMS},
        "audio_rates": dict(zip(VMS, RATES, strict=True)),
        "audio_underruns": {vm: _since(counters, warm, vm, "underruns") for vm in VMS},
        "audio_late_dma": {vm: _since(counters, warm, vm, "late_dma") for vm in VMS},
        "audio_underruns_warm_up": {vm: warm.get(vm, {}).get("underruns", 0) for vm in VMS},
        "guest_xruns": {vm: reports[f"{vm}-audio"]["xruns"] for vm in VMS},
        "guest_underruns": {vm: reports[f"{vm}-audio"].get("underruns", -1) for vm in VMS},  # as the shim saw them
        "services": {name: _usage(cpu[name], elapsed, base_rss[name], rss_peak[name], n) for name in services},
    }


def _audio_counters(address: str, last: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Each VM's audio session counters (ListSessions), over `last`; `last` as it was when the service is slow to
    answer (a loaded machine), so one late answer costs a sample, not the run."""
    try:
        return {**last, **{s.vm: dict(s.counters) for s in list_sessions("audio", address)}}
    except grpc.RpcError:
        return last


def _since(now: dict[str, dict[str, int]], then: dict[str, dict[str, int]], vm: str, counter: str) -> int:
    """A VM's counter over the measured run (-1: its session was never seen)."""
    if vm not in now:
        return -1
    return now[vm].get(counter, 0) - then.get(vm, {}).get(counter, 0)


def _usage(cpu: float, elapsed: float, idle_rss: int, peak_rss: int, n: int) -> dict:
    """One service's CPU (/proc/PID/stat) and RSS (/proc/PID/status) over the run, in total and per VM."""
    percent = 100 * cpu / elapsed
    return {"cpu_seconds": round(cpu, 2), "cpu_seconds_per_vm": round(cpu / n, 2), "cpu_percent": round(percent, 1),
            "cpu_percent_per_vm": round(percent / n, 1), "rss_kib_idle": idle_rss, "rss_kib_peak": peak_rss,
            "rss_kib_per_vm": (peak_rss - idle_rss) // n}  # fmt: skip


def _tone(path: Path, rate: int, secs: float) -> Path:
    """A WAV of `secs` seconds: the demo melody's two seconds, repeated."""
    fmt = PcmFormat(rate=rate, channels=2, bits=16)
    write_wav(str(path), fmt, melody(fmt, 2.0) * (int(secs) // 2 + 1))
    return path


def _guest(command: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "frontend_shim", command, *args, "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _presented(stub: display_pb2_grpc.DisplayServiceStub) -> dict[str, int]:
    out = {}
    for vm in VMS:
        try:
            out[vm] = stub.GetDisplayState(display_pb2.GetDisplayStateRequest(vm=vm), timeout=30).stats.frames_presented
        except grpc.RpcError:
            out[vm] = 0
    return out


def run(quick: bool, workdir: Path) -> list[dict]:
    secs = seconds(quick)
    res = run_multivm(secs, workdir / "multivm")
    workload = (f"{len(VMS)} VMs drawing {WIDTH}x{HEIGHT} at {FPS} fps and playing sound (service mixer) for "
                f"{secs:.0f} s, {res['presenter']}")  # fmt: skip
    fps = res["fps_presented"]
    figures = [
        _figure("multivm_fps_presented", "min", min(fps.values()), "fps", workload, per_vm=fps,
                guest_ticks_per_s=res["guest_ticks_per_s"]),
        _figure("multivm_audio_underruns", "audio", sum(res["audio_underruns"].values()), "count", workload,
                per_vm=res["audio_underruns"], late_dma=res["audio_late_dma"], guest_xruns=res["guest_xruns"],
                warm_up=res["audio_underruns_warm_up"], rates=res["audio_rates"]),
    ]  # fmt: skip
    for name, use in res["services"].items():
        figures += [
            _figure("multivm_service_cpu_per_vm", name, use["cpu_percent_per_vm"], "%", workload,
                    total=use["cpu_percent"], cpu_seconds=use["cpu_seconds"],
                    cpu_seconds_per_vm=use["cpu_seconds_per_vm"]),
            _figure("multivm_service_rss_per_vm", name, use["rss_kib_per_vm"], "KiB", workload,
                    idle=use["rss_kib_idle"], peak=use["rss_kib_peak"]),
        ]  # fmt: skip
    return figures


def _figure(metric: str, mode: str, value: float, unit: str, workload: str, **extra: object) -> dict:
    return {"metric": metric, "mode": mode, "link": "loopback", "p50": value, "p99": value, "unit": unit,
            "paper": None, "workload": workload, **extra}  # fmt: skip


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else seconds(os.environ.get("BENCH_QUICK") == "1")
    print(json.dumps(run_multivm(secs, ROOT / "build" / "bench" / "multivm"), indent=1))
