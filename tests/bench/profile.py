"""`make profile`: py-spy flame graphs (SVG, build/bench/flame-*.svg) of the shim (`serve-vfio-user`) and of the
audio service while the vfio-user register-access and interrupt benchmarks run (the interrupt run plays PCM, so
its graphs hold the audio-chunk path too: pushed chunks in mirrored mode, DMA requests in backend mode).

py-spy samples the processes from outside (--nonblocking: they are not paused), so the figures printed beside
the graphs are close to an unprofiled run's.

    .venv/bin/python -m tests.bench.profile
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from frontend_shim.commands.processes import ROOT

OUT = ROOT / "build" / "bench"
RATE = 500  # samples per second


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: run `make setup` (it is a dev dependency)")
    return found


@contextmanager
def flame_graphs(name: str, pids: dict[str, int], out: Path = OUT) -> Iterator[list[Path]]:
    """Record each process of `pids` ({"shim": pid, ...}) for the `with` block into out/flame-NAME-WHO.svg."""
    out.mkdir(parents=True, exist_ok=True)
    exe = py_spy()
    procs, paths = [], []
    for who, pid in pids.items():
        path = out / f"flame-{name}-{who}.svg"
        procs.append(
            subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--output", str(path), "--format", "flamegraph",
                 "--rate", str(RATE), "--nonblocking", "--threads"],  # fmt: skip
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        paths.append(path)
    try:
        yield paths
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes the graph when interrupted
        for proc, path in zip(procs, paths, strict=True):
            _, err = proc.communicate(timeout=60)
            if not path.exists():
                print(f"py-spy wrote no {path.name}: {err.strip()[-500:]}", file=sys.stderr)


def main() -> None:
    from tests.bench.vfio import measure_interrupts, measure_round_trips

    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("mirrored", "backend"):
            measured = measure_round_trips(mode, 3000, Path(tmp), "es1370", profile=True)
            print(json.dumps({k: v for k, v in measured.items() if k != "samples"}))
            irq = measure_interrupts(mode, 4.0, Path(tmp), profile=True)
            print(json.dumps({"interrupts": mode, **{k: len(v) for k, v in irq.items()}}))
    print("flame graphs:", " ".join(sorted(p.name for p in OUT.glob("flame-*.svg"))))


if __name__ == "__main__":
    main()
