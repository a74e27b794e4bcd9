"""The client end of one device session stream, shared by the audio and display links.

Requests go through a queue: messages (and posted register writes, queued as plain tuples) are built, sized and
serialized as they leave. The writes queued behind each other when one leaves go as one `writes` batch (gRPC
sends one message at a time, so writes the guest makes while one is on its way pile up): a lone write waits for
nothing, and messages keep their order. No coalescing window: replaying the real-driver traces
(tests/data/traces) in mirrored mode, 970 writes leave as ~409 messages this way, and waiting up to 1 ms for more
would save only ~13 of them. Replies go to `on_message`, one at a time, in order, on the stream's receiving
thread; when the stream ends, `on_lost` hears why (on that thread too).

How the messages cross gRPC: with grpcio's own calls (`grpc_direct.supports`) a message leaves from the thread
that sends it, or, when one is still on its way, from gRPC's channel thread as soon as that one is out, and the
receiving thread is the channel thread (`grpc_direct.DirectCall`). Otherwise (the shim's `--no-grpc-direct`,
another grpcio, an intercepted channel) grpcio's request thread takes the queue and a reader thread of ours is
the receiving thread: two more thread hand-offs per round trip, which a backend register read paid until
2026-12-06 (README, hot path).

Why sync gRPC and not grpc.aio: a client with one event-loop thread for every stream (the guest posting to it,
the loop writing, reading and waking the guest) was measured 5-8% slower per backend read on the 2-core node,
idle or loaded: fewer context switches, but as much CPU per round trip, all of it on the loop's one thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from frontend_shim.links import grpc_direct
from services.common import register_writes

FRAME_OVERHEAD = 5  # gRPC's length prefix per message, counted in the wire figures
MAX_MESSAGE = 8 * 1024 * 1024
_NOTHING = object()  # no message held back by a batch


def _serialize(msg: Any) -> bytes:
    return msg.SerializeToString()


def channel_options(max_message: int = MAX_MESSAGE) -> list[tuple[str, int]]:
    """The links' gRPC channel options (also the benchmark's bare gRPC echo floor, tests/bench/floors.py)."""
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
        ("grpc.keepalive_time_ms", 10_000),
    ]


class WireStats(Protocol):
    bytes_to_service: int
    messages_to_service: int


class Waiter:
    """One reply a guest thread waits for, released by the stream's receiving thread. A held lock rather than an
    Event: the guest's round trip is shorter (no condition, no lock made per wait). `set` must run at most once,
    so the links pop a waiter from their table before setting it."""

    __slots__ = ("_lock", "value", "early")

    def __init__(self, early: Callable[[Any], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.value: object = None
        self.early = early  # runs on the setting thread with the value before the waiting thread wakes

    def set(self, value: object = None) -> None:
        self.value = value
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Like Event.wait: None waits for ever, a spent timeout (<= 0) only looks."""
        if timeout is None or timeout > 0:
            return self._lock.acquire(timeout=-1 if timeout is None else timeout)
        return self._lock.acquire(blocking=False)


class SessionStream:
    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        stats: WireStats,
        make_message: Callable[..., Any],  # the service's FrontendMessage class
        max_message: int = MAX_MESSAGE,
        on_sent: Callable[[Any, int], None] | None = None,  # (message, wire bytes) as each one leaves
    ) -> None:
        options = channel_options(max_message)
        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self.alive = True
        self.opened = threading.Event()
        self.session_id = ""
        self._stats = stats
        self._make_message = make_message
        self._on_sent = on_sent
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._held: list[Any] | None = None  # hold(): posted writes kept back until release()
        self._held_lock = threading.Lock()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._carry: Any = _NOTHING  # the message that ended the last batch of writes: it goes next
        self._direct: grpc_direct.DirectCall | None = None
        self._ended = threading.Event()  # on_lost has run

    def start(
        self,
        open_stream: Callable[[Iterator[Any]], Iterator[Any]],
        on_message: Callable[[SessionStream, Any], None],
        on_lost: Callable[[SessionStream, str], None],
        name: str,
    ) -> None:
        """Open the stream (`open_stream` is the stub's Session method) and start handling its replies."""
        if grpc_direct.supports(open_stream):
            direct = grpc_direct.DirectCall(
                self._take_direct,
                _serialize,
                lambda msg: on_message(self, msg),
                lambda code, details: self._lost(on_lost, code, details),
            )
            self._call = open_stream(direct.requests())
            direct.start(self._call)
            self._direct = direct  # from now on a send kicks it
            direct.kick()  # whatever was queued before
            return
        self._call = open_stream(self._requests())
        self._thread = threading.Thread(target=self._read, args=(on_message, on_lost), name=name, daemon=True)
        self._thread.start()

    @property
    def direct(self) -> bool:
        """Messages cross gRPC without grpcio's helper threads (grpc_direct)."""
        return self._direct is not None

    def _take(self, block: bool) -> Any:
        """The next message to leave (None: the requests are over; _NOTHING: none queued, when not `block`):
        writes queued back to back leave as one batch. Counted as it leaves."""
        item, self._carry = self._carry, _NOTHING
        if item is _NOTHING:
            try:
                item = self._queue.get(block)
            except queue.Empty:
                return _NOTHING
        if item is None:
            return None
        if type(item) is tuple:  # a posted register write: (offset, size, value)
            writes = [item]
            self._carry = self._gather(writes)
            item = self._make_message(writes=register_writes.pack(writes))
        size = item.ByteSize() + FRAME_OVERHEAD
        self._stats.bytes_to_service += size
        self._stats.messages_to_service += 1
        if self._on_sent is not None:
            self._on_sent(item, size)
        return item

    def _take_direct(self) -> Any:
        """DirectCall's `take` (under the call's lock)."""
        item = self._take(block=False)
        if item is _NOTHING:
            return None
        return grpc_direct.END if item is None else item

    def _requests(self) -> Iterator[Any]:
        """The request iterator grpcio's own thread consumes (when the stream is not driven directly)."""
        while True:
            item = self._take(block=True)
            if item is None:
                return
            yield item

    def _gather(self, writes: list[register_writes.Write]) -> Any:
        """Add the writes queued right behind the first to its batch; returns the message that ended the batch
        (_NOTHING when the queue ran dry or the batch is full)."""
        get = self._queue.get_nowait
        while len(writes) < register_writes.MAX_WRITES:
            try:
                item = get()
            except queue.Empty:
                break
            if type(item) is not tuple:
                return item
            writes.append(item)
        return _NOTHING

    def send(self, msg: Any) -> None:
        if self.alive:
            if self._held is None or not self._flush_held(msg):
                self._queue.put(msg)
            self._kick()

    def _kick(self) -> None:
        direct = self._direct
        if direct is not None:
            direct.kick()

    def post_write(self, offset: int, size: int, value: int) -> None:
        if self.alive:
            if self._held is not None:
                with self._held_lock:
                    if self._held is not None:
                        self._held.append((offset, size, value))
                        return
            self._queue.put((offset, size, value))
            self._kick()

    def hold(self) -> None:
        """Keep posted writes here until release(): the vfio-user server answers the guest's write first, then
        sends the write (which would otherwise compete with the reply for the GIL). Anything sent meanwhile goes
        after the held writes, so the stream keeps the device's order."""
        self._held = []

    def release(self) -> None:
        with self._held_lock:
            held, self._held = self._held, None
            for item in held or ():
                self._queue.put(item)
        if held:
            self._kick()

    def _flush_held(self, msg: Any) -> bool:
        """(holding) Queue the held writes and then `msg`; False if the hold ended meanwhile."""
        with self._held_lock:
            held = self._held
            if held is None:
                return False
            self._held = []
            for item in held:
                self._queue.put(item)
            self._queue.put(msg)
            return True

    def _read(
        self, on_message: Callable[[SessionStream, Any], None], on_lost: Callable[[SessionStream, str], None]
    ) -> None:
        code, details = grpc.StatusCode.OK, ""
        try:
            for msg in self._call:
                on_message(self, msg)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        finally:
            self._lost(on_lost, code, details)

    def _lost(self, on_lost: Callable[[SessionStream, str], None], code: grpc.StatusCode, details: str) -> None:
        self.alive = False
        self.opened.set()
        try:
            on_lost(self, "stream ended" if code is grpc.StatusCode.OK else f"{code.name}: {details}")
        finally:
            self._ended.set()

    def finish(self, timeout: float) -> None:
        """Half-close and wait for the service to end the stream (it drains what it holds first)."""
        self._queue.put(None)
        self._kick()
        if self._call is not None:
            self._ended.wait(timeout)
        self.close()

    def close(self) -> None:
        self.alive = False
        self._queue.put(None)
        if self._direct is not None:
            self._direct.cancel()
        elif self._call is not None:
            self._call.cancel()
        self.channel.close()
