"""The AudioService gRPC servicer: session streams and the debugging RPCs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable

import grpc
from google.protobuf.message import DecodeError

from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.audio.session import BACKEND, MIRRORED, AudioSession, SessionConfig, SessionError
from services.audio.sources import SourceConfig
from services.audio.sources.wav import read_format
from services.common import logs
from services.common.server import live_info
from services.common.sessions import OpenGate
from services.devices import es1370_regs as R
from services.devices.es1370_convert import state_from_proto, state_to_proto

log = logs.get("audio")
FLUSH_TIMEOUT = 2.0  # seconds the last messages of a cleanly ended session may take to leave
PUMP_INTERVAL = 0.01  # device seconds between backend-mode DMA checks (interrupt holds expire on it)


class AudioServicer(audio_pb2_grpc.AudioServiceServicer):
    def __init__(self, config: SessionConfig, info: common_pb2.ServiceInfo, gate: OpenGate | None = None) -> None:
        self.config = config
        self.info = info
        self.gate = gate or OpenGate()
        self.sessions: dict[str, AudioSession] = {}
        self._capture_info = capture_info(config.source)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ the device stream
    async def Session(self, request_iterator, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN001
        first = await self.gate.first(request_iterator, context, len(self.sessions))
        if first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with an `open` message")
        opening = first.open
        if opening.mode not in (BACKEND, MIRRORED):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open.mode must be BACKEND or MIRRORED")
        state = None
        if opening.HasField("state"):
            try:
                state = state_from_proto(opening.state)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"open.state: {exc}")

        outbox = _Outbox(context)
        session_id = f"s{next(self._ids)}"
        session = AudioSession(
            session_id, opening.vm or "vm", opening.mode, state, self.config, outbox.put, context.peer()
        )
        self.sessions[session_id] = session
        log.info("session opened", extra={"session": session_id, "vm": session.vm, "peer": session.peer})
        opened = audio_pb2.Opened(
            session_id=session_id,
            info=self.info,
            lead_ms=round(self.config.lead * 1000),
            capture=self._capture_info,
        )
        outbox.put(audio_pb2.BackendMessage(opened=opened))  # first in line, before anything the session says
        writer = asyncio.create_task(outbox.run())
        ticker = asyncio.create_task(_tick(session, self.config.clock.real_seconds(PUMP_INTERVAL)))
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
            ticker.cancel()
            outbox.stop()
            await self.gate.finish(self._close(session, outbox, writer, clean_end))
        if error is not None:
            log.warning("session refused a message", extra={"session": session_id, "error": str(error)})
            await context.abort(error.code, str(error))

    async def _close(self, session: AudioSession, outbox: _Outbox, writer: asyncio.Task, clean_end: bool) -> None:
        try:
            # Let the writer finish the message it is writing: a write cancelled halfway can wedge the call.
            _, stuck = await asyncio.wait({writer}, timeout=FLUSH_TIMEOUT)
            for task in stuck:  # the shim stopped reading
                task.cancel()
            if clean_end and not stuck:
                with contextlib.suppress(Exception):  # the shim is gone or not reading: nobody to tell
                    await asyncio.wait_for(outbox.flush(), FLUSH_TIMEOUT)
        finally:
            self.sessions.pop(session.session_id, None)
            await session.close(drain=clean_end)
            log.info(
                "session closed",
                extra={"session": session.session_id, "clean": clean_end, **dict(session.counters)},
            )

    # ------------------------------------------------------------------ debugging RPCs
    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return live_info(self.info)

    async def ListSessions(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:  # noqa: ANN001
        now = time.monotonic()
        return common_pb2.ListSessionsResponse(
            sessions=[
                common_pb2.SessionInfo(
                    session_id=s.session_id,
                    vm=s.vm,
                    mode=s.mode,
                    peer=s.peer,
                    age_seconds=now - s.started,
                    counters={
                        **s.counters,
                        **s.playback_counters(),
                        **s.capture.stats(),
                        **_percentiles("audio_chunk_ns", s.audio_chunk_ns),
                    },
                )
                for s in self.sessions.values()
            ]
        )

    async def GetDeviceState(self, request, context: grpc.aio.ServicerContext) -> audio_pb2.DeviceState:  # noqa: ANN001
        if request.session_id:
            session = self.sessions.get(request.session_id)
        elif len(self.sessions) == 1:
            session = next(iter(self.sessions.values()))
        else:
            session = None
        if session is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no session {request.session_id!r}; open sessions: {sorted(self.sessions)}",
            )
        return device_state(session)


def device_state(session: AudioSession) -> audio_pb2.DeviceState:
    model = session.model
    views = []
    for channel, name in enumerate(R.CHANNEL_NAMES):
        fmt = model.channel_format(channel)
        stats = session.player_stats(channel)
        ch = model.state.channels[channel]
        moved = stats.bytes_played if stats else session.counters["capture_bytes"] if channel == R.ADC else 0
        views.append(
            audio_pb2.ChannelView(
                name=name,
                enabled=model.channel_running(channel),
                paused=False,
                rate=fmt.rate,
                channels=fmt.channels,
                bits=fmt.bits,
                frame_addr=ch.frame_addr,
                buffer_bytes=model.buffer_bytes(channel),
                position_bytes=model.position_bytes(channel),
                samples_left=(ch.scount >> 16) + 1,
                bytes_played=moved,
            )
        )
    return audio_pb2.DeviceState(
        session_id=session.session_id, raw=state_to_proto(model.state), irq=model.irq, channels=views
    )


def capture_info(source: SourceConfig) -> audio_pb2.CaptureSourceInfo:
    """What the shim learns about the capture source when its session opens."""
    info = audio_pb2.CaptureSourceInfo(kind=source.kind, latency_ms=round(source.latency * 1000))
    if source.kind == "wav":
        fmt = read_format(source.path)
        info.rate, info.channels, info.bits = fmt.rate, fmt.channels, fmt.bits
    return info


def _percentiles(name: str, samples: Iterable[int]) -> dict[str, int]:
    ordered = sorted(samples)
    if not ordered:
        return {}
    return {
        f"{name}_p50": ordered[len(ordered) // 2],
        f"{name}_p99": ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
    }


class _Outbox:
    """Messages to the shim, written in order. The session loop writes what a request made it say itself, at once
    (a read's reply leaves with no task switch on the round trip); a background task flushes what player threads
    and timers add in between."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._queue: deque[audio_pb2.BackendMessage] = deque()
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._stopping = False
        self._answering = False

    def put(self, msg: audio_pb2.BackendMessage) -> None:
        self._queue.append(msg)
        if not self._answering:  # answer() writes it right after: waking the background task would be wasted
            self._ready.set()

    async def answer(self, handle: Callable[[audio_pb2.FrontendMessage], None], msg: audio_pb2.FrontendMessage) -> None:
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


async def _tick(session: AudioSession, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        session.pump()
