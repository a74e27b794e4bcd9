"""`make test-stress`: the real-time suites while a CPU hog keeps both cores busy, several runs in a row.

`stress-ng --cpu N` runs at the tests' own priority (no nice), so the services, the shims and the guests get
only their fair share, as on a busy VM host. Every run must pass; the xruns, late DMA and underruns each run
saw (the tests' FIGURES lines) are summed up at the end: they are allowed, they must only be reported honestly.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time

from frontend_shim.commands.processes import ROOT

SUITES = [
    "tests/test_audio_e2e.py",
    "tests/test_display_pixels.py",
    "tests/test_faults.py",
    "tests/test_load.py",
]
LIVE = ["-m", "live", "tests/live"]
_FIGURE = re.compile(r"^FIGURES (audio-xruns [^:]*|load): (\{.*\})$", re.M)


def tally(output: str) -> dict[str, int]:
    """Sum what the FIGURES lines of one run report."""
    total = {"xruns": 0, "late_dma": 0, "underruns": 0}
    for _, blob in _FIGURE.findall(output):
        figures = json.loads(blob)
        for key in total:
            value = figures.get(key, 0)
            total[key] += sum(value.values()) if isinstance(value, dict) else value
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="runs that must pass in a row (default 5)")
    p.add_argument("--cpus", type=int, default=2, help="stress-ng CPU hogs (default 2: both cores here)")
    p.add_argument("--no-live", action="store_true", help="leave out the live QEMU tests")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments")
    args = p.parse_args()
    if shutil.which("stress-ng") is None:
        print("error: stress-ng is not installed (make setup installs it as root: apt-get install stress-ng)")
        return 2
    hog = subprocess.Popen(["stress-ng", "--cpu", str(args.cpus), "--quiet"])
    totals = []
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            output = ""
            for suite in [SUITES] + ([] if args.no_live else [LIVE]):
                cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *suite, *args.pytest_args]
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                output += proc.stdout + proc.stderr
                if proc.returncode not in (0, 5):  # 5: nothing collected (no live tests selected)
                    print(proc.stdout[-6000:] + proc.stderr[-3000:])
                    print(f"stress run {run} of {args.runs} FAILED ({' '.join(suite)})")
                    return 1
            seen = tally(output)
            totals.append(seen)
            print(f"stress run {run} of {args.runs} passed in {time.monotonic() - started:.0f} s: {json.dumps(seen)}",
                  flush=True)  # fmt: skip
    finally:
        hog.terminate()
        hog.wait(10)
    print("all runs passed; per run: " + json.dumps(totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
