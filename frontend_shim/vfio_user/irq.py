"""The device's interrupt pin, delivered to QEMU's vfio-user client through eventfds.

QEMU treats the INTx eventfd as an edge: it asserts the pin when we signal, and on the guest's next access to
any BAR it deasserts the pin and sends SET_IRQS UNMASK. A level-triggered device therefore has to signal again
while its line stays high. What works with a real guest (see REFERENCE.md):

- signalling masks the line (AUTOMASKED); UNMASK only clears the mask, it never signals by itself, because
  QEMU unmasks right after the ISR's first STATUS read, before the driver has acknowledged anything;
- the line is re-checked after later accesses. A read's answer proves the device's level is current, so the
  check is immediate. After a write it is immediate too for a local device; a remote one (backend mode)
  applies the write later, so there the check waits a short delay and, if the line still looks high, first
  `settle()`s the level (a barrier through the device's stream): a stale level never becomes an interrupt;
- a barrier only proves the level as of the writes sent before it. A guest write (the handler's ack, say)
  that reaches the device while the barrier is out may come after it in the stream, and the barrier's "still
  high" then predates the ack: signalled, it reaches QEMU after the handler returned, a spurious interrupt.
  So the server wraps each write in `write_access()`, and a settle during which a write was delivered (or
  one that found a write under way) proves nothing: the check is simply made again later;
- a short delay after UNMASK re-checks as a fallback when no access follows (QEMU also deasserts on an
  unrelated access made while the guest has interrupts off; nothing else would re-raise the pin then). Once
  the guest has seen the interrupt (it read a status with the interrupt bit set: `note_seen()`), its handler's
  acknowledgement and the checks after it follow, so the fallback waits much longer: firing while the handler
  is on its way to the ack is useless, and QEMU handles an eventfd only when the vCPU releases its big lock, so
  one written just as the ack goes out is seen after the ack's end of interrupt and stays pending.

When the client has given MSI eventfds (index 1), a rising edge signals vector 0 instead; MSI is not masked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services.common import logs

log = logs.get("shim.vfio_user.irq")


@dataclass
class IrqStats:
    raised: int = 0  # rising edges of the device's line
    signals: int = 0  # INTx eventfd writes
    msi_signals: int = 0
    unmasks: int = 0
    triggers: int = 0  # client-requested triggers


class IrqController:
    """Implements `frontend_shim.guest.InterruptLine` for pin A; the server feeds it SET_IRQS and accesses."""

    def __init__(
        self,
        recheck_delay: float = 0.005,
        on_event: Callable[[str], None] | None = None,
        settle: Callable[[], object] | None = None,
        seen_delay: float = 0.1,
    ) -> None:
        self.recheck_delay = recheck_delay
        self.seen_delay = seen_delay  # the UNMASK fallback once the guest's handler has seen the interrupt
        self.on_event = on_event  # "signal" / "msi" / "unmask", for the access log
        self.settle = settle  # brings a remote device's level up to date (None: the level is always current)
        self.stats = IrqStats()
        self.intx_disabled: Callable[[], bool] = lambda: False  # the command register's INTx Disable bit
        self._cond = threading.Condition()
        self._level = False
        self._masked = False
        self._seen = False  # the guest read the interrupt status since the last signal
        self._writes = 0  # guest writes delivered to the device so far (counted as they start)
        self._writes_under_way = 0
        self._intx_fd: int | None = None
        self._msi_fds: list[int | None] = []
        self._recheck_at: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._timer, name="vfio-user-irq-timer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ InterruptLine (device threads)
    def set_level(self, level: bool) -> None:
        with self._cond:
            rising = level and not self._level
            self._level = level
            if rising:
                self.stats.raised += 1
                if self._msi_active():
                    self._signal_msi(0)
                    return
            self._check()

    @property
    def level(self) -> bool:
        return self._level

    @property
    def masked(self) -> bool:
        return self._masked

    # ------------------------------------------------------------------ server side
    @contextmanager
    def write_access(self) -> Iterator[None]:
        """Around the delivery of a guest write to the device: a settle it overlaps proves no level."""
        with self._cond:
            self._writes += 1
            self._writes_under_way += 1
        try:
            yield
        finally:
            with self._cond:
                self._writes_under_way -= 1

    def after_access(self, write: bool) -> None:
        with self._cond:
            if write and self.settle is not None:
                self._schedule(self.recheck_delay)
            else:
                self._check()

    def note_seen(self) -> None:
        """The guest just read a status showing the pending interrupt: its handler is running."""
        with self._cond:
            self._seen = True

    def unmask(self) -> None:
        with self._cond:
            self.stats.unmasks += 1
            self._masked = False
            self._schedule(self.seen_delay if self._seen else self.recheck_delay)
        if self.on_event:
            self.on_event("unmask")

    def mask(self) -> None:
        with self._cond:
            self._masked = True

    def set_intx_fd(self, fd: int | None) -> None:
        """A new trigger eventfd (QEMU sends one at every system reset), or None to turn INTx off."""
        with self._cond:
            old, self._intx_fd = self._intx_fd, fd
            self._masked = False
            if fd is not None:
                self._schedule(self.recheck_delay)
        if old is not None and old != fd:
            _close(old)

    def set_msi_fds(self, start: int, fds: list[int | None], vectors: int) -> None:
        with self._cond:
            while len(self._msi_fds) < min(vectors, start + len(fds)):
                self._msi_fds.append(None)
            old = []
            for i, fd in enumerate(fds, start):
                old.append(self._msi_fds[i])
                self._msi_fds[i] = fd
            if not any(f is not None for f in self._msi_fds):
                self._msi_fds = []
        for fd in old:
            if fd is not None and fd not in fds:
                _close(fd)

    def disable_msi(self) -> None:
        with self._cond:
            old, self._msi_fds = self._msi_fds, []
        for fd in old:
            if fd is not None:
                _close(fd)

    def trigger(self, index: int, sub: int) -> None:
        """The client asked us to fire an interrupt (SET_IRQS ACTION_TRIGGER without eventfds)."""
        with self._cond:
            self.stats.triggers += 1
            fd = self._intx_fd if index == 0 else (self._msi_fds[sub] if sub < len(self._msi_fds) else None)
            if fd is not None:
                _write(fd)

    def drop_fds(self) -> None:
        """The client went away: its eventfds mean nothing any more."""
        self.set_intx_fd(None)
        self.disable_msi()

    @property
    def has_intx_fd(self) -> bool:
        return self._intx_fd is not None

    def close(self) -> None:
        self.drop_fds()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(1.0)

    # ------------------------------------------------------------------ internals (lock held)
    def _msi_active(self) -> bool:
        return bool(self._msi_fds)

    def _would_signal(self) -> bool:
        return (
            self._level
            and not self._masked
            and self._intx_fd is not None
            and not self._msi_active()
            and not self.intx_disabled()
        )

    def _check(self) -> None:
        if not self._would_signal():
            return
        if self.on_event:  # before the write: QEMU may run the guest's handler (and its accesses) at once
            self.on_event("signal")
        if _write(self._intx_fd):
            self._masked = True
            self._seen = False
            self.stats.signals += 1

    def _signal_msi(self, vector: int) -> None:
        fd = self._msi_fds[vector] if vector < len(self._msi_fds) else None
        if fd is None:
            return
        if self.on_event:
            self.on_event("msi")
        if _write(fd):
            self.stats.msi_signals += 1

    def _schedule(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._recheck_at is None or at < self._recheck_at:
            self._recheck_at = at
            self._cond.notify_all()

    def _timer(self) -> None:
        with self._cond:
            while not self._closed:
                if self._recheck_at is None:
                    self._cond.wait()
                    continue
                left = self._recheck_at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._recheck_at = None
                if self.settle is not None and self._would_signal() and not self._settled(self.settle):
                    self._schedule(self.recheck_delay)  # a write raced the barrier: ask again
                    continue
                self._check()

    def _settled(self, settle: Callable[[], object]) -> bool:
        """Settle the remote level (lock held, released meanwhile); False when a guest write may have reached the
        device after the barrier, so that the level it left may predate the write."""
        if self._writes_under_way:
            return False
        writes = self._writes
        self._cond.release()  # the device's answers come in on other threads, through set_level
        try:
            settle()
        except Exception as exc:  # a failed barrier leaves the level as it is
            log.debug("settling the interrupt level failed", extra={"error": str(exc)})
        finally:
            self._cond.acquire()
        return self._writes == writes


def _write(fd: int) -> bool:
    try:
        os.eventfd_write(fd, 1)
        return True
    except OSError as exc:
        log.warning("cannot signal the interrupt eventfd", extra={"fd": fd, "error": str(exc)})
        return False


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
