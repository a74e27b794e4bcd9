"""vfio-user round trip of one trapped register access, as QEMU sees it: client -> `serve-vfio-user` -> reply.

The client is the test harness (tests/test_vfio_user_harness.py) in this process; the server is the real
`python -m frontend_shim serve-vfio-user` in its own process with a real service behind it (audio for the
ES1370, display for the SVGA II), so the figure is what a QEMU vCPU waits for per trapped access, minus QEMU's
own share. Per coherence mode: backend (the read crosses gRPC to the service) and mirrored (the shim answers
from its copy). ES1370: STATUS read, MEMPAGE write. SVGA II: a VALUE-port read (4 bytes at offset 1, the ID
register), an INDEX-port write. In backend mode the ES1370 read is also timed straight on a session stream of
the bench process (`register_read`, what the shim's link adds on top of the vfio-user hop).

Each round trip is measured in rounds interleaved with the floors under it (tests/bench/floors.py): round after
round, n/rounds calls of each access and of each floor, so that `ratio_to_floor`, the median over the rounds of
(path p50 / floor p50 of the same round), is honest on a machine whose load comes and goes.

    .venv/bin/python -m tests.bench.vfio [--n 2000] [--rounds 8] [--device es1370|svga|both]   # one line a figure
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from frontend_shim.guests.guest import EventLine, RamMemory
from frontend_shim.links.audio import AudioLink
from services.devices import es1370_regs as R
from services.devices import svga_regs as S
from tests.audio_helpers import STEREO16, start_dac2
from tests.bench.floors import Floors, floor_clients
from tests.bench.profile import flame_graphs
from tests.bench.stats import _cpu_seconds, _threads_cpu_ns, interleaved, interleaved_record, percentile, time_calls
from tests.bench.vfio_client import IRQ_DATA_EVENTFD, IRQ_DATA_NONE, IRQ_TRIGGER, IRQ_UNMASK, SyncVfioUserClient
from tests.helpers import ROOT, start_service
from tests.test_vfio_user_harness import sealed_memfd

CONFIG_REGION = 7
GUEST_RAM_IOVA, GUEST_RAM_SIZE = 0x100000, 1 << 20


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    return {
        "p50_us": round(percentile(samples_ns, 0.5) / 1000, 1),
        "p99_us": round(percentile(samples_ns, 0.99) / 1000, 1),
        "mean_us": round(sum(samples_ns) / len(samples_ns) / 1000, 1),
    }


class ShimRun:
    """A real `serve-vfio-user` (and its service) in their own processes; `summary` is its --json at exit."""

    def __init__(self, shim: subprocess.Popen, socket_path: str, service_pid: int, service_address: str) -> None:
        self.proc, self.socket, self.service_pid = shim, socket_path, service_pid
        self.service_address = service_address
        self.summary: dict = {}


@contextmanager
def serve_vfio_user(
    device: str,
    mode: str,
    work: Path,
    *extra: str,
    profile: str | None = None,
    root: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Iterator[ShimRun]:
    """The shim and its service; with `profile`, py-spy flame graphs of both go to build/bench/flame-*.svg. `root`:
    the checkout whose shim and service run (another revision's, to compare in one run); `env`: added to both's."""
    if device == "svga":
        service = start_service("display", work, "--presenter", "headless", cwd=root, env=env)
        device_args = ["--device", "svga", "--display", service.address, "--vram-scan-ms", "0"]
    else:
        service = start_service("audio", work, "--sink", "null", cwd=root, env=env)
        device_args = ["--audio", service.address]
    sock_path = str(work / f"bench-{device}-{mode}-{time.monotonic_ns()}.sock")
    shim = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "serve-vfio-user", "--socket", sock_path,
         *device_args, "--mode", mode, "--json", *extra],  # fmt: skip
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RDV_LOG_LEVEL": "warning", **(env or {})},
    )
    run = ShimRun(shim, sock_path, service.proc.pid, service.address)
    try:
        line = shim.stdout.readline() if shim.stdout else ""
        if not line.startswith("listening on"):
            raise RuntimeError(f"serve-vfio-user did not start: {line!r}")
        if profile:
            pids = {"shim": shim.pid, f"{'display' if device == 'svga' else 'audio'}-service": service.proc.pid}
            with flame_graphs(f"{profile}-{device}-{mode}", pids):
                yield run
        else:
            yield run
        shim.send_signal(signal.SIGTERM)
        out, _ = shim.communicate(timeout=30)
        run.summary = json.loads(out.strip().splitlines()[-1])
    finally:
        if shim.poll() is None:
            shim.kill()
            shim.wait(10)
        service.stop()


def measure_round_trips(
    mode: str,
    n: int = 2000,
    workdir: Path | None = None,
    device: str = "es1370",
    profile: bool = False,
    floors: dict[str, Callable[[], object]] | None = None,
    rounds: int = 1,
) -> dict:
    """p50/p99 of a BAR0 register read, a BAR0 register write and a config-space read, `n` of each; in backend
    mode the ES1370 read also straight on a session stream of this process (`stream_read`, the shim's share of
    the backend read). With `floors` ({name: one round trip}, tests/bench/floors.py), in `rounds` rounds
    interleaved with theirs (stats.interleaved): `rounds` then has every series' samples per round."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        shim = stack.enter_context(
            serve_vfio_user(device, mode, workdir or tmp, profile="accesses" if profile else None)
        )
        client = SyncVfioUserClient(shim.socket)
        stack.callback(client.close)
        ops: dict[str, Callable[[], object]] = {"bar_read": bar_read(client, device)}
        if device == "svga":
            ops["bar_write"] = lambda: client.write32(0, S.INDEX_PORT, S.REG_ID)
        else:
            ops["bar_write"] = lambda: client.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)
        ops["config_read"] = lambda: client.read32(CONFIG_REGION, 0)
        if device == "es1370":
            if mode == "backend":
                link = AudioLink(shim.service_address, "backend", RamMemory(1 << 16), EventLine(), access_timeout=1.0)
                link.start()
                stack.callback(link.close)
                ops["stream_read"] = lambda: link.io_read(0, R.STATUS, 4)
        for op in ops.values():  # warm up
            time_calls(op, 200, 0)
        timed = interleaved({**ops, **(floors or {})}, rounds, max(1, n // rounds))
    samples = {name: [x for rnd in timed[name] for x in rnd] for name in ops}
    return {"device": device, "mode": mode, "n": n, "samples": samples, "rounds": timed,
            **{name: _percentiles(s) for name, s in samples.items()}}  # fmt: skip


def bar_read(client: SyncVfioUserClient, device: str) -> Callable[[], int]:
    """The benchmarks' register read on a new connection: ES1370 STATUS; SVGA II: the ID register through the
    VALUE port (4 bytes at offset 1; INDEX is written here)."""
    client.version()
    if device == "svga":
        client.write32(0, S.INDEX_PORT, S.REG_ID)
        return lambda: client.read32(0, S.VALUE_PORT)
    return lambda: client.read32(0, R.STATUS)


PLACEMENTS = (("same-cpu", 0), ("cross-cpu", 1))  # the CPU of the servers' threads; the client's thread on CPU 0


def can_place() -> bool:
    return {0, 1} <= os.sched_getaffinity(0)


@contextmanager
def placed(cpu: int, pids: list[int]) -> Iterator[None]:
    """This thread on CPU 0 and every thread of the processes `pids` on `cpu` until the end of the block, then
    each as it was."""
    tasks = [int(tid) for pid in pids for tid in os.listdir(f"/proc/{pid}/task")]
    before = {tid: os.sched_getaffinity(tid) for tid in [0, *tasks]}
    try:
        os.sched_setaffinity(0, {0})
        for tid in tasks:
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def _unpinned(metric: str, mode: str) -> dict[str, str]:
    """A record's `placement` when the CPUs were left to the kernel: only the mirrored read says it (its goal is
    on the pinned records, `measure_placements`)."""
    return {"placement": "kernel"} if (metric, mode) == ("vfio_user_read", "mirrored") else {}


def measure_placements(workdir: Path, floors: Floors, rounds: int, n: int) -> list[dict]:
    """The mirrored register read of both cards and the socket echo under it with the CPUs pinned: the client's
    thread on CPU 0, every thread of the shims and of the echo servers on CPU 0 (same-cpu) or CPU 1 (cross-cpu),
    in rounds interleaved as everywhere. Left to itself the kernel places a single-threaded echo server and a
    shim's connection thread by rules of its own (one may sit beside the client while the other sits across:
    6 against 20-60 µs here), so only a path and a floor placed alike say what rdv adds."""
    if not can_place():
        return []
    names = ("floor_socket_echo", "floor_vfio_user_echo")
    series: dict[str, Callable[[], object]] = {name: floors[name] for name in names}
    pids = [floors.pids[name] for name in names]
    records = []
    with contextlib.ExitStack() as stack:
        for device in ("es1370", "svga"):
            shim = stack.enter_context(serve_vfio_user(device, "mirrored", workdir))
            client = SyncVfioUserClient(shim.socket)
            stack.callback(client.close)
            series[device] = bar_read(client, device)
            pids.append(shim.proc.pid)
        for placement, cpu in PLACEMENTS:
            with placed(cpu, pids):
                timed = interleaved(series, rounds, max(1, n // rounds))
            echo = percentile([x for rnd in timed["floor_vfio_user_echo"] for x in rnd], 0.5)
            for device in ("es1370", "svga"):
                records.append(
                    interleaved_record("vfio_user_read", "mirrored", timed[device], timed,
                                       PAPER_NS[("bar_read", "mirrored")], content=device, placement=placement,
                                       do_nothing_server_p50=echo)  # fmt: skip
                )
    return records


def measure_interrupts(
    mode: str, seconds: float, workdir: Path, period_frames: int = 256, profile: bool = False
) -> dict[str, list[int]]:
    """The ES1370 plays a looping ring of short periods through `serve-vfio-user`; the client is QEMU's INTx side
    (eventfd, then the handler's STATUS read, UNMASK after that access, the ack). Per interrupt: cause (mirrored:
    the shim's model raising the line; backend: the service's stamp on its interrupt message) to the shim's
    eventfd write, and to the client waking on the eventfd."""
    fmt_bytes, periods = 4, 8  # 16-bit stereo
    ring = period_frames * periods * fmt_bytes
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ram = sealed_memfd("bench-guest-ram", GUEST_RAM_SIZE)  # shared like QEMU's memory-backend-memfd
    with mmap.mmap(ram, GUEST_RAM_SIZE) as m:
        m[: ring] = bytes(range(256)) * (ring // 256)  # something audible
    seen: list[int] = []  # the client woke on the eventfd
    idle: list[int] = []  # the client began to wait (its previous handler done)
    try:
        with serve_vfio_user("es1370", mode, workdir, profile="interrupts" if profile else None) as shim:
            c = SyncVfioUserClient(shim.socket)
            c.version()
            c.dma_map(GUEST_RAM_IOVA, GUEST_RAM_SIZE, ram)
            c.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (efd,))
            start_dac2(c.write32, GUEST_RAM_IOVA, ring, period_frames, 44100)
            pids = {"shim": shim.proc.pid, "service": shim.service_pid}
            start, cpu = time.monotonic(), {who: _cpu_seconds(pid) for who, pid in pids.items()}
            end = start + seconds
            while time.monotonic() < end:
                idle.append(time.monotonic_ns())
                if not select.select([efd], [], [], 2.0)[0]:
                    raise RuntimeError(f"no interrupt within 2 s ({len(seen)} so far)")
                seen.append(time.monotonic_ns())
                os.eventfd_read(efd)
                status = c.read32(0, R.STATUS)  # the handler's first access: QEMU deasserts and unmasks after it
                c.set_irqs(IRQ_DATA_NONE | IRQ_UNMASK, 0, 0, 1)
                if status & R.STAT_DAC2:
                    c.write32(0, R.SERIAL_CONTROL, STEREO16)  # ack: INT_EN off, then on again
                    c.write32(0, R.SERIAL_CONTROL, STEREO16 | R.SCTRL_P2INTEN)
            played = time.monotonic() - start
            cpu = {who: _cpu_seconds(pid) - cpu[who] for who, pid in pids.items()}
            c.write32(0, R.SERIAL_CONTROL, STEREO16)
            c.write32(0, R.CONTROL, R.CTRL_CDC_EN)
            c.close()
    finally:
        os.close(efd)
        os.close(ram)
    # Only interrupts caused while the client was waiting: mirrored mode's DMA runs ahead of playback, so a
    # period often ends during the previous handler, and its signal then waits for the guest's UNMASK by design.
    to_eventfd, to_client = [], []
    k = 0
    for cause, written in shim.summary.get("irq_timeline", []):
        while k < len(seen) and seen[k] < written:
            k += 1
        if k < len(seen) and cause >= idle[k]:
            to_eventfd.append(written - cause)
            to_client.append(seen[k] - cause)
    return {
        "cause_to_eventfd": to_eventfd,
        "cause_to_client": to_client,
        "cpu_per_audio_second": {who: seconds_used / played for who, seconds_used in cpu.items()},  # type: ignore[dict-item]
    }


PAPER_NS = {  # the paper's Table 2 for the same access, per card
    ("bar_read", "backend"): 209_000, ("bar_read", "mirrored"): 1_000,
    ("bar_write", "backend"): 4_000, ("bar_write", "mirrored"): 1_000,
}  # fmt: skip
PAPER_IRQ_NS = {"backend": 17_000, "mirrored": 16_000}


def run(quick: bool, workdir: Path) -> list[dict]:
    """`make bench` records: the vfio-user round trip per access kind and mode, and the interrupt path (loopback,
    in ns). `vfio_user_read` is the trapped BAR read. The round trips are measured in rounds interleaved with
    their floors' (`ratio_to_floor`: the median over the rounds), an interrupt run between two floor rounds."""
    records = []
    names = {"bar_read": "vfio_user_read", "bar_write": "vfio_user_write", "config_read": "vfio_user_config_read"}
    rounds, n = (5, 500) if quick else (10, 3000)
    with floor_clients(workdir) as floors:
        records += measure_placements(workdir, floors, rounds, n)  # first: the mirrored read's goal is on these
        for device in ("es1370", "svga"):
            for mode in ("mirrored", "backend"):
                measured = measure_round_trips(mode, n, workdir, device, floors=floors, rounds=rounds)
                timed = measured["rounds"]
                for op, metric in names.items():
                    paper = PAPER_NS.get((op, mode))
                    where = _unpinned(metric, mode)
                    records.append(interleaved_record(metric, mode, timed[op], timed, paper, content=device, **where))
                if "stream_read" in timed:
                    records.append(
                        interleaved_record("register_read", mode, timed["stream_read"], timed, 209_000,
                                           path="session stream (shim's link, no vfio-user)")  # fmt: skip
                    )
        for mode in ("mirrored", "backend"):
            before = interleaved(floors, 1, n // rounds)
            irq = measure_interrupts(mode, 1.5 if quick else 5.0, workdir)
            after = interleaved(floors, 1, n // rounds)
            around = {name: [before[name][0] + after[name][0]] for name in floors}
            for path in ("cause_to_eventfd", "cause_to_client"):
                records.append(
                    interleaved_record("interrupt", mode, [irq[path]], around, PAPER_IRQ_NS[mode],
                                       path=f"vfio-user {path}")  # fmt: skip
                )
            for who, cpu in irq["cpu_per_audio_second"].items():  # 44.1 kHz stereo, 256-frame periods
                records.append({"metric": "cpu_per_audio_second", "mode": who, "link": "loopback",
                                "p50": round(cpu, 3), "p99": round(cpu, 3), "unit": "s", "paper": None,
                                "workload": f"vfio-user ES1370 {mode}"})  # fmt: skip
    return records


def cpu_per_backend_read(n: int, work: Path) -> dict:
    """Microseconds of CPU the shim and the audio service spend per backend ES1370 STATUS read (all threads)."""
    with serve_vfio_user("es1370", "backend", work) as shim:
        client = SyncVfioUserClient(shim.socket)
        try:
            client.version()
            for _ in range(200):
                client.read32(0, R.STATUS)
            pids = {"shim": shim.proc.pid, "service": shim.service_pid}
            before = {k: _threads_cpu_ns(p) for k, p in pids.items()}
            took = time_calls(lambda: client.read32(0, R.STATUS), n, warmup=0)
            cpu = {f"{k}_cpu_us": round((_threads_cpu_ns(p) - before[k]) / n / 1000, 1) for k, p in pids.items()}
            return {"p50_us": round(percentile(took, 0.5) / 1000, 1), **cpu}
        finally:
            client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--device", choices=["es1370", "svga", "both"], default="both")
    p.add_argument("--interrupts", type=float, default=0.0, metavar="SECONDS", help="measure interrupts instead")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="also time the register read of another revision's shim and service, in the same rounds "
                        "(DIR: its checkout, e.g. `git archive REV | tar -x -C DIR`)")  # fmt: skip
    p.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of the baseline's processes (e.g. `--baseline . --baseline-env "
                        "GRPC_EXPERIMENTS=`: this checkout under gRPC's default core)")  # fmt: skip
    p.add_argument("--cpu-per-read", type=int, default=0, metavar="N",
                   help="instead: CPU of the shim and the service per backend ES1370 read, over N reads")  # fmt: skip
    p.add_argument("--placements", action="store_true",
                   help="instead: mirrored reads and socket echo, CPUs pinned (same-cpu, cross-cpu)")  # fmt: skip
    args = p.parse_args()
    if args.placements:
        if not can_place():
            p.error("--placements needs CPUs 0 and 1")
        with tempfile.TemporaryDirectory() as tmp, floor_clients(Path(tmp)) as floors:
            for r in measure_placements(Path(tmp), floors, args.rounds, args.n):
                shown = ("content", "placement", "p50", "floor_p50", "do_nothing_server_p50", "ratio_to_floor",
                         "ratio_goal", "ratio_rounds")  # fmt: skip
                print(json.dumps({k: r.get(k) for k in shown}))
        return
    if args.cpu_per_read:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(cpu_per_backend_read(args.cpu_per_read, Path(tmp))))
        return
    if any("=" not in kv for kv in args.baseline_env):
        p.error("--baseline-env takes NAME=VALUE")
    baseline_env = dict(kv.split("=", 1) for kv in args.baseline_env)
    if args.interrupts:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("mirrored", "backend"):
                irq = measure_interrupts(mode, args.interrupts, Path(tmp))
                cpu = irq.pop("cpu_per_audio_second")
                print(json.dumps({"mode": mode, **{k: _percentiles(v) for k, v in irq.items()}, "cpu_per_s": cpu}))
        return
    keys = ("p50", "p99", "p99_over_p50", "floor_p50", "ratio_to_floor", "ratio_goal", "ratio_rounds")
    names = {"bar_read": "vfio_user_read", "bar_write": "vfio_user_write", "config_read": "vfio_user_config_read",
             "stream_read": "register_read"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, floor_clients(Path(tmp)) as floors:
        for device in ("es1370", "svga") if args.device == "both" else (args.device,):
            for mode in ("mirrored", "backend"):
                with contextlib.ExitStack() as stack:
                    series = dict(floors)
                    if args.baseline:
                        base = stack.enter_context(serve_vfio_user(device, mode, Path(tmp), root=args.baseline,
                                                                   env=baseline_env))  # fmt: skip
                        client = SyncVfioUserClient(base.socket)
                        stack.callback(client.close)
                        series["bar_read_baseline"] = bar_read(client, device)
                    measured = measure_round_trips(mode, args.n, Path(tmp), device, floors=series, rounds=args.rounds)
                timed = measured["rounds"]
                for op, metric in {**names, "bar_read_baseline": "vfio_user_read"}.items():
                    if op in timed:
                        r = interleaved_record(metric, mode, timed[op], timed, None, **_unpinned(metric, mode))
                        print(json.dumps({"device": device, "op": op, "mode": mode, **{k: r.get(k) for k in keys}}))
                for name in floors:
                    print(json.dumps({"device": device, "mode": mode, "floor": name,
                                      "p50": percentile([x for rnd in timed[name] for x in rnd], 0.5)}))  # fmt: skip


if __name__ == "__main__":
    main()
