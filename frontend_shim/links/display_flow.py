"""Per-service flow control of the display link: one `ScreenEnd` per display service, with its session stream
(replaced on reconnect), its frame builder and the sender thread that keeps at most the window the service
granted in `opened` in flight; while the window is full, damage keeps coalescing in the builder. No RPC is
ever made per rectangle. Each service learns its viewport from `opened` and gets only the damage inside it;
after a reconnect it gets the register state in `open` and a full redraw.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Protocol

import grpc

from frontend_shim.links.base import MODES, ServiceEnd
from frontend_shim.links.display_frames import DisplayStats, FrameBuilder
from frontend_shim.links.encoding_policy import EncodingPolicy
from frontend_shim.links.session_stream import SessionStream
from frontend_shim.links.video_streams import VIDEO_IN_FLIGHT, VideoSettings
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import logs
from services.common.raster import Rect
from services.common.video_codec import VIDEO_VERSION
from services.devices.svga import SvgaII
from services.devices.svga_convert import VIDEO_CODEC_NAME, registers_to_proto

log = logs.get("shim.display")
MAX_MESSAGE = 16 * 1024 * 1024


class Screens(Protocol):
    """What a screen's flow control uses of its display link (`DisplayLink`, which imports this module)."""

    mode: str
    lock: threading.RLock
    stopping: threading.Event
    vm: str
    encoding: str
    tile_diff: bool
    video: VideoSettings
    credentials: grpc.ChannelCredentials | None
    model: SvgaII
    stats: DisplayStats
    flushed: threading.Condition
    last_presented_ns: int

    def _received(self, msg: Any) -> None: ...

    def _reply(self, kind: str, body: Any) -> None: ...


class _DisplayServiceStream(SessionStream):
    """One session stream to one display service, with its flow-control window."""

    def __init__(self, slot: ScreenEnd, credentials: grpc.ChannelCredentials | None) -> None:
        super().__init__(slot.target, credentials, slot.link.stats, display_pb2.FrontendMessage, MAX_MESSAGE)
        self.slot = slot
        self.viewport: Rect | None = None
        self.max_in_flight = 4
        self.max_frame_bytes = 64 * 1024 * 1024
        self.in_flight: dict[int, tuple[float, int]] = {}  # frame id -> (perf_counter at send, payload bytes)
        self.video_codecs: list[str] | None = None  # what the service decodes; None: no video there
        self.batch_ends: set[int] = set()  # ids of frames that end a batch
        self.frame_ids = itertools.count(1)
        stub = display_pb2_grpc.DisplayServiceStub(self.channel)
        self.start(stub.Session, slot.dispatch, slot.lost, f"display-rx-{slot.target}")  # type: ignore[arg-type]


class ScreenEnd(ServiceEnd):
    """One display service: its connection (replaced on reconnect), frame builder and sender thread."""

    link: Screens
    conn: _DisplayServiceStream | None

    def __init__(self, link: Screens, target: str, primary: bool) -> None:
        super().__init__(link, target, carries_requests=primary)
        self.primary = primary
        self.builder = FrameBuilder(link.tile_diff, link.video)
        self.policy = EncodingPolicy(link.encoding)
        self.cond = threading.Condition()  # in-flight window and "the builder has work"
        self.kick = False
        self.sending = False  # a batch left the builder and is not yet all in flight

    # ------------------------------------------------------------------ connecting
    def open_stream(self) -> SessionStream:
        link = self.link
        conn = _DisplayServiceStream(self, link.credentials)
        mode = MODES[link.mode] if self.primary else common_pb2.COHERENCE_MODE_MIRRORED
        opening = display_pb2.Open(
            vm=link.vm,
            mode=mode,
            registers=registers_to_proto(link.model.snapshot()),
            vram_size=len(link.model.vram),
            fifo_size=len(link.model.fifo),
        )
        conn.send(display_pb2.FrontendMessage(open=opening))
        return conn

    def opened(self, conn: SessionStream) -> None:
        with self.link.lock:
            self.builder.reset()
            self.builder.viewport = conn.viewport  # type: ignore[attr-defined]
            self.builder.video.configure(conn.video_codecs)  # type: ignore[attr-defined]
        self.wake()

    def dispatch(self, conn: _DisplayServiceStream, msg: display_pb2.BackendMessage) -> None:
        """Runs on the stream's receiving thread (SessionStream)."""
        link = self.link
        link._received(msg)
        kind = msg.WhichOneof("kind")
        if kind == "frame_ack":
            self._acked(conn, msg.frame_ack)
        elif kind == "value" or kind == "barrier_ack":
            link._reply(kind, getattr(msg, kind))
        elif kind == "opened":
            o = msg.opened
            conn.session_id = o.session_id
            v = o.viewport
            conn.viewport = None if v.width == 0 and v.height == 0 else Rect(v.x, v.y, v.width, v.height)
            conn.max_in_flight = max(1, o.max_frames_in_flight or 1)
            if o.max_frame_bytes:
                conn.max_frame_bytes = o.max_frame_bytes
            if o.HasField("video") and o.video.version == VIDEO_VERSION:
                conn.video_codecs = [VIDEO_CODEC_NAME[c] for c in o.video.codecs if c in VIDEO_CODEC_NAME]
            conn.opened.set()
        elif kind == "notice":
            log.info("service notice", extra={"target": self.target, "notice": msg.notice.message})
            if msg.notice.video_stream_id:  # a dropped video stream: its region is refreshed losslessly
                with link.lock:
                    self.builder.video.dropped(msg.notice.video_stream_id)
                self.wake()

    def _acked(self, conn: _DisplayServiceStream, ack: display_pb2.FrameAck) -> None:
        now = time.perf_counter()
        with self.cond:
            sent = conn.in_flight.pop(ack.frame_id, None)
            self.cond.notify_all()
        stats = self.link.stats
        stats.frames_acked += 1
        if ack.frame_id in conn.batch_ends:
            conn.batch_ends.discard(ack.frame_id)
            stats.pictures_presented += 1
        if sent is not None:
            sent_at, nbytes = sent
            service_s = max(0, ack.presented_ns - ack.received_ns) / 1e9
            self.policy.link(nbytes, now - sent_at - service_s)
        if ack.sent_ns and ack.presented_ns:
            stats.latency_ns.append(ack.presented_ns - ack.sent_ns)
        if ack.presented_ns > self.link.last_presented_ns:
            self.link.last_presented_ns = ack.presented_ns
        with self.link.flushed:
            self.link.flushed.notify_all()

    def stream_ended(self, conn: SessionStream) -> None:
        """Frames in flight on a lost stream will never be acknowledged: free the window and wake `flush`."""
        with self.cond:
            conn.in_flight.clear()  # type: ignore[attr-defined]
            self.cond.notify_all()
        with self.link.flushed:
            self.link.flushed.notify_all()

    # ------------------------------------------------------------------ sending frames
    def wake(self) -> None:
        with self.cond:
            self.kick = True
            self.cond.notify_all()

    def idle(self) -> bool:
        """Nothing waiting to be sent and nothing unacknowledged (caller holds the device lock). Damage while the
        guest shows nothing (display disabled, a mode that does not fit VRAM) waits for a mode: nothing to send."""
        conn = self.conn
        model = self.link.model
        showing = model.surface is not None and model.mode.enabled
        if self.sending or (self.builder.dirty and showing):
            return conn is None or not conn.alive
        return conn is None or not conn.alive or not conn.in_flight

    def _window(self, conn: _DisplayServiceStream) -> int:
        """Frames allowed in flight: the service's bound, tighter while video plays (a queue of pictures is
        latency; the damage coalesces instead and the next picture is the newest)."""
        return min(conn.max_in_flight, VIDEO_IN_FLIGHT) if self.builder.video.streams else conn.max_in_flight

    def run_sender(self) -> None:
        link = self.link
        while not link.stopping.is_set():
            with self.cond:
                while not link.stopping.is_set():
                    conn = self.conn
                    if self.kick and conn is not None and conn.alive and len(conn.in_flight) < self._window(conn):
                        break
                    self.cond.wait(0.05)
                self.kick = False
            if link.stopping.is_set():
                return
            with link.lock:
                if not self.builder.dirty:
                    continue
                batch = self.builder.take(link.model, self.policy.link_bps)
                self.sending = batch is not None
            if batch is None:
                continue
            try:
                frames = self.builder.frames(batch, self.policy, conn.frame_ids, link.stats, conn.max_frame_bytes)
            except Exception:  # a bug here must not stop the display: log it and redraw everything next time
                log.exception("building a frame failed", extra={"target": self.target})
                with link.lock:
                    self.builder.full, self.builder.force_all, self.sending = True, True, False
                continue
            for msg, payload in frames:
                with self.cond:
                    while conn.alive and len(conn.in_flight) >= self._window(conn) and not link.stopping.is_set():
                        self.cond.wait(0.05)
                    if not conn.alive:
                        break
                    conn.in_flight[msg.frame.frame_id] = (time.perf_counter(), payload)
                    if msg is frames[-1][0]:
                        conn.batch_ends.add(msg.frame.frame_id)
                conn.send(msg)
                link.stats.frames += 1
            with link.lock:
                self.sending = False
                if self.builder.dirty:
                    self.kick = True
            with link.flushed:
                link.flushed.notify_all()
