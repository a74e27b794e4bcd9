"""One live status line per device on a terminal; plain key=value log lines otherwise.

On a terminal the block of lines is redrawn in place every period, and erased before any log line is written
(the next redraw puts it back below), so logs and status never overwrite each other.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from frontend_shim.attach.vm import DeviceStatus
from services.common import logs

log = logs.get("shim.vm")
LOG_EVERY = 30.0  # seconds between status log lines per device when nothing changes (not a terminal)


def _line(s: DeviceStatus) -> str:
    rtt = "    -   " if s.rtt_ms is None else f"{s.rtt_ms:6.1f} ms"
    unit = "B/s" if s.rate_unit == "bytes_s" else "ev/s"
    qemu = "qemu connected" if s.qemu else "qemu waiting  "
    return (
        f"{s.device:<7} {s.state:<7} {qemu}  rtt {rtt}  {_human(s.rate):>7} {unit:<4}  "
        f"reconnects {s.reconnects:<3} {s.target}"
    )


def _human(rate: float) -> str:
    for unit in ("", "k", "M", "G"):
        if rate < 1000:
            return f"{rate:.0f}{unit}" if not unit else f"{rate:.1f}{unit}"
        rate /= 1000
    return f"{rate:.1f}T"


class StatusBoard:
    def __init__(
        self, source: Callable[[], list[DeviceStatus]], period: float = 1.0, stream: TextIO | None = None
    ) -> None:
        self.source = source
        self.period = period
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._drawn = 0  # lines of the block on screen now
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status", daemon=True)
        self._last: dict[str, tuple[str, bool]] = {}
        self._logged_at: dict[str, float] = {}
        self._filter: _EraseFirst | None = None

    def start(self) -> None:
        if self.tty:
            self._filter = _EraseFirst(self)
            for handler in logging.getLogger().handlers:
                handler.addFilter(self._filter)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self._filter is not None:
            for handler in logging.getLogger().handlers:
                handler.removeFilter(self._filter)
        self.update(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.update()

    def update(self, final: bool = False) -> None:
        try:
            states = self.source()
        except Exception:  # a status line must never take the devices down
            log.debug("status failed", exc_info=True)
            return
        if self.tty:
            with self._lock:
                self.erase()
                self.stream.write("".join(_line(s) + "\n" for s in states))
                self._drawn = 0 if final else len(states)  # the last state stays on screen
                self.stream.flush()
            return
        now = time.monotonic()
        for s in states:
            key = (s.state, s.qemu)
            changed = self._last.get(s.device) != key
            if changed or now - self._logged_at.get(s.device, 0.0) >= LOG_EVERY or final:
                self._last[s.device] = key
                self._logged_at[s.device] = now
                log.log(logging.WARNING if changed and s.state == "offline" else logging.INFO, "status",
                        extra=s.fields())  # fmt: skip

    def erase(self) -> None:
        with self._lock:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
                self._drawn = 0


class _EraseFirst(logging.Filter):
    def __init__(self, board: StatusBoard) -> None:
        super().__init__()
        self.board = board

    def filter(self, record: logging.LogRecord) -> bool:
        self.board.erase()
        return True
