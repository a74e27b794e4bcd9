"""The one backoff policy: doubling up to a cap, jittered into the upper half of each delay, reset by a success."""

from __future__ import annotations

import pytest

from services.common.retry import Backoff


def test_delays_double_up_to_the_cap_and_reset() -> None:
    top = Backoff(0.1, 1.0, rng=lambda: 1.0)  # the jitter at its largest: the un-jittered delays
    assert [round(top.next(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    top.reset()
    assert top.next() == pytest.approx(0.1)


def test_jitter_keeps_each_delay_in_its_upper_half() -> None:
    low = Backoff(0.1, 1.0, rng=lambda: 0.0)
    assert [round(low.next(), 6) for _ in range(5)] == [0.05, 0.1, 0.2, 0.4, 0.5]
    real = Backoff(0.2, 0.2)
    delays = [real.next() for _ in range(200)]
    assert all(0.1 <= d <= 0.2 for d in delays) and len(set(delays)) > 100  # spread, not one value


def test_a_nonsense_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(0, 1.0)
    with pytest.raises(ValueError, match="cap"):
        Backoff(2.0, 1.0)
