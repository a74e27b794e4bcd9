"""InputPublisher: a source's client of the input service, safe to call from a UI event loop.

    pub = InputPublisher("127.0.0.1:50053", source="display")
    pub.start()
    pub.move(x, y, guest_width, guest_height)   # each call returns at once; never blocks, never raises on I/O
    pub.button("left", True)
    pub.key("a", True)                          # QEMU qcode names (services/common/input_keys.py; HID_TO_QCODE for SDL)
    pub.wheel(dy=1)
    pub.close()

A background thread owns one Publish stream and reconnects (backoff up to 2 s) whenever the service goes away.
Events wait in a bounded queue: consecutive pointer moves coalesce into the latest, and a full queue drops its
oldest pointer move (or, with none left, its oldest event), counted in `stats`. Events older than `max_age`
when the stream (re)starts are dropped rather than replayed into the guest late.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator

import grpc

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common import logs
from services.common.retry import Backoff

log = logs.get("input.publisher")
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class InputPublisher:
    def __init__(
        self,
        target: str,
        source: str = "display",
        *,
        max_queue: int = 1024,
        max_age: float = 2.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if max_queue < 2:
            raise ValueError("max_queue must be at least 2")
        if not source or len(source) > ev.MAX_SOURCE:
            raise ValueError(f"source must be 1..{ev.MAX_SOURCE} characters")
        self.target = target
        self.source = source
        self.max_queue = max_queue
        self.max_age_ns = int(max_age * 1e9)
        self.stats: Counter[str] = Counter()  # published, coalesced, dropped, expired, sent, reconnects
        self._credentials = credentials
        self._queue: deque[input_pb2.InputEvent] = deque()
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="input-publisher", daemon=True)

    # ------------------------------------------------------------------ the caller's side (never blocks)
    def start(self) -> InputPublisher:
        self._thread.start()
        return self

    def publish(self, event: input_pb2.InputEvent) -> None:
        """Queue `event` for the service. Raises ev.InvalidEvent for an event the service would refuse."""
        ev.check(event)
        with self._cond:
            self._seq += 1
            event.source = event.source or self.source
            event.timestamp_ns = event.timestamp_ns or time.monotonic_ns()
            event.seq = event.seq or self._seq
            self.stats["published"] += 1
            q = self._queue
            moving = event.WhichOneof("kind") == "pointer_move"
            if moving and q and q[-1].WhichOneof("kind") == "pointer_move":
                q[-1] = event
                self.stats["coalesced"] += 1
            else:
                if len(q) >= self.max_queue:
                    victim = next((i for i, e in enumerate(q) if e.WhichOneof("kind") == "pointer_move"), 0)
                    del q[victim]
                    self.stats["dropped"] += 1
                q.append(event)
            self._cond.notify()

    def move(self, x: int, y: int, width: int, height: int) -> None:
        self.publish(ev.move(x, y, width, height))

    def button(self, name: str, pressed: bool) -> None:
        """`name`: left, middle, right, side, extra."""
        self.publish(ev.button(name, pressed))

    def wheel(self, dx: int = 0, dy: int = 0) -> None:
        """Clicks; dy > 0 scrolls up, dx > 0 right."""
        self.publish(ev.wheel(dx, dy))

    def key(self, qcode: str, pressed: bool) -> None:
        self.publish(ev.key(qcode, pressed))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event went onto the stream (tests, orderly shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (up to `timeout`), end the stream and stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the background thread
    def _run(self) -> None:
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]
        while not self._closed:
            channel = (
                grpc.secure_channel(self.target, self._credentials, options)
                if self._credentials
                else grpc.insecure_channel(self.target, options)
            )
            call_done = threading.Event()
            try:
                grpc.channel_ready_future(channel).result(timeout=backoff.current + 1.0)
                self._connected.set()
                log.info("publishing", extra={"target": self.target, "source": self.source})
                self._drop_stale()
                future = input_pb2_grpc.InputServiceStub(channel).Publish.future(self._stream(call_done))
                summary = future.result()
                log.info("stream ended", extra={"target": self.target, "delivered": summary.delivered})
                backoff.reset()
            except grpc.FutureTimeoutError:
                pass
            except grpc.RpcError as exc:
                log.warning("input service stream failed", extra={"target": self.target, "code": exc.code().name,
                                                                  "detail": exc.details()})  # fmt: skip
            finally:
                call_done.set()
                self._connected.clear()
                channel.close()
            if not self._closed:
                self.stats["reconnects"] += 1
                delay = backoff.next()
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, delay)

    def _stream(self, call_done: threading.Event) -> Iterator[input_pb2.InputEvent]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed or call_done.is_set(), 0.25)
                if call_done.is_set() or (self._closed and not self._queue):
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._cond.notify_all()  # flush() waiters
            self.stats["sent"] += len(batch)
            yield from batch

    def _drop_stale(self) -> None:
        limit = time.monotonic_ns() - self.max_age_ns
        with self._cond:
            fresh = [e for e in self._queue if e.timestamp_ns >= limit]
            self.stats["expired"] += len(self._queue) - len(fresh)
            self._queue = deque(fresh)
