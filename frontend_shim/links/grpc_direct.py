"""A sync gRPC bidi stream driven without grpcio's helper threads on the message path.

grpcio's synchronous stream_stream call moves every message across threads: a request iterator is consumed by
a thread of its own, which hands each message to gRPC's core and then waits until the channel's spin thread
reports it sent; every reply is taken off the completion queue by that spin thread and handed to whoever
iterates the call. On a 2-core machine each such wake-up costs as much as the work (README, hot path), and a
backend register read paid four of them in the shim. `DirectCall` keeps grpcio's call (its channel, its spin
thread, its cancellation, status and done callbacks) and drives its messages itself:

- a message is handed to gRPC's core by the thread that has it (one send in flight at a time, as gRPC requires;
  what is queued meanwhile leaves from the spin thread as soon as the one before is reported sent; messages are
  taken in order under the call's lock and serialized outside it);
- a received message is handled on the spin thread that took it off the completion queue (`on_message`), and the
  next receive is posted after it, so messages are handled one at a time and in order;
- the half-close stays with grpcio: the call's request iterator yields nothing and ends when the last queued
  message has gone (`finish`).

This uses grpcio's private call state (`_state`, `_call`, cygrpc operations), the same way grpcio's own
`_MultiThreadedRendezvous` does; `supports` checks that a call has it, and the session stream falls back to the
request iterator and a reader thread when it does not (another grpcio, an intercepted channel) or when the shim
runs with `--no-grpc-direct` (`enabled`). tests/test_grpc_direct.py checks that the pinned grpcio takes this
path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

try:  # grpcio's internals; `supports` says whether this grpcio has them
    from grpc import _channel
    from grpc._cython import cygrpc

    _SEND = cygrpc.OperationType.send_message
    _RECEIVE = cygrpc.OperationType.receive_message
    _RENDEZVOUS: type | None = _channel._MultiThreadedRendezvous
except (ImportError, AttributeError):  # pragma: no cover - another grpcio
    _RENDEZVOUS = None

log = logging.getLogger("rdv.links.grpc")

END = object()  # from `take`: the requests are over, half-close the stream
enabled = True  # the shim's --grpc-direct / RDV_GRPC_DIRECT: False keeps every stream on grpcio's helper threads


def supports(open_call: object) -> bool:
    """Direct driving is on and `open_call` (a stub's stream method) is grpcio's own, on a channel without
    interceptors: its calls are the multi-threaded stream calls DirectCall drives."""
    return (
        enabled
        and _RENDEZVOUS is not None
        and type(open_call) is getattr(_channel, "_StreamStreamMultiCallable", None)
        and hasattr(_channel, "_handle_event")
    )


def _drivable(call: object) -> bool:
    state = getattr(call, "_state", None)
    return (
        type(call) is _RENDEZVOUS
        and hasattr(call, "_call")
        and hasattr(call, "_response_deserializer")
        and all(hasattr(state, a) for a in ("condition", "due", "code", "details", "fork_epoch"))
    )


class DirectCall:
    """Drives one open stream_stream call (made with `requests()` as its request iterator).

    take: the next message to send (None: nothing queued; END: half-close), called under the call's lock, in the
    order messages are to leave; serialize: a message to its bytes (outside the lock); on_message: a received
    message, deserialized by the call's deserializer, on the spin thread; on_end: (code, details) once, after the
    last message was handled."""

    def __init__(
        self,
        take: Callable[[], Any],
        serialize: Callable[[Any], bytes],
        on_message: Callable[[Any], None],
        on_end: Callable[[grpc.StatusCode, str], None],
    ) -> None:
        self._take = take
        self._serialize = serialize
        self._deserialize: Callable[[bytes], Any] = bytes
        self._on_message = on_message
        self._on_end = on_end
        self._half_close = threading.Event()  # the request iterator ends: grpcio's thread half-closes the stream
        self._rendezvous: Any = None
        self._state: Any = None
        self._cond: threading.Condition | None = None
        self._sending = False
        self._receiving = False
        self._status = False  # the call's status arrived
        self._ended = False

    def requests(self) -> Iterator[Any]:
        """The request iterator to open the call with: nothing, until the stream is to be half-closed."""
        self._half_close.wait()
        return
        yield  # pragma: no cover - a generator that yields nothing

    def start(self, call: Any) -> None:
        """Take over `call` (made by a stream method `supports` accepts) and post its first receive."""
        if not _drivable(call):
            call.cancel()
            raise RuntimeError(f"this grpcio's stream call ({type(call).__name__}) cannot be driven directly")
        self._rendezvous = call
        self._deserialize = call._response_deserializer or bytes  # None: the call carries bytes
        self._state = call._state
        self._cond = self._state.condition
        with self._cond:
            self._receiving = self._receive()
        call.add_done_callback(self._done)

    def kick(self) -> None:
        """Something was queued: send it now, unless a message is on its way (its completion sends the next)."""
        with self._cond:  # type: ignore[union-attr]
            if self._sending:
                return
            self._sending = True
        self._pump()

    def cancel(self) -> None:
        self._half_close.set()
        if self._rendezvous is not None:
            self._rendezvous.cancel()

    def _pump(self) -> None:
        """(holding the sending slot: `_sending`) Send what is queued, one message at a time, each serialized
        outside the call's lock (a display frame takes a while, and other threads only queue meanwhile); return
        once one is on its way (its completion pumps on) or nothing is left."""
        try:
            while self._send_one():
                pass
        except Exception:  # a bug of ours (a message that does not serialize): the session ends, nothing hangs
            log.exception("a message for the service could not be sent; ending the session")
            with self._cond:  # type: ignore[union-attr]
                self._sending = False
            self._rendezvous.cancel()

    def _send_one(self) -> bool:
        """Take the next message and hand it to gRPC; True: go on with the next (this one was dropped)."""
        state, cond = self._state, self._cond
        with cond:  # type: ignore[union-attr]
            item = self._take()
            if item is None or item is END:
                self._sending = False
                if item is END:
                    self._half_close.set()
                return False
        data = self._serialize(item)
        with cond:  # type: ignore[union-attr]
            if state.code is not None:
                return True  # the call is over: what is left is dropped, as grpcio's own consumer does
            state.due.add(_SEND)
            if self._rendezvous._call.operate((cygrpc.SendMessageOperation(data, 0),), self._sent):
                return False
            state.due.discard(_SEND)
            return True

    # ------------------------------------------------------------------ under the call's lock
    def _receive(self) -> bool:
        state = self._state
        if state.code is not None:
            return False
        state.due.add(_RECEIVE)
        if self._rendezvous._call.operate((cygrpc.ReceiveMessageOperation(0),), self._received):
            return True
        state.due.discard(_RECEIVE)
        return False

    def _finished(self) -> bool:
        """What grpcio's own event handlers return: the call has nothing due (the spin thread lets go of it)."""
        state = self._state
        return not state.due and state.fork_epoch >= cygrpc.get_fork_epoch()

    # ------------------------------------------------------------------ the spin thread's events
    def _sent(self, event: Any) -> bool:
        with self._cond:  # type: ignore[union-attr]
            _channel._handle_event(event, self._state, None)  # takes the send off `due`
            self._cond.notify_all()  # type: ignore[union-attr]
            finished = self._finished()
        self._pump()  # this thread holds the sending slot the message took
        return finished

    def _received(self, event: Any) -> bool:
        data = None
        with self._cond:  # type: ignore[union-attr]
            for op in event.batch_operations:
                self._state.due.discard(op.type())
                data = op.message()
        if data is not None:
            try:
                self._on_message(self._deserialize(data))
            except Exception:  # a bug of ours must not stop the channel's thread: the session ends instead
                log.exception("a message from the service could not be handled; ending the session")
                self._rendezvous.cancel()
        with self._cond:  # type: ignore[union-attr]
            self._receiving = data is not None and self._receive()
            finished = self._finished()
        self._end_if_over()
        return finished

    def _done(self, _call: Any) -> None:
        """The call's status arrived (grpcio runs done callbacks on the spin thread, or here if already done)."""
        with self._cond:  # type: ignore[union-attr]
            self._status = True
        self._end_if_over()

    def _end_if_over(self) -> None:
        with self._cond:  # type: ignore[union-attr]
            if self._ended or not self._status or self._receiving:
                return
            self._ended = True
            code, details = self._state.code, self._state.details or ""
        self._half_close.set()
        self._on_end(code, details)
