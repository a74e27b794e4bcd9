"""The DisplayService gRPC servicer: session streams and the debugging RPCs."""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
from google.protobuf.message import DecodeError

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import logs
from services.common.server import live_info
from services.common.sessions import OpenGate
from services.display import video
from services.display.session import BACKEND, MIRRORED, DisplaySession, SessionError
from services.display.stage import Stage

log = logs.get("display")
FLUSH_TIMEOUT = 2.0  # seconds the last acknowledgements of a cleanly ended session may take to leave
MAX_FRAMES_IN_FLIGHT = 4


class DisplayServicer(display_pb2_grpc.DisplayServiceServicer):
    def __init__(
        self, info: common_pb2.ServiceInfo, stage: Stage, max_frame_bytes: int, gate: OpenGate | None = None
    ) -> None:
        self.info = info
        self.gate = gate or OpenGate()
        self.stage = stage
        self.max_frame_bytes = max_frame_bytes
        self.sessions: dict[str, DisplaySession] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ the device stream
    async def Session(self, request_iterator, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN001
        first = await self.gate.first(request_iterator, context, len(self.sessions))
        if first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with an `open` message")
        if first.open.mode not in (BACKEND, MIRRORED):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "open.mode must be BACKEND or MIRRORED")
        outbox: asyncio.Queue[display_pb2.BackendMessage | None] = asyncio.Queue()
        session_id = f"d{next(self._ids)}"
        try:
            session = DisplaySession(
                session_id, first.open, self.stage, outbox.put_nowait, context.peer(), self.max_frame_bytes
            )
        except SessionError as exc:
            await context.abort(exc.code, str(exc))
        self.sessions[session_id] = session
        v = self.stage.viewport
        opened = display_pb2.Opened(
            session_id=session_id,
            info=self.info,
            viewport=display_pb2.Viewport(x=v.x, y=v.y, width=v.width, height=v.height),
            max_frames_in_flight=MAX_FRAMES_IN_FLIGHT,
            refresh_hz=round(self.stage.refresh_hz),
            max_frame_bytes=self.max_frame_bytes,
            video=video.support(),
        )
        outbox.put_nowait(display_pb2.BackendMessage(opened=opened))  # first in line, before any acknowledgement
        self.stage.attach(session)
        log.info("session opened", extra={"session": session_id, "vm": session.vm, "peer": session.peer})
        writer = asyncio.create_task(_drain(outbox, context))
        error: SessionError | None = None
        clean_end = False
        try:
            async for msg in request_iterator:
                session.handle(msg)
            clean_end = True
        except SessionError as exc:
            error = exc
        except DecodeError as exc:
            error = SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {exc}")
        finally:
            await self.gate.finish(self._close(session, outbox, writer, clean_end))
        if error is not None:
            log.warning("session refused a message", extra={"session": session_id, "error": str(error)})
            await context.abort(error.code, str(error))

    async def _close(self, session: DisplaySession, outbox: asyncio.Queue, writer: asyncio.Task, clean: bool) -> None:
        session.close()
        self.stage.detach(session)
        self.sessions.pop(session.session_id, None)
        outbox.put_nowait(None)
        # Let the writer finish what it is writing (a write cancelled halfway can wedge the call), then stop it.
        _, stuck = await asyncio.wait({writer}, timeout=FLUSH_TIMEOUT if clean else 0.2)
        for task in stuck:  # the shim stopped reading
            task.cancel()
        log.info("session closed", extra={"session": session.session_id, "clean": clean, **dict(session.counters)})

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
                    counters=dict(s.counters),
                )
                for s in self.sessions.values()
            ]
        )

    async def _find(self, session_id: str, context: grpc.aio.ServicerContext) -> DisplaySession:
        if session_id:
            session = self.sessions.get(session_id)
        else:
            current = self.stage.current()
            session = current if isinstance(current, DisplaySession) else None
        if session is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no session {session_id!r}"
                if session_id
                else "no session is on screen" + f"; open sessions: {sorted(self.sessions)}",
            )
        return session

    async def Screenshot(self, request, context: grpc.aio.ServicerContext) -> display_pb2.ScreenshotReply:  # noqa: ANN001
        session = await self._find(request.session_id, context)
        view = self.stage.view_rect(session.desktop)
        if view.empty:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the guest has not set a display mode yet")
        png = await asyncio.to_thread(session.desktop.screenshot_png, view, session.palette())
        return display_pb2.ScreenshotReply(
            png=png,
            width=view.w,
            height=view.h,
            session_id=session.session_id,
            viewport=display_pb2.Viewport(x=view.x, y=view.y, width=view.w, height=view.h),
            last_frame_id=session.last_frame_id,
        )

    async def GetDisplayState(self, request, context: grpc.aio.ServicerContext) -> display_pb2.DisplayState:  # noqa: ANN001
        session = await self._find(request.session_id, context)
        c = session.counters
        age = max(1e-9, time.monotonic() - session.started)
        mode = session.desktop.mode
        view = self.stage.view_rect(session.desktop)
        stats = display_pb2.DisplayStats(
            frames=c["frames"],
            frames_presented=c["frames_presented"],
            presents=self.stage.presents,
            updates=c["updates"],
            fills=c["fills"],
            copies=c["copies"],
            pixel_rects=c["pixel_rects"],
            bytes_in=c["bytes_in"],
            decoded_bytes=c["decoded_bytes"],
            compression_ratio=c["decoded_bytes"] / c["bytes_in"] if c["bytes_in"] else 0.0,
            updates_per_second=c["updates"] / age,
            register_reads=c["register_reads"],
            register_writes=c["register_writes"],
            video_frames=c["video_frames"],
            video_bytes=c["video_bytes"],
            video_dropped=c["video_dropped"],
        )
        return display_pb2.DisplayState(
            session_id=session.session_id,
            vm=session.vm,
            coherence=session.mode,
            mode=display_pb2.FrameMode(
                width=mode.width, height=mode.height, bpp=mode.bpp, pitch=mode.pitch, enabled=mode.enabled
            )
            if mode
            else None,
            viewport=display_pb2.Viewport(x=view.x, y=view.y, width=view.w, height=view.h),
            presenter=self.stage.presenter.name,
            stats=stats,
            registers=session.registers(),
            cursor=session.cursor_move(),
            on_screen=self.stage.on_screen(session),
            refresh_hz=round(self.stage.refresh_hz),
            video_streams=session.video.state(),
        )


async def _drain(outbox: asyncio.Queue, context: grpc.aio.ServicerContext) -> None:
    while (msg := await outbox.get()) is not None:
        await context.write(msg)
