"""The hand-off of a reply from a link's reader thread to the guest thread waiting on a register read, and the
order in which held writes enter the stream."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

from frontend_shim.links.session_stream import SessionStream, Waiter


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


def _queued(stream: SessionStream) -> list:
    out = []
    while True:
        try:
            out.append(stream._queue.get_nowait())
        except queue.Empty:
            return out


def test_held_writes_leave_after_the_reply_and_before_anything_sent_meanwhile() -> None:
    """The vfio-user server holds a guest write's stream traffic until its reply is out (SessionStream.hold): the
    write must still enter the stream before any message sent after it (a backend read, a PCM chunk, a barrier),
    or the service would see the device's changes out of order."""
    stream = SessionStream("127.0.0.1:1", None, SimpleNamespace(), object)  # never started: only the queue
    try:
        stream.post_write(0x00, 4, 1)  # not holding: straight to the sending thread
        stream.hold()
        stream.post_write(0x0C, 4, 2)
        stream.post_write(0x0C, 4, 3)
        assert _queued(stream) == [(0x00, 4, 1)]  # held back ...
        stream.send("read")  # ... until something else must follow them
        stream.post_write(0x0C, 4, 4)
        assert _queued(stream) == [(0x0C, 4, 2), (0x0C, 4, 3), "read"]
        stream.release()
        assert _queued(stream) == [(0x0C, 4, 4)]
        stream.release()  # a second release finds nothing
        stream.post_write(0x0C, 4, 5)
        assert _queued(stream) == [(0x0C, 4, 5)]
    finally:
        stream.close()
