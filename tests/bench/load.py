"""Several VMs on one remote node: 4 shims (separate processes, each a scripted guest with a sound card and a
display card, mixed coherence modes, sample formats and encodings) on one audio service and one display service.

What is checked (the short version runs in `make test`, tests/test_load.py; this one in `make bench`):
- no cross-talk: each audio session's output (a WAV per session) is exactly what its own guest's card took
  from the guest's ring (its DMA log), which is the guest's PCM unless an xrun was reported; and each
  display session's framebuffer (Screenshot by session id; each VM has its own window) equals its own guest's
  VRAM;
- no underruns at the target latency (the players' counters, per session, from ListSessions): the bench's
  figure; on a loaded host the short version only prints them, and the guests' xruns;
- memory flat: the services' RSS sampled over the run; the slope after warm-up is reported.

`python -m tests.bench.load vm ...` is one VM (used by `run`); `python -m tests.bench.load [SECONDS]` runs the
whole load and prints the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from frontend_shim.commands.processes import ROOT, ServiceProcess, start_service
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common.png import decode
from tests.fault_helpers import list_sessions, rss_kib, slope


@dataclass(frozen=True)
class VmSpec:
    name: str
    audio_mode: str
    rate: int
    channels: int
    bits: int
    dac: str
    display_mode: str
    encoding: str
    tile_diff: bool = False


VMS = (
    VmSpec("vm1", "mirrored", 44100, 2, 16, "dac2", "mirrored", "lz4"),
    VmSpec("vm2", "backend", 22050, 1, 8, "dac1", "backend", "zstd"),
    VmSpec("vm3", "mirrored", 48662, 1, 16, "dac2", "backend", "auto", tile_diff=True),
    VmSpec("vm4", "backend", 11025, 2, 8, "dac1", "mirrored", "raw"),
)
WIDTH, HEIGHT, FPS = 480, 360, 10
PERIOD_FRAMES = 1024


def guest_pcm(spec: VmSpec, seconds: float) -> bytes:
    """Each VM's own PCM: noise from its own seed, so any byte from another session shows."""
    frame = spec.channels * spec.bits // 8
    return random.Random(spec.name).randbytes(int(spec.rate * seconds) * frame)


# ----------------------------------------------------------------------------------------------- one VM
def vm_main(argv: list[str]) -> None:
    """One VM: plays its PCM from start to end and draws meanwhile; reports, then keeps its sessions open until
    told to quit on stdin (so the load's driver can look at the services' copies)."""
    from frontend_shim.guests.scripted_audio import ScriptedEs1370Driver, new_guest
    from frontend_shim.guests.scripted_svga import ScriptedSvgaDriver, new_memory
    from frontend_shim.links.audio import AudioLink
    from frontend_shim.links.display import DisplayLink
    from services.devices import es1370_regs as R
    from services.devices.es1370 import PcmFormat

    p = argparse.ArgumentParser()
    p.add_argument("--audio", required=True)
    p.add_argument("--display", required=True)
    p.add_argument("--spec", required=True, help="JSON of a VmSpec")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--out", required=True, help="folder for this VM's framebuffer")
    args = p.parse_args(argv)
    spec = VmSpec(**json.loads(args.spec))
    fmt = PcmFormat(spec.rate, spec.channels, spec.bits)
    pcm = guest_pcm(spec, args.seconds)

    memory, irq = new_guest(record=True)
    # Four guests and two services share the cores (more on a loaded host): reads get far more than 50 ms.
    alink = AudioLink(args.audio, spec.audio_mode, memory, irq, vm=spec.name, access_timeout=2.0)
    alink.start()
    vram, fifo = new_memory()
    dlink = DisplayLink([args.display], spec.display_mode, vram, fifo, vm=spec.name, encoding=spec.encoding,
                        tile_diff=spec.tile_diff, access_timeout=2.0)  # fmt: skip (as above: 250 ms seen to expire)
    dlink.start()
    svga = ScriptedSvgaDriver(dlink, vram, fifo, seed=hash(spec.name) & 0xFFFF)
    svga.probe()
    svga.set_mode(WIDTH, HEIGHT)
    svga.init_fifo()
    svga.desktop()
    ids = {"audio": alink._conn.session_id, "display": dlink.slots[0].conn.session_id}  # type: ignore[union-attr]
    print(json.dumps({"ready": spec.name, **ids}), flush=True)
    sys.stdin.readline()  # "go": every VM has set up (imports, desktop) before any plays

    result: dict = {}

    def play() -> None:
        driver = ScriptedEs1370Driver(alink, memory, irq, clock=alink.clock)
        driver.probe()
        dac = R.DAC1 if spec.dac == "dac1" else R.DAC2
        result["audio"] = driver.play(pcm, fmt, dac=dac, period_frames=PERIOD_FRAMES)

    player = threading.Thread(target=play, daemon=True)
    player.start()
    ticks = 0
    started = time.monotonic()
    while player.is_alive():
        svga.tick(ticks)
        ticks += 1
        time.sleep(max(0.0, started + ticks / FPS - time.monotonic()))
    player.join()
    svga.sync()
    flushed = dlink.flush(30)
    played = alink.wait_played(30)
    (Path(args.out) / f"{spec.name}.fb").write_bytes(svga.framebuffer())
    memory.save(str(Path(args.out) / f"{spec.name}.dma"))  # type: ignore[attr-defined]
    a = result["audio"]
    stats = alink.stats.as_dict()
    print(json.dumps({
        "done": spec.name, "periods": a.periods, "interrupts": a.interrupts, "ticks": ticks, "flushed": flushed,
        "xruns": a.xruns, "late_dma": stats["late_dma"], "underruns": stats["underruns"],
        "played": played, "read_timeouts": alink.stats.read_timeouts + dlink.stats.read_timeouts,
        "reconnects": alink.stats.reconnects + dlink.stats.reconnects, "frames": dlink.stats.frames,
        "pcm_sha256": hashlib.sha256(pcm).hexdigest(),
    }), flush=True)  # fmt: skip
    sys.stdin.readline()  # "quit"
    alink.close()
    dlink.close()


# ----------------------------------------------------------------------------------------------- the load
@dataclass
class LoadResult:
    seconds: float
    vms: dict[str, dict] = field(default_factory=dict)  # name -> the VM's final report
    audio_sessions: dict[str, dict[str, int]] = field(default_factory=dict)  # vm -> counters at the end
    pcm_exact: dict[str, bool] = field(default_factory=dict)
    screen_exact: dict[str, bool] = field(default_factory=dict)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # service -> (t, KiB)

    def rss_slope_kib_per_min(self, service: str) -> float:
        """After warm-up (the first third: sessions open, desktops allocated, players start)."""
        points = self.rss[service]
        tail = [(t, kib) for t, kib in points if t >= points[-1][0] / 3]
        return slope(tail) * 60

    def rss_growth_kib(self, service: str) -> int:
        points = self.rss[service]
        warm = [kib for t, kib in points if t >= points[-1][0] / 3]
        return max(warm) - warm[0] if warm else 0

    @property
    def underruns(self) -> int:
        return sum(c.get("underruns", 0) for c in self.audio_sessions.values())


def run_load(seconds: float, workdir: Path, vms: tuple[VmSpec, ...] = VMS) -> LoadResult:
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("out-*.wav"):
        old.unlink()
    audio = start_service("audio", workdir / "logs", "--sink", "wav", "--wav-path",
                          str(workdir / "out-{session}-{channel}.wav"))  # fmt: skip
    display = start_service("display", workdir / "logs", "--presenter", "headless")
    result = LoadResult(seconds)
    procs: dict[str, subprocess.Popen] = {}
    ids: dict[str, dict] = {}
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=({"audio": audio, "display": display}, result,
                                                         stop_sampling), daemon=True)  # fmt: skip
    try:
        for spec in vms:
            procs[spec.name] = subprocess.Popen(
                [sys.executable, "-m", "tests.bench.load", "vm", "--audio", audio.address, "--display",
                 display.address, "--spec", json.dumps(spec.__dict__), "--seconds", str(seconds),
                 "--out", str(workdir)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        for name, proc in procs.items():
            ids[name] = _report(proc, "ready")
        for proc in procs.values():
            _say(proc, "go")
        sampler.start()
        for name, proc in procs.items():
            result.vms[name] = _report(proc, "done", timeout=seconds + 60)
        stop_sampling.set()
        by_vm = {s.vm: s for s in list_sessions("audio", audio.address)}
        result.audio_sessions = {name: dict(by_vm[name].counters) for name in procs if name in by_vm}
        for spec in vms:
            result.screen_exact[spec.name] = _screen_matches(display.address, ids[spec.name]["display"],
                                                             workdir / f"{spec.name}.fb")  # fmt: skip
    finally:
        stop_sampling.set()
        for proc in procs.values():
            _say(proc, "quit")
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        _wait_closed(audio)
        audio.stop()
        display.stop()
    for spec in vms:
        report = result.vms[spec.name]
        result.pcm_exact[spec.name] = _pcm_matches(
            workdir, ids[spec.name]["audio"], guest_pcm(spec, seconds), spec, report["xruns"] + report["late_dma"]
        )
    return result


def _say(proc: subprocess.Popen, word: str) -> None:
    if proc.poll() is None and proc.stdin:
        proc.stdin.write(word + "\n")
        proc.stdin.flush()


def _report(proc: subprocess.Popen, key: str, timeout: float = 30) -> dict:
    done: dict = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            if key in msg:
                done.update(msg)
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    if not done:
        raise RuntimeError(f"a VM did not report {key!r} within {timeout} s (exit code {proc.poll()})")
    return done


def _sample_rss(procs: dict[str, ServiceProcess], result: LoadResult, stop: threading.Event) -> None:
    started = time.monotonic()
    for name in procs:
        result.rss[name] = []
    while not stop.is_set():
        t = time.monotonic() - started
        for name, svc in procs.items():
            result.rss[name].append((t, rss_kib(svc.proc.pid)))
        stop.wait(0.5)


def _screen_matches(address: str, session_id: str, fb: Path) -> bool:
    from services.common.png import bgrx_to_rgb

    with grpc.insecure_channel(address) as ch:
        reply = display_pb2_grpc.DisplayServiceStub(ch).Screenshot(
            display_pb2.ScreenshotRequest(session_id=session_id), timeout=10
        )
    _, _, rgb = decode(reply.png)
    return rgb == bytes(bgrx_to_rgb(fb.read_bytes()))


def _pcm_matches(workdir: Path, session_id: str, pcm: bytes, spec: VmSpec, xruns: int) -> bool:
    """The session's WAV is what the guest's card took from its ring, in order (the backend drops a transfer
    under way when the guest stops, and one per restart); when nobody saw an xrun, that is the guest's PCM, then
    only the silence the guest padded and drained with."""
    from frontend_shim.guests.guest import load_reads
    from tests.audio_helpers import dropped_reads

    (path,) = workdir.glob(f"out-{session_id}-{spec.dac}*.wav")
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth() * 8) != (spec.rate, spec.channels, spec.bits):
            return False
        out = w.readframes(w.getnframes())
    reads = load_reads(str(workdir / f"{spec.name}.dma"))
    if dropped_reads(out, reads, xruns + 1 if spec.audio_mode == "backend" else 0) is None:
        return False
    silence = b"\x80" if spec.bits == 8 else b"\x00"
    return xruns > 0 or (out.startswith(pcm) and not out[len(pcm) :].strip(silence))


def _wait_closed(audio: ServiceProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while list_sessions("audio", audio.address) and time.monotonic() < deadline:
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------- bench suite
def run(quick: bool, workdir: Path) -> list[dict]:
    seconds = 20.0 if quick else 180.0
    res = run_load(seconds, workdir / "load")
    workload = f"{len(VMS)} VMs, {seconds:.0f} s"
    out = [
        _figure("load_underruns", "audio", res.underruns, "count", workload),
        _figure("load_cross_talk", "audio", sum(not ok for ok in res.pcm_exact.values()), "count", workload),
        _figure("load_cross_talk", "display", sum(not ok for ok in res.screen_exact.values()), "count", workload),
    ]
    for service in ("audio", "display"):
        out.append(_figure("load_rss_slope", service, round(res.rss_slope_kib_per_min(service), 1), "KiB/min",
                           workload))  # fmt: skip
        out.append(_figure("load_rss_growth", service, res.rss_growth_kib(service), "KiB", workload))
    return out


def _figure(metric: str, mode: str, value: float, unit: str, workload: str) -> dict:
    return {"metric": metric, "mode": mode, "link": "loopback", "p50": value, "p99": value, "unit": unit,
            "paper": None, "workload": workload}  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["vm"]:
        vm_main(sys.argv[2:])
    else:
        secs = float(sys.argv[1]) if len(sys.argv) > 1 else (20.0 if os.environ.get("BENCH_QUICK") == "1" else 180.0)
        r = run_load(secs, ROOT / "build" / "bench" / "load")
        print(json.dumps({
            "seconds": secs, "pcm_exact": r.pcm_exact, "screen_exact": r.screen_exact, "underruns": r.underruns,
            "sessions": r.audio_sessions, "vms": r.vms,
            "rss_slope_kib_per_min": {s: round(r.rss_slope_kib_per_min(s), 1) for s in r.rss},
            "rss_growth_kib": {s: r.rss_growth_kib(s) for s in r.rss},
            "rss_first_last_kib": {s: [r.rss[s][0][1], r.rss[s][-1][1]] for s in r.rss},
        }, indent=1))  # fmt: skip
