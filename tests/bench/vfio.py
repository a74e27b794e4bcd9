"""vfio-user round trip of one trapped register access, as QEMU sees it: client -> `serve-vfio-user` -> reply.

The client is the test harness (tests/test_vfio_user_harness.py) in this process; the server is the real
`python -m frontend_shim serve-vfio-user` in its own process with a real service behind it (audio for the
ES1370, display for the SVGA II), so the figure is what a QEMU vCPU waits for per trapped access, minus QEMU's
own share. Per coherence mode: backend (the read crosses gRPC to the service) and mirrored (the shim answers
from its copy). ES1370: STATUS read, MEMPAGE write. SVGA II: a VALUE-port read (4 bytes at offset 1, the ID
register), an INDEX-port write.

    .venv/bin/python -m tests.bench.vfio [--n 2000] [--device es1370|svga|both]
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
from services.devices import svga_regs as S
from tests.helpers import ROOT, start_service
from tests.test_vfio_user_harness import CONFIG_REGION, VfioUserClient


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": round(s[len(s) // 2] / 1000, 1),
        "p99_us": round(s[min(len(s) - 1, len(s) * 99 // 100)] / 1000, 1),
        "mean_us": round(sum(s) / len(s) / 1000, 1),
    }


def measure_round_trips(mode: str, n: int = 2000, workdir: Path | None = None, device: str = "es1370") -> dict:
    """p50/p99 of a BAR0 register read, a BAR0 register write and a config-space read, `n` of each."""
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        if device == "svga":
            service = start_service("display", work, "--presenter", "headless")
            device_args = ["--device", "svga", "--display", service.address, "--vram-scan-ms", "0"]
        else:
            service = start_service("audio", work, "--sink", "null")
            device_args = ["--audio", service.address]
        sock_path = str(work / f"bench-{device}-{mode}.sock")
        shim = subprocess.Popen(
            [sys.executable, "-m", "frontend_shim", "serve-vfio-user", "--socket", sock_path,
             *device_args, "--mode", mode],  # fmt: skip
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
            if device == "svga":
                client.write32(0, S.INDEX_PORT, S.REG_ID)
                ops = {
                    "bar_read": lambda: client.read(0, S.VALUE_PORT, 4),
                    "bar_write": lambda: client.write32(0, S.INDEX_PORT, S.REG_ID),
                    "config_read": lambda: client.read32(CONFIG_REGION, 0),
                }
            else:
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
            return {"device": device, "mode": mode, "n": n, **results}
        finally:
            shim.terminate()
            shim.wait(10)
            service.stop()


PAPER_NS = {  # the paper's Table 2 for the same access, per card
    ("bar_read", "backend"): 209_000, ("bar_read", "mirrored"): 1_000,
    ("bar_write", "backend"): 4_000, ("bar_write", "mirrored"): 1_000,
}  # fmt: skip


def run(quick: bool, workdir: Path) -> list[dict]:
    """`make bench` records: the vfio-user round trip per access kind and mode (loopback, in ns)."""
    records = []
    for device in ("es1370", "svga"):
        for mode in ("mirrored", "backend"):
            measured = measure_round_trips(mode, 300 if quick else 3000, workdir, device)
            for op in ("bar_read", "bar_write", "config_read"):
                records.append({
                    "metric": f"vfio_user_{op}", "mode": mode, "link": "loopback", "content": device,
                    "p50": measured[op]["p50_us"] * 1000, "p99": measured[op]["p99_us"] * 1000, "unit": "ns",
                    "paper": PAPER_NS.get((op, mode)), "samples": measured["n"],
                })  # fmt: skip
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--device", choices=["es1370", "svga", "both"], default="both")
    args = p.parse_args()
    for device in ("es1370", "svga") if args.device == "both" else (args.device,):
        for mode in ("mirrored", "backend"):
            print(json.dumps(measure_round_trips(mode, args.n, device=device)))


if __name__ == "__main__":
    main()
