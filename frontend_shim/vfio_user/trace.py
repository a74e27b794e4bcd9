"""The register traffic a vfio-user server saw, as a small text log for replaying in trace tests.

Format (gzip when the name ends in .gz): `#` comment lines, then one event per line, tab-separated:

    t_us  kind  region  offset  size  value

t_us: microseconds since the log was opened. kind: R / W (a BAR access as the device received it, after
splitting into aligned pieces), I (the INTx eventfd was signalled), M (an MSI eventfd), U (QEMU unmasked INTx),
X (device reset). offset and value are hex; region/offset/size/value are `-` for I, M, U and X.
"""

from __future__ import annotations

import gzip
import io
import threading
import time
from dataclasses import dataclass
from typing import TextIO

_EVENT_KINDS = {"signal": "I", "msi": "M", "unmask": "U", "reset": "X"}
COLUMNS = ("t_us", "kind", "region", "offset", "size", "value")


class AccessLog:
    def __init__(self, path: str, note: str = "") -> None:
        raw = gzip.open(path, "wt", encoding="ascii") if path.endswith(".gz") else open(path, "w", encoding="ascii")
        self._out: TextIO = raw
        self._lock = threading.Lock()
        self._t0 = time.monotonic_ns()
        self.count = 0
        self._out.write("# rdv vfio-user access log v1\n")
        if note:
            self._out.write(f"# {note}\n")
        self._out.write("# " + "\t".join(COLUMNS) + "\n")

    def _line(self, text: str) -> None:
        with self._lock:
            if not self._out.closed:
                t = (time.monotonic_ns() - self._t0) // 1000
                self._out.write(f"{t}\t{text}\n")
                self.count += 1

    def access(self, kind: str, region: int, offset: int, size: int, value: int) -> None:
        self._line(f"{kind}\t{region}\t{offset:#04x}\t{size}\t{value:#x}")

    def event(self, name: str) -> None:
        self._line(f"{_EVENT_KINDS.get(name, '?')}\t-\t-\t-\t-")

    def close(self) -> None:
        with self._lock:
            self._out.close()


@dataclass(frozen=True)
class Event:
    t_us: int
    kind: str
    region: int | None
    offset: int | None
    size: int | None
    value: int | None


def read_access_log(path: str) -> list[Event]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="ascii") as f:  # type: ignore[operator]
        return parse_access_log(f)


def parse_access_log(f: io.TextIOBase | TextIO) -> list[Event]:
    events = []
    for line in f:
        if not line.strip() or line.startswith("#"):
            continue
        t, kind, region, offset, size, value = line.rstrip("\n").split("\t")
        num = [None if x == "-" else int(x, 0) for x in (region, offset, size, value)]
        events.append(Event(int(t), kind, *num))
    return events
