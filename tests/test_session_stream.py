"""The hand-off of a reply from a link's reader thread to the guest thread waiting on a register read."""

from __future__ import annotations

import threading

from frontend_shim.links.session_stream import Waiter


def test_a_waiter_hands_over_the_value_set_before_or_during_the_wait() -> None:
    early = Waiter()
    early.set(7)
    assert early.wait(None) and early.value == 7

    late = Waiter()
    threading.Thread(target=late.set, args=(0x1234,)).start()
    assert late.wait(None) and late.value == 0x1234


def test_a_spent_timeout_only_looks_like_an_events_would() -> None:
    w = Waiter()
    assert not w.wait(0)
    assert not w.wait(-1.0)
    w.set()  # released without a value: the link's reader lost the stream, the guest sees a failed access
    assert w.wait(0) and w.value is None
