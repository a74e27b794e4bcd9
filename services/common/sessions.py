"""What the session-stream services (audio, display) share, written once:

- `OpenGate`: the wait for `open`, bounded in time and in number, the bound on open sessions, and a cleanup
  that always runs to its end;
- `DeviceSession`: one shim's session with a device model: register reads, single writes and batches of
  posted writes, barriers, and the messages no session may get; one counter vocabulary
  (`register_reads`, `register_writes`, `register_write_batches`, `barriers`);
- `Outbox`: the one way messages go back to the shim, in order;
- `SessionServicer`: the stream's life (open → pump → close) and `ListSessions`.

A well-behaved shim sends `open` with the stream itself, so a stream still silent after a moment is idle or
hostile (slow-loris). At most `max_waiting` streams wait for their `open` at once; a newer one evicts the
oldest waiting stream (RESOURCE_EXHAUSTED), so idle streams can never hold the server's RPC slots and a
well-behaved shim always gets in. A stream silent for `timeout` seconds is ended (INVALID_ARGUMENT).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError

from rdv.common.v1 import common_pb2
from services.common import logs, register_writes, tls

DEFAULT_OPEN_TIMEOUT = 10.0  # seconds a new stream may take to send `open`
MAX_WAITING = 32  # streams waiting for `open` at once
DEFAULT_MAX_SESSIONS = 32  # open sessions per service: a home has a handful of VMs
VM_NAME = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII without spaces: it appears in logs, titles, headers
VM_NAME_RULE = "vm must be 1-64 printable ASCII characters without spaces"


def parses_own_requests(method: Callable) -> Callable:
    """Mark a stream-stream RPC method that catches `DecodeError` from its request iterator itself and ends the
    call with INVALID_ARGUMENT: the server's `DecodeGuard` leaves its stream unwrapped. (Wrapped, an abort raised
    inside the wrapper's generator reached the session loop as a foreign exception, and the call hung until its
    deadline instead of ending with the status.)"""
    method.parses_own_requests = True  # type: ignore[attr-defined]
    return method


def parses_its_requests(method: object) -> bool:
    return bool(getattr(method, "parses_own_requests", False))


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


BACKEND = common_pb2.COHERENCE_MODE_BACKEND
MIRRORED = common_pb2.COHERENCE_MODE_MIRRORED
FLUSH_TIMEOUT = 2.0  # seconds the last messages of a cleanly ended session may take to leave
ABORT_FLUSH_TIMEOUT = 0.2  # the same after an error: the shim may have stopped reading


class SessionError(Exception):
    """A frontend message this session must refuse; ends the stream with `code`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class DeviceSession:
    """What every device session does with the register-level messages. A subclass names its device (`device`,
    for error messages), its BackendMessage class (`reply`), and implements the model access
    (`read_register`, `write_register`), the barrier's acknowledgement (`barrier_ack`) and its own message
    kinds (`handle_device`)."""

    device: ClassVar[str] = "the device"
    reply: ClassVar[Callable[..., Any]]

    def __init__(self, session_id: str, vm: str, mode: int, peer: str, send: Callable[[Any], None]) -> None:
        self.session_id = session_id
        self.vm = vm or "vm"
        self.mode = mode
        self.peer = peer
        self.started = time.monotonic()
        self.counters: Counter[str] = Counter()
        self._send = send

    # ------------------------------------------------------------------ what a device says
    def read_register(self, offset: int, size: int) -> int:
        raise NotImplementedError

    def write_register(self, offset: int, size: int, value: int) -> None:
        raise NotImplementedError

    def barrier_ack(self, barrier: common_pb2.Barrier) -> Any:
        raise NotImplementedError

    def settle(self) -> None:
        """After a write, or after a whole batch of them: let the device act on them (a DMA engine moving on).
        Writes the guest made back to back (an interrupt's acknowledgement: enable off, then on) settle once."""

    def handle_device(self, kind: str, msg: Any) -> None:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind} message")

    def session_counters(self) -> Mapping[str, int]:
        """What ListSessions shows for this session."""
        return dict(self.counters)

    async def close(self, drain: bool) -> None:
        """The stream ended (drain: cleanly)."""

    # ------------------------------------------------------------------ the messages
    def handle(self, msg: Any) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "writes":
            self._writes(msg.writes)
        elif kind == "access":
            self._access(msg.access)
        elif kind == "barrier":
            self.counters["barriers"] += 1
            self._send(self.reply(barrier_ack=self.barrier_ack(msg.barrier)))
        elif kind == "open":
            raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "the session is already open")
        elif kind is None:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "empty frontend message")
        else:
            self.handle_device(kind, msg)

    def _access(self, a: common_pb2.RegisterAccess) -> None:
        if a.bar != 0:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{self.device} has registers on BAR 0 only, not {a.bar}"
            )
        if a.write:
            self._write(a.offset, a.size, a.value)
            self.settle()
            return
        self.counters["register_reads"] += 1
        try:
            value = self.read_register(a.offset, a.size)
        except ValueError as exc:  # the model's AccessError
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        self._send(self.reply(value=common_pb2.RegisterValue(seq=a.seq, value=value)))

    def _writes(self, batch: common_pb2.RegisterWrites) -> None:
        try:
            writes = register_writes.unpack(batch)
        except ValueError as exc:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        self.counters["register_write_batches"] += 1
        for offset, size, value in writes:
            self._write(offset, size, value)
        self.settle()

    def _write(self, offset: int, size: int, value: int) -> None:
        """One guest write, alone or out of a batch: the same effects either way."""
        self.counters["register_writes"] += 1
        try:
            self.write_register(offset, size, value)
        except ValueError as exc:  # the model's AccessError
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc


class Outbox:
    """Messages to the shim, written in order. The session loop writes what a request made it say itself, at once
    (a read's reply leaves with no task switch on the round trip); a background task flushes what other threads
    and timers add in between (player progress, frame acknowledgements)."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._queue: deque[Any] = deque()
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._stopping = False
        self._answering = False

    def put(self, msg: Any) -> None:
        self._queue.append(msg)
        if not self._answering:  # answer() writes it right after: waking the background task would be wasted
            self._ready.set()

    async def answer(self, handle: Callable[[Any], None], msg: Any) -> None:
        """`handle(msg)`, then write what it said."""
        self._answering = True
        try:
            handle(msg)
        finally:
            self._answering = False
        await self.flush()

    async def flush(self) -> None:
        if not self._queue:
            return
        async with self._lock:
            while self._queue:
                await self._context.write(self._queue.popleft())

    async def run(self) -> None:
        while not self._stopping:
            await self._ready.wait()
            self._ready.clear()
            await self.flush()

    def stop(self) -> None:
        """`run` returns after the flush in progress, if any."""
        self._stopping = True
        self._ready.set()


class SessionServicer:
    """The `Session` stream and `ListSessions` of a device service. A subclass makes its session from the `open`
    message (`open_session`, raising SessionError to refuse it), says what `opened` carries (`opened`), and may
    run a periodic `pump` (`pump_interval` > 0) and hook the end (`detach`)."""

    id_prefix: ClassVar[str] = "s"
    log = logs.get("session")

    def __init__(self, info: common_pb2.ServiceInfo, gate: OpenGate | None) -> None:
        self.info = info
        self.gate = gate or OpenGate()
        self.sessions: dict[str, DeviceSession] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ what a service says
    def open_session(self, session_id: str, opening: Any, send: Callable[[Any], None], peer: str) -> DeviceSession:
        raise NotImplementedError

    def opened(self, session: DeviceSession) -> Any:
        """The BackendMessage that answers `open`."""
        raise NotImplementedError

    def pump_interval(self, session: Any) -> float:
        """Real seconds between `pump` calls of `session` (0: none)."""
        return 0.0

    def attach(self, session: DeviceSession) -> None:
        """The session is open (after `opened` is queued)."""

    def detach(self, session: DeviceSession) -> None:
        """The stream is over, before its last messages are flushed."""

    # ------------------------------------------------------------------ the device stream
    @parses_own_requests  # the gate's first read and the loop below end a malformed message's stream
    async def Session(self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        first = await self.gate.first(request_iterator, context, len(self.sessions))
        if first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with an `open` message")
        if first.open.mode not in (BACKEND, MIRRORED):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open.mode must be BACKEND or MIRRORED")
        scope = tls.vm_scope()  # a VM's certificate opens sessions for that VM only
        if scope and first.open.vm not in ("", scope):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls.not_in_scope(first.open.vm))
        if scope:
            first.open.vm = scope
        outbox = Outbox(context)
        session_id = f"{self.id_prefix}{next(self._ids)}"
        try:
            session = self.open_session(session_id, first.open, outbox.put, context.peer())
        except SessionError as exc:
            await context.abort(exc.code, str(exc))
        self.sessions[session_id] = session
        outbox.put(self.opened(session))  # first in line, before anything the session says
        self.attach(session)
        self.log.info("session opened", extra={"session": session_id, "vm": session.vm, "peer": session.peer})
        writer = asyncio.create_task(outbox.run())
        interval = self.pump_interval(session)
        ticker = asyncio.create_task(_tick(session, interval)) if interval > 0 else None
        error: SessionError | None = None
        clean_end = False
        try:
            async for msg in request_iterator:
                await outbox.answer(session.handle, msg)
            clean_end = True
        except SessionError as exc:
            error = exc
        except DecodeError as exc:
            error = SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {exc}")
        finally:
            if ticker is not None:
                ticker.cancel()
            await self.gate.finish(self._close(session, outbox, writer, clean_end))
        if error is not None:
            self.log.warning("session refused a message", extra={"session": session_id, "error": str(error)})
            await context.abort(error.code, str(error))

    async def _close(self, session: DeviceSession, outbox: Outbox, writer: asyncio.Task, clean_end: bool) -> None:
        try:
            self.detach(session)
            outbox.stop()
            # Let the writer finish the message it is writing: a write cancelled halfway can wedge the call.
            done, stuck = await asyncio.wait({writer}, timeout=FLUSH_TIMEOUT if clean_end else ABORT_FLUSH_TIMEOUT)
            for task in stuck:  # the shim stopped reading
                task.cancel()
            for task in done:  # a write to a call that has ended fails: the shim is gone, nobody to tell
                if not task.cancelled() and (exc := task.exception()) is not None:
                    self.log.debug("reply stream closed under the writer", extra={"error": repr(exc)})
            if clean_end and not stuck:
                with contextlib.suppress(Exception):  # the shim is gone or not reading: nobody to tell
                    await asyncio.wait_for(outbox.flush(), FLUSH_TIMEOUT)
        finally:
            self.sessions.pop(session.session_id, None)
            await session.close(drain=clean_end)
            self.log.info(
                "session closed",
                extra={"session": session.session_id, "clean": clean_end, **dict(session.counters)},
            )

    # ------------------------------------------------------------------ debugging RPCs
    async def ListSessions(self, request: Any, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:
        """Every open session with its VM's name (a VM's certificate sees its own only)."""
        now = time.monotonic()
        scope = tls.vm_scope()
        return common_pb2.ListSessionsResponse(
            sessions=[
                common_pb2.SessionInfo(
                    session_id=s.session_id,
                    vm=s.vm,
                    mode=s.mode,
                    peer=s.peer,
                    age_seconds=now - s.started,
                    counters=s.session_counters(),
                )
                for s in list(self.sessions.values())
                if not scope or s.vm == scope
            ]
        )


async def _tick(session: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        session.pump()
