"""Running the real shim for tests (services start through frontend_shim.commands.processes, as the demo does)."""

from __future__ import annotations

import subprocess
import sys

from frontend_shim.commands.processes import ROOT, ServiceProcess, start_service, wait_serving
from services.common.clock import Clock

__all__ = ["ROOT", "FakeClock", "ServiceProcess", "run_shim", "start_service", "wait_serving"]


class FakeClock(Clock):
    """A clock that stands still until a test sets `t` (device seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def now(self) -> float:
        return self.t


def run_shim(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frontend_shim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
