"""Time as an input: anything that paces audio or frames takes a Clock.

A scale above 1 runs the clock faster than real time, so tests play a second of audio in a fraction of it
while the code under test still sees consistent time; benchmarks use scale 1.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("clock scale must be positive")
        self.scale = scale
        self._origin = time.monotonic()

    def now(self) -> float:
        """Seconds of device time since the clock was made."""
        return (time.monotonic() - self._origin) * self.scale

    def real_seconds(self, device_seconds: float) -> float:
        """How long to really wait for `device_seconds` to pass."""
        return max(0.0, device_seconds / self.scale)

    def sleep(self, device_seconds: float) -> None:
        time.sleep(self.real_seconds(device_seconds))
