"""The one retry policy of everything that reconnects (device links, the input forwarder, the input publisher):
exponential backoff with a cap and jitter.

Jitter: each delay is drawn from its upper half ([d/2, d]), so shims that lost the same restarted service do not
all knock again at the same instant, while a lone shim still waits about what the doubling says.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(self, first: float, cap: float, *, factor: float = 2.0, rng: Callable[[], float] = random.random):
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first ({first}) <= cap ({cap})")
        self.first = first
        self.cap = cap
        self.factor = factor
        self._rng = rng
        self.current = first  # the un-jittered delay the next failure waits

    def reset(self) -> None:
        """A success: the next failure starts from `first` again."""
        self.current = self.first

    def next(self) -> float:
        """The delay to wait after a failure, jittered; the one after it doubles, up to `cap`."""
        delay = self.current
        self.current = min(delay * self.factor, self.cap)
        return delay * (0.5 + 0.5 * self._rng())
