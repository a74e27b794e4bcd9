"""What the session-stream services (audio, display) share about a stream's life: the wait for `open`,
bounded in time and in number, the bound on open sessions, and a cleanup that always runs to its end.

A well-behaved shim sends `open` with the stream itself, so a stream still silent after a moment is idle or
hostile (slow-loris). At most `max_waiting` streams wait for their `open` at once; a newer one evicts the
oldest waiting stream (RESOURCE_EXHAUSTED), so idle streams can never hold the server's RPC slots and a
well-behaved shim always gets in. A stream silent for `timeout` seconds is ended (INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine

import grpc
from google.protobuf.message import DecodeError

DEFAULT_OPEN_TIMEOUT = 10.0  # seconds a new stream may take to send `open`
MAX_WAITING = 32  # streams waiting for `open` at once
DEFAULT_MAX_SESSIONS = 32  # open sessions per service: a home has a handful of VMs


class OpenGate:
    def __init__(
        self, timeout: float = DEFAULT_OPEN_TIMEOUT, max_waiting: int = MAX_WAITING, max_sessions: int = 0
    ) -> None:
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_sessions = max_sessions or DEFAULT_MAX_SESSIONS
        self.evicted = 0
        self.timed_out = 0
        self._waiting: OrderedDict[int, asyncio.Future[None]] = OrderedDict()
        self._ids = itertools.count()
        self._cleanups: set[asyncio.Task] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def first(self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext, sessions: int) -> object:
        """The stream's first message, or the stream is aborted (timeout, eviction, end, malformed, full)."""
        if sessions >= self.max_sessions:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"this service already has {sessions} sessions (its maximum)"
            )
        loop = asyncio.get_running_loop()
        token, evict = next(self._ids), loop.create_future()
        self._waiting[token] = evict
        if len(self._waiting) > self.max_waiting:
            _, oldest = self._waiting.popitem(last=False)
            oldest.set_result(None)
        read = asyncio.ensure_future(anext(request_iterator))
        try:
            done, _ = await asyncio.wait({read, evict}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting.pop(token, None)
            if not read.done():
                read.cancel()
        if read in done:
            try:
                return read.result()
            except StopAsyncIteration:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with an `open` message")
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {exc}")
        if evict in done:
            self.evicted += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self.max_waiting} streams are waiting to send `open`; the oldest gave way",
            )
        self.timed_out += 1
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"a session starts with an `open` message, sent within {self.timeout} s"
        )
        raise AssertionError("unreachable")  # abort raises

    async def finish(self, cleanup: Coroutine[object, object, None]) -> None:
        """Run a session's cleanup to its end even if the RPC is cancelled again meanwhile (a shim that half-closes,
        then cancels, or a dead peer found by keepalive): cut short, it would leak the session and its threads."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)
