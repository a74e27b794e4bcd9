"""The client end of one device session stream, shared by the audio and display links.

Requests go through a queue that gRPC's sending thread consumes: messages (and posted register writes, queued
as plain tuples) are built and sized there, off the guest's path. The writes queued behind each other when that
thread takes one leave as one `writes` batch (gRPC sends one message at a time, so writes the guest makes while
one is on its way pile up): a lone write waits for nothing, and messages keep their order. No coalescing window:
replaying the real-driver traces (tests/data/traces) in mirrored mode, 970 writes leave as ~409 messages this
way, and waiting up to 1 ms for more would save only ~13 of them. A thread reads the replies and hands them to
`on_message`; when the stream ends, `on_lost` hears why.

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

from services.common import register_writes

FRAME_OVERHEAD = 5  # gRPC's length prefix per message, counted in the wire figures
MAX_MESSAGE = 8 * 1024 * 1024
_NOTHING = object()  # no message held back by a batch


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
    """One reply a guest thread waits for, released by the reader thread. A held lock rather than an Event: the
    guest's round trip is shorter (no condition, no lock made per wait). `set` must run at most once, so the
    links pop a waiter from their table before setting it."""

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

    def start(
        self,
        open_stream: Callable[[Iterator[Any]], Iterator[Any]],
        on_message: Callable[[SessionStream, Any], None],
        on_lost: Callable[[SessionStream, str], None],
        name: str,
    ) -> None:
        """Open the stream (`open_stream` is the stub's Session method) and start reading its replies."""
        self._call = open_stream(self._requests())
        self._thread = threading.Thread(target=self._read, args=(on_message, on_lost), name=name, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[Any]:
        stats, on_sent = self._stats, self._on_sent
        held = _NOTHING  # the message that ended the last batch of writes: it goes next
        while True:
            if held is _NOTHING:
                item = self._queue.get()
            else:
                item, held = held, _NOTHING
            if item is None:
                return
            if type(item) is tuple:  # a posted register write: (offset, size, value)
                writes = [item]
                held = self._gather(writes)
                item = self._make_message(writes=register_writes.pack(writes))
            size = item.ByteSize() + FRAME_OVERHEAD
            stats.bytes_to_service += size
            stats.messages_to_service += 1
            if on_sent is not None:
                on_sent(item, size)
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
            if self._held is not None and self._flush_held(msg):
                return
            self._queue.put(msg)

    def post_write(self, offset: int, size: int, value: int) -> None:
        if self.alive:
            if self._held is not None:
                with self._held_lock:
                    if self._held is not None:
                        self._held.append((offset, size, value))
                        return
            self._queue.put((offset, size, value))

    def hold(self) -> None:
        """Keep posted writes here until release(): the vfio-user server answers the guest's write first, then
        hands the write to gRPC's sending thread (whose wake-up would otherwise compete with the reply for the
        GIL). Anything sent meanwhile goes after the held writes, so the stream keeps the device's order."""
        self._held = []

    def release(self) -> None:
        with self._held_lock:
            held, self._held = self._held, None
            for item in held or ():
                self._queue.put(item)

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
        error = "stream ended"
        try:
            for msg in self._call:
                on_message(self, msg)
        except grpc.RpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        finally:
            self.alive = False
            self.opened.set()
            on_lost(self, error)

    def finish(self, timeout: float) -> None:
        """Half-close and wait for the service to end the stream (it drains what it holds first)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        self.alive = False
        self._queue.put(None)
        if self._call is not None:
            self._call.cancel()
        self.channel.close()
