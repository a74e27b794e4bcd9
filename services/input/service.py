"""The InputService gRPC servicer: the hub's doors (Subscribe, Publish, Inject, focus) and debugging RPCs."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common import logs
from services.common.server import live_info
from services.common.sessions import DEFAULT_MAX_SESSIONS
from services.input.hub import Hub, NoTarget

log = logs.get("input")
MAX_INJECT = 4096  # events per Inject call
_VM_NAME = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII without spaces: it appears in logs and headers


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
        self._route(src, [event])

    def _route(self, src: Source, events: list[input_pb2.InputEvent]) -> None:
        try:
            d = self.hub.deliver(events)
        except NoTarget:
            src.counters["unrouted"] += len(events)
            return
        src.counters["delivered"] += d.delivered
        src.counters["dropped"] += d.dropped

    # ------------------------------------------------------------------ subscribers
    async def Subscribe(
        self, request: input_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[input_pb2.InputEvent]:
        vm = request.vm
        if not _VM_NAME.fullmatch(vm):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "vm must be 1-64 printable ASCII characters without spaces"
            )
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
        error = ""
        try:
            async for event in request_iterator:
                src.counters["received"] += 1
                try:
                    if ev.check(event):
                        src.counters["clamped"] += 1
                except ev.InvalidEvent as exc:
                    error = f"event {src.counters['received']} (seq {event.seq}): {exc}"
                    break
                ev.stamp(event, src.name, next(src.seq))
                if event.source != src.name and src.name.startswith("publish:"):
                    src.name = event.source  # the source named itself
                self._route(src, [event])
        except DecodeError as exc:
            error = f"malformed message: {exc}"
        finally:
            self.remove_source(src)
            log.info("source ended", extra={"session": src.session_id, "source": src.name, **dict(src.counters)})
        if error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
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
        clamped = 0
        for i, event in enumerate(request.events):
            try:
                clamped += ev.check(event)
            except ev.InvalidEvent as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"events[{i}]: {exc}")
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
        try:
            self.hub.set_focus(request.vm)
        except NoTarget as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return self.hub.focus_state()

    async def GetFocus(
        self, request: input_pb2.GetFocusRequest, context: grpc.aio.ServicerContext
    ) -> input_pb2.FocusState:
        return self.hub.focus_state()

    # ------------------------------------------------------------------ debugging RPCs
    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return live_info(self.info)

    async def ListSessions(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:  # noqa: ANN001
        now = time.monotonic()
        focused = self.hub.focused()
        sessions = [
            common_pb2.SessionInfo(
                session_id=s.session_id,
                vm=s.vm,
                peer=s.peer,
                age_seconds=now - s.started,
                counters={**s.counters, "pending": len(s.queue), "focused": int(s.vm == focused)},
            )
            for s in self.hub.subscribers.values()
        ]
        sessions += [
            common_pb2.SessionInfo(
                session_id=s.session_id,
                peer=f"{s.name} ({s.peer})",
                age_seconds=now - s.started,
                counters=dict(s.counters),
            )  # fmt: skip
            for s in self.sources.values()
        ]
        return common_pb2.ListSessionsResponse(sessions=sessions)
