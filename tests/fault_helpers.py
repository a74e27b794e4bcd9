"""Instruments for the fault and load tests: the guest's view of its device (how long each access blocked),
recovery probes on the links, and what a service process holds (sessions, threads, memory)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from frontend_shim.guests.guest import Device
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.display import DisplayLink
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from rdv.input.v1 import input_pb2_grpc

STUBS = {
    "audio": audio_pb2_grpc.AudioServiceStub,
    "display": display_pb2_grpc.DisplayServiceStub,
    "input": input_pb2_grpc.InputServiceStub,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AccessTimes:
    """Every access's duration, and the slowest ones with when they happened."""

    count: int = 0
    max_s: float = 0.0
    total_s: float = 0.0
    slow: list[tuple[float, str, float]] = field(default_factory=list)  # (monotonic at start, what, seconds)

    def add(self, started: float, what: str, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)
        if seconds > 0.01:
            self.slow.append((started, what, seconds))


class TimedDevice:
    """The guest's side of the trap: times every io_read / io_write it makes on the real device."""

    def __init__(self, inner: Device) -> None:
        self.inner = inner
        self.reads = AccessTimes()
        self.writes = AccessTimes()
        self._lock = threading.Lock()

    def io_read(self, bar: int, offset: int, size: int) -> int:
        t = time.monotonic()
        try:
            return self.inner.io_read(bar, offset, size)
        finally:
            with self._lock:
                self.reads.add(t, f"read {offset:#x}", time.monotonic() - t)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        t = time.monotonic()
        try:
            self.inner.io_write(bar, offset, size, value)
        finally:
            with self._lock:
                self.writes.add(t, f"write {offset:#x}", time.monotonic() - t)

    @property
    def max_block_s(self) -> float:
        return max(self.reads.max_s, self.writes.max_s)

    def figures(self) -> dict[str, float]:
        """What the fault tests report of the guest's accesses: the longest of each kind, and how many."""
        return {
            "max_read_ms": round(self.reads.max_s * 1000, 2),
            "max_write_ms": round(self.writes.max_s * 1000, 2),
            "accesses": self.reads.count + self.writes.count,
        }

    def worst(self, n: int = 5) -> list[tuple[float, str, float]]:
        return sorted(self.reads.slow + self.writes.slow, key=lambda s: -s[2])[:n]


def time_link_accesses(link: AudioLink | DisplayLink) -> TimedDevice:
    """Route the link's own io_read / io_write through a TimedDevice (for callers that hold the link itself,
    like the trace replayer)."""
    timed = TimedDevice(_Bound(link.io_read, link.io_write))
    link.io_read = timed.io_read  # type: ignore[method-assign]
    link.io_write = timed.io_write  # type: ignore[method-assign]
    return timed


class _Bound:
    def __init__(self, read: object, write: object) -> None:
        self.io_read = read
        self.io_write = write


@dataclass
class Session:
    """One connection of a link, as the probe saw it (session ids restart with a restarted service)."""

    session_id: str
    opened: float
    first: float | None = None  # first PCM played / first frame presented


class _Probe:
    def __init__(self) -> None:
        # By the link's connection object itself, which this keeps alive: keyed by id(), a new connection could
        # take a dead one's address and be taken for the old session.
        self.sessions: dict[object, Session] = {}

    def _saw(self, conn: object, opened_id: str | None, first: bool) -> None:
        now = time.monotonic()
        if opened_id is not None:
            self.sessions.setdefault(conn, Session(opened_id, now))
        elif first and (s := self.sessions.get(conn)) is not None and s.first is None:
            s.first = now

    def first_since(self, t: float) -> Session | None:
        """The first session opened after `t`, once it has played PCM / presented a frame."""
        for s in self.sessions.values():
            if s.opened >= t:
                return s if s.first is not None else None
        return None


class AudioProbe(_Probe):
    """Watches an AudioLink's incoming messages: when each session opened and first reported played PCM."""

    def __init__(self, link: AudioLink) -> None:
        super().__init__()
        inner = link._dispatch

        def dispatch(conn, msg: audio_pb2.BackendMessage) -> None:  # noqa: ANN001
            kind = msg.WhichOneof("kind")
            self._saw(conn, msg.opened.session_id if kind == "opened" else None,
                      kind == "position" and msg.position.bytes_played > 0)  # fmt: skip
            inner(conn, msg)

        link._dispatch = dispatch  # type: ignore[method-assign]


class DisplayProbe(_Probe):
    """Watches a DisplayLink's first service: when each session opened and first had a frame presented."""

    def __init__(self, link: DisplayLink) -> None:
        super().__init__()
        slot = link.slots[0]
        inner = slot.dispatch

        def dispatch(conn, msg: display_pb2.BackendMessage) -> None:  # noqa: ANN001
            kind = msg.WhichOneof("kind")
            self._saw(conn, msg.opened.session_id if kind == "opened" else None,
                      kind == "frame_ack" and msg.frame_ack.presented)  # fmt: skip
            inner(conn, msg)

        slot.dispatch = dispatch  # type: ignore[method-assign]


def wait_for(predicate, timeout: float, interval: float = 0.01) -> float | None:  # noqa: ANN001
    """Seconds until `predicate()` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------- service views
def list_sessions(service: str, address: str) -> list[common_pb2.SessionInfo]:
    with grpc.insecure_channel(address) as ch:
        return list(STUBS[service](ch).ListSessions(common_pb2.ListSessionsRequest(), timeout=5).sessions)


def service_threads(service: str, address: str) -> Counter[str]:
    """The service's Python threads by kind (GetServiceInfo's debug "threads" entry)."""
    with grpc.insecure_channel(address) as ch:
        info = STUBS[service](ch).GetServiceInfo(common_pb2.GetServiceInfoRequest(), timeout=5)
    out: Counter[str] = Counter()
    for part in filter(None, info.config["threads"].split(",")):
        kind, _, n = part.rpartition(":")
        out[kind] = int(n)
    return out


def os_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than two)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0
