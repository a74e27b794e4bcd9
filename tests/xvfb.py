"""A private X server (Xvfb) for the window tests and the multi-VM benchmark."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def xvfb(log: Path, width: int = 1280, height: int = 1024) -> Iterator[str]:
    """Start Xvfb on a free display number; yields the DISPLAY value (":N")."""
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    display = f":{n}"
    proc = subprocess.Popen(
        ["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{n}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb did not start (see {log})")
            time.sleep(0.05)
        yield display
    finally:
        proc.terminate()
        proc.wait(10)
