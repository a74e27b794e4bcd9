"""The InputService gRPC servicer: the hub's doors (Subscribe, Publish, Inject, focus) and debugging RPCs."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common import logs, tls
from services.common.server import live_info
from services.common.sessions import DEFAULT_MAX_SESSIONS, VM_NAME, VM_NAME_RULE
from services.input.hub import Hub, NoTarget

log = logs.get("input")
MAX_INJECT = 4096  # events per Inject call


@dataclass(eq=False)
class Source:
    """A publishing stream or a built-in source (evdev), as ListSessions shows it."""

    session_id: str
    name: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    counters: Counter[str] = field(default_factory=Counter)
    seq: itertools.count = field(default_factory=lambda: itertools.count(1))


class InputServicer(input_pb2_grpc.InputServiceServicer):
    def __init__(self, hub: Hub, info: common_pb2.ServiceInfo, max_streams: int = DEFAULT_MAX_SESSIONS) -> None:
        self.hub = hub
        self.info = info
        # Publish and Subscribe streams may idle for hours (a still mouse), so they cannot be timed out; they are
        # counted instead, so idle or hostile streams can never take all of the server's RPC slots.
        self.max_streams = max_streams
        self.sources: dict[str, Source] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ sources inside the process (evdev)
    def add_source(self, name: str, peer: str = "local") -> Source:
        src = Source(f"src-{next(self._ids)}", name, peer)
        self.sources[src.session_id] = src
        return src

    def remove_source(self, src: Source) -> None:
        self.sources.pop(src.session_id, None)

    def feed(self, src: Source, event: input_pb2.InputEvent) -> None:
        """Deliver one event from a built-in source; invalid or unroutable events are counted, not raised."""
        src.counters["received"] += 1
        try:
            if ev.check(event):
                src.counters["clamped"] += 1
        except ev.InvalidEvent as exc:
            src.counters["invalid"] += 1
            log.warning("source produced an invalid event", extra={"source": src.name, "error": str(exc)})
            return
        ev.stamp(event, src.name, next(src.seq))
        self._route(src, event)

    def _route(self, src: Source, event: input_pb2.InputEvent) -> None:
        """One source event: a focus move, or an event for the focused VM (one naming another VM is dropped)."""
        if event.WhichOneof("kind") == "focus":
            src.counters["focus_moves" if self.hub.request_focus(event.focus.vm) else "focus_refused"] += 1
            return
        try:
            d = self.hub.deliver_focused(event)
        except NoTarget:
            src.counters["unrouted"] += 1
            return
        if not d.vm:
            src.counters["unfocused"] += 1
        src.counters["delivered"] += d.delivered
        src.counters["dropped"] += d.dropped

    # ------------------------------------------------------------------ subscribers
    async def Subscribe(
        self, request: input_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[input_pb2.InputEvent]:
        vm = request.vm
        if not VM_NAME.fullmatch(vm):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{VM_NAME_RULE} (got {vm!r})")
        await self._in_scope(vm, context)
        if vm not in self.hub.subscribers and len(self.hub.subscribers) >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(self.hub.subscribers)} VMs are subscribed (the maximum)"
            )
        sub = self.hub.subscribe(vm, context.peer())
        try:
            await context.send_initial_metadata((("rdv-focus", self.hub.focused()),))
            while True:
                await sub.wake.wait()
                if sub.ended:
                    break
                for event in sub.take():
                    yield event
        finally:  # the shim cancelled, vanished or was replaced
            self.hub.unsubscribe(sub)
        await context.abort(grpc.StatusCode.ABORTED, sub.ended)

    # ------------------------------------------------------------------ sources over gRPC
    async def Publish(
        self, request_iterator: AsyncIterator[input_pb2.InputEvent], context: grpc.aio.ServicerContext
    ) -> input_pb2.PublishSummary:
        if len(self.sources) >= self.max_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(self.sources)} sources are publishing (the maximum)"
            )
        src = self.add_source(f"publish:{context.peer()}", context.peer())
        log.info("source connected", extra={"session": src.session_id, "peer": src.peer})
        error, denied, scope = "", False, tls.vm_scope()
        try:
            async for event in request_iterator:
                src.counters["received"] += 1
                try:
                    if ev.check(event):
                        src.counters["clamped"] += 1
                except ev.InvalidEvent as exc:
                    error = f"event {src.counters['received']} (seq {event.seq}): {exc}"
                    break
                other = event.vm if event.vm not in ("", scope) else event.focus.vm
                if scope and other not in ("", scope):
                    error = f"event {src.counters['received']}: {tls.not_in_scope(other)}"
                    denied = True
                    break
                if scope and event.WhichOneof("kind") != "focus":
                    event.vm = scope  # a VM's certificate reaches its own VM only, and only while it has the focus
                ev.stamp(event, src.name, next(src.seq))
                if event.source != src.name and src.name.startswith("publish:"):
                    src.name = event.source  # the source named itself
                self._route(src, event)
        except DecodeError as exc:
            error = f"malformed message: {exc}"
        finally:
            self.remove_source(src)
            log.info("source ended", extra={"session": src.session_id, "source": src.name, **dict(src.counters)})
        if error:
            code = grpc.StatusCode.PERMISSION_DENIED if denied else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, error)
        c = src.counters
        return input_pb2.PublishSummary(
            received=c["received"], delivered=c["delivered"], unrouted=c["unrouted"], dropped=c["dropped"],
            clamped=c["clamped"],
        )  # fmt: skip

    async def Inject(
        self, request: input_pb2.InjectRequest, context: grpc.aio.ServicerContext
    ) -> input_pb2.InjectResponse:
        if not request.events:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events is empty")
        if len(request.events) > MAX_INJECT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_INJECT} events per call")
        source = request.source or "inject"
        if len(source) > ev.MAX_SOURCE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"source longer than {ev.MAX_SOURCE} characters")
        scope = tls.vm_scope()
        if scope:
            await self._in_scope(request.vm, context)
            request.vm = scope  # a VM's certificate injects into its own VM only
        clamped = 0
        for i, event in enumerate(request.events):
            try:
                clamped += ev.check(event)
            except ev.InvalidEvent as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"events[{i}]: {exc}")
            if event.WhichOneof("kind") == "focus":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"events[{i}]: focus moves with SetFocus")
        for i, event in enumerate(request.events, 1):
            ev.stamp(event, source, i)
        try:
            d = self.hub.deliver(request.events, request.vm)
        except NoTarget as exc:
            code = grpc.StatusCode.NOT_FOUND if request.vm else grpc.StatusCode.FAILED_PRECONDITION
            await context.abort(code, str(exc))
        log.info("injected", extra={"vm": d.vm, "events": d.delivered, "dropped": d.dropped, "source": source})
        return input_pb2.InjectResponse(vm=d.vm, delivered=d.delivered, dropped=d.dropped, clamped=clamped)

    # ------------------------------------------------------------------ focus
    async def SetFocus(
        self, request: input_pb2.SetFocusRequest, context: grpc.aio.ServicerContext
    ) -> input_pb2.FocusState:
        scope = tls.vm_scope()
        if scope and request.vm != scope:
            await self._in_scope(request.vm or "(every VM)", context)
        if request.vm and not VM_NAME.fullmatch(request.vm):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{VM_NAME_RULE} (got {request.vm[:80]!r})")
        try:
            self.hub.set_focus(request.vm)
        except NoTarget as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return self._focus_state()

    async def GetFocus(
        self, request: input_pb2.GetFocusRequest, context: grpc.aio.ServicerContext
    ) -> input_pb2.FocusState:
        return self._focus_state()

    async def WatchFocus(
        self, request: input_pb2.GetFocusRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[input_pb2.FocusState]:
        if len(self.hub.watchers) >= self.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{len(self.hub.watchers)} focus watchers")
        wake = asyncio.Event()
        self.hub.watchers.add(wake)
        try:
            while True:
                wake.clear()
                yield self._focus_state()
                await wake.wait()
        finally:
            self.hub.watchers.discard(wake)

    def _focus_state(self) -> input_pb2.FocusState:
        """The focus; a VM's certificate learns only whether its own VM has it."""
        state, scope = self.hub.focus_state(), tls.vm_scope()
        if scope:
            focused, subscribed = state.focused == scope, scope in state.subscribed
            return input_pb2.FocusState(focused=scope if focused else "", chosen=state.chosen if focused else "",
                                        subscribed=[scope] if subscribed else [], rule=state.rule)  # fmt: skip
        return state

    @staticmethod
    async def _in_scope(vm: str, context: grpc.aio.ServicerContext) -> None:
        scope = tls.vm_scope()
        if scope and vm and vm != scope:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, tls.not_in_scope(vm))

    # ------------------------------------------------------------------ debugging RPCs
    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return live_info(self.info)

    async def ListSessions(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:  # noqa: ANN001
        now = time.monotonic()
        focused, scope = self.hub.focused(), tls.vm_scope()
        sessions = [
            common_pb2.SessionInfo(
                session_id=s.session_id,
                vm=s.vm,
                peer=s.peer,
                age_seconds=now - s.started,
                counters={**s.counters, "pending": len(s.queue), "focused": int(s.vm == focused)},
            )
            for s in self.hub.subscribers.values()
            if not scope or s.vm == scope
        ]
        sessions += [
            common_pb2.SessionInfo(
                session_id=s.session_id,
                peer=f"{s.name} ({s.peer})",
                age_seconds=now - s.started,
                counters=dict(s.counters),
            )  # fmt: skip
            for s in self.sources.values()
            if not scope
        ]
        return common_pb2.ListSessionsResponse(sessions=sessions)
