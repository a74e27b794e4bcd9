"""The DisplayService gRPC servicer: session streams and the debugging RPCs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import logs, tls
from services.common.server import live_info
from services.common.sessions import VM_NAME, VM_NAME_RULE, DeviceSession, OpenGate, SessionServicer
from services.display import video
from services.display.session import DisplaySession
from services.display.stage import Stage

log = logs.get("display")
MAX_FRAMES_IN_FLIGHT = 4


class DisplayServicer(SessionServicer, display_pb2_grpc.DisplayServiceServicer):
    id_prefix = "d"
    log = log

    def __init__(
        self, info: common_pb2.ServiceInfo, stage: Stage, max_frame_bytes: int, gate: OpenGate | None = None
    ) -> None:
        super().__init__(info, gate)
        self.stage = stage
        self.max_frame_bytes = max_frame_bytes
        self.sessions: dict[str, DisplaySession] = {}  # type: ignore[assignment]

    # ------------------------------------------------------------------ the device stream
    def open_session(
        self, session_id: str, opening: display_pb2.Open, send: Callable[[display_pb2.BackendMessage], None], peer: str
    ) -> DisplaySession:
        return DisplaySession(session_id, opening, self.stage, send, peer, self.max_frame_bytes)

    def opened(self, session: DeviceSession) -> display_pb2.BackendMessage:
        v = self.stage.viewport
        opened = display_pb2.Opened(
            session_id=session.session_id,
            info=self.info,
            viewport=display_pb2.Viewport(x=v.x, y=v.y, width=v.width, height=v.height),
            max_frames_in_flight=MAX_FRAMES_IN_FLIGHT,
            refresh_hz=round(self.stage.refresh_hz),
            max_frame_bytes=self.max_frame_bytes,
            video=video.support(),
        )
        return display_pb2.BackendMessage(opened=opened)

    def attach(self, session: DeviceSession) -> None:
        self.stage.attach(session)  # type: ignore[arg-type]

    def detach(self, session: DeviceSession) -> None:
        session.stop_acknowledging()  # type: ignore[attr-defined]
        self.stage.detach(session)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ debugging RPCs
    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return live_info(self.info)

    async def _find(self, request, context: grpc.aio.ServicerContext) -> DisplaySession:  # noqa: ANN001
        """The session a debugging request names: by id, by VM name (its newest session), or neither (the focused
        VM's, else the newest); a VM's certificate reaches only its own VM's sessions."""
        session_id, vm, scope = request.session_id, request.vm, tls.vm_scope()
        if vm and not VM_NAME.fullmatch(vm):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{VM_NAME_RULE} (got {vm[:80]!r})")
        session: object = None
        if session_id:
            session = self.sessions.get(session_id)
            if session is not None and vm and session.vm != vm:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"session {session_id!r} belongs to vm {session.vm!r}, not {vm!r}")  # fmt: skip
        else:
            session = self.stage.find(vm or scope)
        if not isinstance(session, DisplaySession):
            names = sorted({s.vm for s in self.sessions.values() if not scope or s.vm == scope})
            what = f"session {session_id!r}" if session_id else f"vm {vm!r}" if vm else "session"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no {what} on this display; open VMs: {', '.join(names) or 'none'}")  # fmt: skip
        if scope and session.vm != scope:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls.not_in_scope(session.vm))
        return session

    async def Screenshot(self, request, context: grpc.aio.ServicerContext) -> display_pb2.ScreenshotReply:  # noqa: ANN001
        session = await self._find(request, context)
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
        session = await self._find(request, context)
        c = session.counters
        age = max(1e-9, time.monotonic() - session.started)
        mode = session.desktop.mode
        view_rect = self.stage.view_rect(session.desktop)
        view = self.stage.state(session)
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
            viewport=display_pb2.Viewport(x=view_rect.x, y=view_rect.y, width=view_rect.w, height=view_rect.h),
            presenter=self.stage.presenter.name,
            stats=stats,
            registers=session.registers(),
            cursor=session.cursor_move(),
            on_screen=view.shown,
            refresh_hz=round(self.stage.refresh_hz),
            video_streams=session.video.state(),
            window_title=view.title,
            focused=view.focused,
            window_hidden=view.hidden,
            connected=view.connected,
        )
