"""What the shim needs from "a guest", whatever produces it (scripted driver, QEMU trace, vfio-user).

A trap source delivers the guest's BAR accesses to a `Device` and gives the device two things back: guest
memory for DMA and an interrupt line. Nothing here knows about gRPC.
"""

from __future__ import annotations

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
    """DMA to an address where the guest has no memory."""


class RamMemory:
    """Guest RAM as one bytearray starting at guest-physical `base` (the scripted guest's memory)."""

    def __init__(self, size: int, base: int = 0) -> None:
        self.base = base
        self.data = bytearray(size)

    def _span(self, addr: int, length: int) -> int:
        start = addr - self.base
        if length < 0 or start < 0 or start + length > len(self.data):
            raise GuestMemoryError(f"DMA of {length} bytes at {addr:#x} is outside guest RAM")
        return start

    def read(self, addr: int, length: int) -> bytes:
        start = self._span(addr, length)
        return bytes(self.data[start : start + length])

    def write(self, addr: int, data: bytes) -> None:
        start = self._span(addr, len(data))
        self.data[start : start + len(data)] = data


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
