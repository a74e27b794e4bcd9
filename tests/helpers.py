"""Running the real shim for tests (services start through frontend_shim.commands.processes, as the demo does)."""

from __future__ import annotations

import subprocess
import sys

from frontend_shim.commands.processes import ROOT, ServiceProcess, start_service, wait_serving

__all__ = ["ROOT", "ServiceProcess", "run_shim", "start_service", "wait_serving"]


def run_shim(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frontend_shim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
