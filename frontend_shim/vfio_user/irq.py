"""The device's interrupt pin, delivered to QEMU's vfio-user client through eventfds.

QEMU treats the INTx eventfd as an edge: it asserts the pin when we signal, and on the guest's next access to
any BAR it deasserts the pin and sends SET_IRQS UNMASK. Signalling masks the line (AUTOMASKED). The rule that
gives a real guest exactly one interrupt per assertion of the device's line (see REFERENCE.md):

- a rising edge is signalled at once, or as soon as the line is unmasked (an edge while masked is owed);
- an assertion already signalled is not signalled again while the guest may still take it. The UNMASK comes
  after the first access, which is the handler's STATUS read (before the ack), or an unrelated access the
  guest made with interrupts off while its interrupt controller already held the interrupt. And QEMU reads
  the eventfd only when the vCPU lets go of its big lock, which it holds through each access: a signal sent
  while the guest is busy with accesses lands after them, so a second signal for an interrupt the guest was
  about to handle arrives after its handler, a spurious interrupt (a real guest's trace had one at stream
  start: the first period ended during the trigger's accesses);
- yet QEMU's deassert can lose the interrupt (say it came during the previous interrupt's handler, and the
  pin is low again by that handler's end of interrupt). So a signalled line that stays high is signalled
  again once it looks lost: no status read showed it and the guest has made no access for `lost_delay`
  since the UNMASK (a guest holding the interrupt is busy getting to its handler), or `seen_delay` went by
  since one did without the acknowledgement that lowers the line;
- a remote device (backend mode) applies writes later, so before an owed signal its level is brought up to
  date with `settle()` (a barrier through the device's stream). A barrier only proves the level as of the
  writes sent before it: one that overlapped a guest write (the server wraps each in `write_access()`) may
  predate the handler's ack and proves nothing; the check is made again later. A read's answer proves the
  level at once.

When the client has given MSI eventfds (index 1), a rising edge signals vector 0 instead; MSI is not masked.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
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
    lost: int = 0  # signalled assertions judged lost (owed a signal again)


class IrqController:
    """Implements `frontend_shim.guests.guest.InterruptLine` for pin A; the server feeds it SET_IRQS and accesses."""

    def __init__(
        self,
        recheck_delay: float = 0.005,
        on_event: Callable[[str], None] | None = None,
        settle: Callable[[], object] | None = None,
        seen_delay: float = 0.1,
        lost_delay: float = 0.01,
    ) -> None:
        self.recheck_delay = recheck_delay  # before an owed signal after a remote write or an UNMASK
        self.seen_delay = seen_delay  # a handler that saw the interrupt has this long to lower the line
        self.lost_delay = lost_delay  # the guest idles this long without taking a signalled interrupt: lost
        self.on_event = on_event  # "signal" / "msi" / "unmask", for the access log
        self.settle = settle  # brings a remote device's level up to date (None: the level is always current)
        self.stats = IrqStats()
        # When the line's latest rise was caused (monotonic ns): the device's own clock by default; a remote
        # device's link tells when the service raised it. `timeline` pairs each cause with its eventfd write.
        self.cause_ns: Callable[[], int] = time.monotonic_ns
        self.timeline: deque[tuple[int, int]] = deque(maxlen=4096)
        self._raised_ns = 0
        self.intx_disabled: Callable[[], bool] = lambda: False  # the command register's INTx Disable bit
        self._cond = threading.Condition()
        self._level = False
        self._masked = False
        self._signalled = False  # the line's current assertion was signalled (until it falls or looks lost)
        self._seen = False  # the guest read the interrupt status since the last signal
        self._lost_at: float | None = None  # unmasked and still high after a signal: when it counts as lost
        self._writes = 0  # guest writes delivered to the device so far (counted as they start)
        self._writes_under_way = 0
        self._intx_fd: int | None = None
        self._msi_fds: list[int | None] = []
        self._recheck_at: float | None = None
        self._closed = False
        self._write_access = _WriteAccess(self)
        self._thread = threading.Thread(target=self._timer, name="vfio-user-irq-timer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ InterruptLine (device threads)
    def set_level(self, level: bool) -> None:
        with self._cond:
            rising = level and not self._level
            self._level = level
            if not level:
                self._signalled, self._lost_at = False, None
            if rising:
                self.stats.raised += 1
                self._raised_ns = self.cause_ns()
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
    def write_access(self) -> _WriteAccess:
        """Around the delivery of a guest write to the device (`with irq.write_access(): ...`): a settle it
        overlaps proves no level."""
        return self._write_access

    def after_access(self, write: bool) -> None:
        if not self._level:
            # A low line owes nothing (and has no lost-signal deadline to push): its next rise signals by itself.
            # Read without the lock: a rise racing this read runs its own check.
            return
        with self._cond:
            if self._lost_at is not None and not self._seen:
                self._lost_at = time.monotonic() + self.lost_delay  # busy, maybe on its way to the handler
            if write and self.settle is not None:
                self._schedule(self.recheck_delay)
            else:
                self._check()

    def note_seen(self) -> None:
        """The guest just read a status showing the pending interrupt: its handler is running."""
        with self._cond:
            self._seen = True
            if self._lost_at is not None:
                self._lost_at = time.monotonic() + self.seen_delay

    def unmask(self) -> None:
        with self._cond:
            self.stats.unmasks += 1
            self._masked = False
            if self._signalled and self._level:
                self._lost_at = time.monotonic() + (self.seen_delay if self._seen else self.lost_delay)
                self._cond.notify_all()
            else:
                self._schedule(self.recheck_delay)
        if self.on_event:
            self.on_event("unmask")

    def mask(self) -> None:
        with self._cond:
            self._masked = True

    def set_intx_fd(self, fd: int | None) -> None:
        """A new trigger eventfd (QEMU sends one at every system reset), or None to turn INTx off."""
        with self._cond:
            old, self._intx_fd = self._intx_fd, fd
            self._masked, self._signalled, self._lost_at = False, False, None  # a new QEMU holds nothing
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
            and not self._signalled
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
        writing = time.monotonic_ns()  # (after the write, the GIL may go to another thread for a while first)
        if _write(self._intx_fd):
            self.timeline.append((self._raised_ns, writing))
            self._masked, self._signalled, self._seen, self._lost_at = True, True, False, None
            self.stats.signals += 1

    def _signal_msi(self, vector: int) -> None:
        fd = self._msi_fds[vector] if vector < len(self._msi_fds) else None
        if fd is None:
            return
        if self.on_event:
            self.on_event("msi")
        writing = time.monotonic_ns()
        if _write(fd):
            self.timeline.append((self._raised_ns, writing))
            self.stats.msi_signals += 1

    def _schedule(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._recheck_at is None or at < self._recheck_at:
            self._recheck_at = at
            self._cond.notify_all()

    def _timer(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._lost_at is not None and now >= self._lost_at:
                    self._lost_at, self._signalled = None, False  # owed again
                    self._recheck_at = now
                    self.stats.lost += 1
                if self._recheck_at is None or self._recheck_at > now:
                    wake = min((t for t in (self._recheck_at, self._lost_at) if t is not None), default=None)
                    self._cond.wait(None if wake is None else wake - now)
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


class _WriteAccess:
    """`IrqController.write_access()`: counts the write in and out (a class, not a generator: it is on every
    trapped write's path)."""

    __slots__ = ("_irq",)

    def __init__(self, irq: IrqController) -> None:
        self._irq = irq

    def __enter__(self) -> None:
        irq = self._irq
        with irq._cond:
            irq._writes += 1
            irq._writes_under_way += 1

    def __exit__(self, *exc: object) -> None:
        irq = self._irq
        with irq._cond:
            irq._writes_under_way -= 1


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
