"""What the shim needs from "a guest", whatever produces it (scripted driver, QEMU trace, vfio-user).

A trap source delivers the guest's BAR accesses to a `Device` and gives the device two things back: guest
memory for DMA and an interrupt line. Nothing here knows about gRPC.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Protocol


class Device(Protocol):
    """The shim's side of one virtual PCI device: where trapped accesses go."""

    def io_read(self, bar: int, offset: int, size: int) -> int: ...

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None: ...


class HoldsWrites(Protocol):
    """Optional for a Device whose writes travel on: a trap source that answers a guest write before the write
    travels on calls hold_writes() before delivering it and release_writes() once the guest has its answer."""

    def hold_writes(self) -> None: ...

    def release_writes(self) -> None: ...


class RepliesEarly(Protocol):
    """Optional for a Device whose register reads wait for a remote answer (`answers_remotely`): a trap source
    that can answer the guest from any thread sets `reply_early` around one register read (to a function of the
    value, None otherwise), and the device calls it with the value on whichever thread receives the answer, before
    it wakes the reading thread; io_read still returns the value. The guest then waits for one thread handoff
    less."""

    answers_remotely: bool
    reply_early: Callable[[int], None] | None


class GuestMemory(Protocol):
    """Guest-physical memory, as bus-master DMA sees it. Raises GuestMemoryError outside guest RAM."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class InterruptLine(Protocol):
    """A level-triggered PCI interrupt pin (INTx)."""

    def set_level(self, level: bool) -> None: ...


class GuestMemoryError(Exception):
    """DMA that cannot be done: guest memory unreachable now (the client busy or away) or not there at all."""


class GuestMemoryBusy(GuestMemoryError):
    """DMA the client cannot serve just now (it waits for our reply to its own request): not an error, a wait."""


class GuestMemoryUnmapped(GuestMemoryError):
    """DMA to an address where the guest has no memory (or none the device may use): retrying cannot help."""


class RamMemory:
    """Guest RAM as one bytearray starting at guest-physical `base` (the scripted guest's memory)."""

    def __init__(self, size: int, base: int = 0) -> None:
        self.base = base
        self.data = bytearray(size)

    def _span(self, addr: int, length: int) -> int:
        start = addr - self.base
        if length < 0 or start < 0 or start + length > len(self.data):
            raise GuestMemoryUnmapped(f"DMA of {length} bytes at {addr:#x} is outside guest RAM")
        return start

    def read(self, addr: int, length: int) -> bytes:
        start = self._span(addr, length)
        return bytes(self.data[start : start + length])

    def write(self, addr: int, data: bytes) -> None:
        start = self._span(addr, len(data))
        self.data[start : start + len(data)] = data


class DmaLog:
    """Guest memory that keeps every DMA read in order: (address, the bytes as they were when the card took them).
    What a real card would have played is exactly that, so a test can hold the remote output against it."""

    def __init__(self, inner: GuestMemory) -> None:
        self.inner = inner
        self.reads: list[tuple[int, bytes]] = []
        self.bytes_read = 0
        self.read_before_last_write = 0  # bytes_read when the guest's last write landed (a test guest's oracle)
        self._lock = threading.Lock()  # a read and its record are one step against the guest's writes

    def read(self, addr: int, length: int) -> bytes:
        with self._lock:
            data = self.inner.read(addr, length)
            self.reads.append((addr, data))
            self.bytes_read += len(data)
            return data

    def write(self, addr: int, data: bytes) -> None:
        with self._lock:
            self.inner.write(addr, data)
            self.read_before_last_write = self.bytes_read

    def save(self, path: str) -> None:
        """The reads as records of (address u64, length u32, bytes), little-endian."""
        with open(path, "wb") as f:
            for addr, data in self.reads:
                f.write(struct.pack("<QI", addr, len(data)) + data)


def load_reads(path: str) -> list[tuple[int, bytes]]:
    """What RecordingMemory.save wrote."""
    with open(path, "rb") as f:
        blob = f.read()
    reads, at = [], 0
    while at < len(blob):
        addr, length = struct.unpack_from("<QI", blob, at)
        at += 12
        reads.append((addr, blob[at : at + length]))
        at += length
    return reads


class EventLine:
    """An interrupt line a guest thread can wait on (the scripted guest's "CPU")."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.level = False
        self.raised = 0  # rising edges seen

    def set_level(self, level: bool) -> None:
        with self._cond:
            if level and not self.level:
                self.raised += 1
            self.level = level
            self._cond.notify_all()

    def wait_high(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.level, timeout)
