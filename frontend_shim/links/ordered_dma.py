"""Backend mode's writes into guest memory, done in order off the stream's receiving thread when they must wait.

The audio service's ADC asks for one `DmaWrite` at a time and moves only once the shim answers. A write can fail
for a moment: over vfio-user without shared guest RAM every write is a DMA_WRITE message, and QEMU serves none
while it waits for our reply to a register access (which, in backend mode, waits for this very stream: retrying
on the receiving thread would deadlock). Such a write is retried from a thread of its own, and whatever is
submitted after it waits behind it. An action that still fails after `give_up` seconds (guest memory really gone),
or at once where the guest has no memory (GuestMemoryUnmapped), is dropped, counted, and its `dropped` callback
runs. The audio link runs its DMA reads, writes and the interrupts that follow them through one of these.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from frontend_shim.guests.guest import GuestMemoryError, GuestMemoryUnmapped

Action = Callable[[], None]  # raises GuestMemoryError when it cannot be done now
Dropped = Callable[[], None]


class OrderedDma:
    def __init__(
        self, on_error: Callable[[GuestMemoryError], None], give_up: float = 1.0, retry: float = 0.002
    ) -> None:
        self._on_error = on_error
        self._give_up = give_up
        self._retry = retry
        self._queue: deque[tuple[Action, Dropped | None, float]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.deferred = 0  # actions that had to wait
        self.dropped = 0  # writes given up
        self._thread = threading.Thread(target=self._run, name="audio-link-ordered-dma", daemon=True)
        self._thread.start()

    def submit(self, action: Action, dropped: Dropped | None = None) -> None:
        """Run `action` now, or after everything still waiting (caller: the stream's receiving thread)."""
        with self._lock:
            if not self._queue:
                try:
                    action()
                    return
                except GuestMemoryUnmapped as exc:
                    self._drop(exc, dropped)
                    return
                except GuestMemoryError as exc:
                    self._on_error(exc)
            self._queue.append((action, dropped, time.monotonic()))
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
                    action, dropped, since = self._queue[0]
                    try:
                        action()
                    except GuestMemoryError as exc:
                        if time.monotonic() - since < self._give_up and not isinstance(exc, GuestMemoryUnmapped):
                            break
                        self._drop(exc, dropped)
                    self._queue.popleft()

    def _drop(self, exc: GuestMemoryError, dropped: Dropped | None) -> None:
        self._on_error(exc)
        self.dropped += 1
        if dropped is not None:
            dropped()
