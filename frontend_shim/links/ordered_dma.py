"""Backend mode's writes into guest memory and the interrupts behind them, applied in stream order.

The audio service's ADC sends `DmaWrite`s and then the interrupt that announces them. A write can fail for a
moment: over vfio-user without shared guest RAM every write is a DMA_WRITE message, and QEMU serves none while it
waits for our reply to a register access (which, in backend mode, waits for this very stream). Such a write is
retried from a thread of its own, and everything that came after it waits behind it, so the guest never takes an
interrupt before the audio it announces is in its memory. A write that still fails after `give_up` seconds
(guest memory really gone) is dropped and counted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from frontend_shim.guests.guest import GuestMemoryError

Action = Callable[[], None]  # raises GuestMemoryError when it cannot be done now


class OrderedDma:
    def __init__(
        self, on_error: Callable[[GuestMemoryError], None], give_up: float = 1.0, retry: float = 0.002
    ) -> None:
        self._on_error = on_error
        self._give_up = give_up
        self._retry = retry
        self._queue: deque[tuple[Action, float]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.deferred = 0  # actions that had to wait
        self.dropped = 0  # writes given up
        self._thread = threading.Thread(target=self._run, name="audio-link-ordered-dma", daemon=True)
        self._thread.start()

    def submit(self, action: Action) -> None:
        """Run `action` now, or after everything still waiting (caller: the stream's reader thread)."""
        with self._lock:
            if not self._queue:
                try:
                    action()
                    return
                except GuestMemoryError as exc:
                    self._on_error(exc)
            self._queue.append((action, time.monotonic()))
            self.deferred += 1
        self._wake.set()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry if self._queue else None)
            self._wake.clear()
            with self._lock:
                while self._queue and not self._stop.is_set():
                    action, since = self._queue[0]
                    try:
                        action()
                    except GuestMemoryError as exc:
                        if time.monotonic() - since < self._give_up:
                            break
                        self._on_error(exc)
                        self.dropped += 1
                    self._queue.popleft()
