"""vfio-user round trip of one ES1370 register access, as QEMU sees it: client -> `serve-vfio-user` -> reply.

The client is the test harness (tests/test_vfio_user_harness.py) in this process; the server is the real
`python -m frontend_shim serve-vfio-user` in its own process with a real audio service behind it, so the
figure is what a QEMU vCPU waits for per trapped access, minus QEMU's own share. Per coherence mode:
backend (the read crosses gRPC to the service) and mirrored (the shim answers from its copy).

    .venv/bin/python -m tests.bench_vfio [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.devices import es1370_regs as R
from tests.helpers import ROOT, start_service
from tests.test_vfio_user_harness import CONFIG_REGION, VfioUserClient


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": round(s[len(s) // 2] / 1000, 1),
        "p99_us": round(s[min(len(s) - 1, len(s) * 99 // 100)] / 1000, 1),
        "mean_us": round(sum(s) / len(s) / 1000, 1),
    }


def measure_round_trips(mode: str, n: int = 2000, workdir: Path | None = None) -> dict:
    """p50/p99 of a BAR0 STATUS read, a BAR0 MEMPAGE write and a config-space read, `n` of each."""
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        audio = start_service("audio", work, "--sink", "null")
        sock_path = str(work / f"bench-{mode}.sock")
        shim = subprocess.Popen(
            [sys.executable, "-m", "frontend_shim", "serve-vfio-user", "--socket", sock_path,
             "--audio", audio.address, "--mode", mode],  # fmt: skip
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RDV_LOG_LEVEL": "warning"},
        )
        try:
            line = shim.stdout.readline() if shim.stdout else ""
            if not line.startswith("listening on"):
                raise RuntimeError(f"serve-vfio-user did not start: {line!r}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock_path)
            client = VfioUserClient(s)
            client.version()
            results = {}
            ops = {
                "bar_read": lambda: client.read32(0, R.STATUS),
                "bar_write": lambda: client.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC),
                "config_read": lambda: client.read32(CONFIG_REGION, 0),
            }
            for name, op in ops.items():
                for _ in range(min(200, n)):  # warm up: connections, caches, the service's session
                    op()
                samples = []
                for _ in range(n):
                    t = time.perf_counter_ns()
                    op()
                    samples.append(time.perf_counter_ns() - t)
                results[name] = _percentiles(samples)
            client.close()
            return {"mode": mode, "n": n, **results}
        finally:
            shim.terminate()
            shim.wait(10)
            audio.stop()


PAPER_NS = {  # the paper's Table 2 for the same access, per card
    ("bar_read", "backend"): 209_000, ("bar_read", "mirrored"): 1_000,
    ("bar_write", "backend"): 4_000, ("bar_write", "mirrored"): 1_000,
}  # fmt: skip


def run(quick: bool, workdir: Path) -> list[dict]:
    """`make bench` records: the vfio-user round trip per access kind and mode (loopback, in ns)."""
    records = []
    for mode in ("mirrored", "backend"):
        measured = measure_round_trips(mode, 300 if quick else 3000, workdir)
        for op in ("bar_read", "bar_write", "config_read"):
            records.append({
                "metric": f"vfio_user_{op}", "mode": mode, "link": "loopback",
                "p50": measured[op]["p50_us"] * 1000, "p99": measured[op]["p99_us"] * 1000, "unit": "ns",
                "paper": PAPER_NS.get((op, mode)), "samples": measured["n"],
            })  # fmt: skip
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    for mode in ("mirrored", "backend"):
        print(json.dumps(measure_round_trips(mode, args.n)))


if __name__ == "__main__":
    main()
