"""One display connection's session on the display service.

Messages are handled on the event loop thread in stream order. The register file is an SvgaII whose FIFO
engine is elsewhere: FIFO and VRAM are guest memory, so the shim runs every FIFO pass and reports BUSY and the
interrupt flags it caused (`fifo_done`). In backend mode this register file answers the guest's reads; in
mirrored mode it is a replica fed by the streamed writes. Frames are checked and decoded completely before
anything is written into the desktop copy; the stage presents them and the session acknowledges them.
"""

from __future__ import annotations

import asyncio
import mmap
import time
from collections.abc import Callable

import grpc

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2
from services.common import logs
from services.common.raster import EMPTY
from services.common.sessions import BACKEND, DeviceSession, SessionError
from services.devices import svga_regs as R
from services.devices.svga import Cursor, FifoResult, SnapshotError, SvgaII
from services.devices.svga_convert import cursor_to_proto, registers_from_proto, registers_to_proto
from services.display.desktop import Desktop, FrameError
from services.display.presenters import CursorImage
from services.display.stage import PendingAck, Stage
from services.display.video import VideoStreams

log = logs.get("display.session")
MAX_BAR_SIZE = 256 * 1024 * 1024  # VRAM / FIFO sizes a shim may report


class RemoteFifoSvga(SvgaII):
    """SvgaII whose FIFO passes run at the shim: SYNC and BUSY reads only leave BUSY set until the shim's
    `fifo_done`; CONFIG_DONE does not touch FIFO memory (the shim's engine fills the FIFO registers).

    VRAM and FIFO are anonymous mappings of the guest's BAR sizes, so VRAM_SIZE / MEM_SIZE read right; their
    pages are never touched, so they cost no memory.
    """

    def __init__(self, vram_size: int, fifo_size: int) -> None:
        super().__init__(vram=mmap.mmap(-1, vram_size), fifo=mmap.mmap(-1, fifo_size))
        self.passes_requested = 0

    def _run_pass(self, max_commands: int) -> FifoResult:
        self.passes_requested += 1
        if not (self._config_done and self._enable & R.ENABLE_ENABLE):
            # The shim's engine will not run this pass either (SvgaII's own early out), so no `fifo_done` will
            # come: BUSY clears here, or a backend guest that SYNCs with its display off would wait forever.
            self._busy = False
        return FifoResult()

    def _init_fifo_registers(self) -> None:
        pass

    def fifo_done(self, busy: bool, irq_flags: int) -> None:
        self._busy = busy
        self._irq_status |= irq_flags & R.IRQFLAG_MASK


class DisplaySession(DeviceSession):
    device = "the SVGA II"
    reply = display_pb2.BackendMessage

    def __init__(
        self,
        session_id: str,
        opening: display_pb2.Open,
        stage: Stage,
        send: Callable[[display_pb2.BackendMessage], None],
        peer: str,
        max_frame_bytes: int,
    ) -> None:
        super().__init__(session_id, opening.vm, opening.mode, peer, send)
        self.desktop = Desktop(max_frame_bytes)
        self.video = VideoStreams()
        self.last_frame_id = 0
        self._stage = stage
        self._loop = asyncio.get_running_loop()
        self._cursor: Cursor | None = None
        self._cursor_serial = 0
        self._cursor_pos = (0, 0, False)
        self._closed = False
        vram = opening.vram_size or R.DEFAULT_VRAM_SIZE
        fifo = opening.fifo_size or R.DEFAULT_FIFO_SIZE
        if not (4096 <= vram <= MAX_BAR_SIZE and 4096 <= fifo <= MAX_BAR_SIZE):
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT, f"open: VRAM/FIFO sizes {vram}/{fifo} outside 4 KiB..256 MiB"
            )
        self.model = RemoteFifoSvga(vram, fifo)
        if opening.HasField("registers"):
            try:
                self.model.restore(registers_from_proto(opening.registers))
            except SnapshotError as exc:
                raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"open.registers: {exc}") from exc
            if opening.registers.HasField("cursor"):
                self._cursor = self.model.cursor
                self._cursor_serial += 1

    # ------------------------------------------------------------------ frontend messages
    def handle_device(self, kind: str, msg: display_pb2.FrontendMessage) -> None:
        if kind == "frame":
            self._frame(msg.frame)
        elif kind == "fifo_done":
            self.counters["fifo_passes"] += 1
            self.model.fifo_done(msg.fifo_done.busy, msg.fifo_done.irq_flags)
        else:
            super().handle_device(kind, msg)

    def barrier_ack(self, b: common_pb2.Barrier) -> display_pb2.BarrierAck:
        return display_pb2.BarrierAck(
            seq=b.seq,
            sent_ns=b.sent_ns,
            registers=self.registers(),
            frames_applied=self.counters["frames"],
            last_frame_id=self.last_frame_id,
        )

    def read_register(self, offset: int, size: int) -> int:
        value = self.model.read(offset, size)
        self.model.take_pending()
        return value

    def write_register(self, offset: int, size: int, value: int) -> None:
        res = self.model.write(offset, size, value)
        if res.errors:
            self.counters["register_errors"] += len(res.errors)
            if self.mode == BACKEND:
                self._send(display_pb2.BackendMessage(notice=display_pb2.Notice(message="; ".join(res.errors))))

    def _frame(self, frame: display_pb2.Frame) -> None:
        received = time.monotonic_ns()
        if frame.frame_id <= self.last_frame_id:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"frame id {frame.frame_id} after {self.last_frame_id}: frame ids must increase",
            )
        try:
            if self._mode_differs_proto(frame):
                self.video.reset()  # the streams' pictures go with the old desktop
            prep = self.desktop.prepare(frame, self.video)
        except FrameError as exc:
            self.counters["refused_frames"] += 1
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        for notice in self.video.take_notices():  # dropped video streams: the session goes on
            self._send(display_pb2.BackendMessage(notice=notice))
        damage, mode_changed = self.desktop.apply(prep) if prep.ops or self._mode_differs(prep) else (EMPTY, False)
        self.last_frame_id = frame.frame_id
        cursor = False
        if prep.cursor is not None:
            self._cursor = prep.cursor
            self._cursor_serial += 1
            cursor = True
        if prep.cursor_move is not None and prep.cursor_move != self._cursor_pos:
            self._cursor_pos = prep.cursor_move
            cursor = True
        c = self.counters
        c["frames"] += 1
        c["updates"] += len(frame.updates)
        c["fills"] += prep.fills
        c["copies"] += prep.copies
        c["pixel_rects"] += prep.pixel_rects
        c["bytes_in"] += prep.payload_bytes
        c["decoded_bytes"] += prep.decoded_bytes
        if prep.video_frames or self.video.frames:
            c["video_frames"], c["video_bytes"], c["video_dropped"] = (
                self.video.frames,
                self.video.bytes,
                self.video.dropped,
            )
        applied = time.monotonic_ns()
        ack = PendingAck(frame.frame_id, received, applied, frame.sent_ns)
        self._stage.damaged(self, damage, ack, cursor, mode_changed or frame.full)

    def _mode_differs_proto(self, frame: display_pb2.Frame) -> bool:
        m, pm = self.desktop.mode, frame.mode
        return m is not None and (m.width, m.height, m.bpp) != (pm.width, pm.height, pm.bpp)

    def _mode_differs(self, prep: object) -> bool:
        m = self.desktop.mode
        pm = prep.mode  # type: ignore[attr-defined]
        return m is None or (m.width, m.height, m.bpp) != (pm.width, pm.height, pm.bpp)

    def registers(self) -> display_pb2.SvgaRegisters:
        """The register file, with the cursor image the frames brought (DEFINE_CURSOR runs at the shim)."""
        msg = registers_to_proto(self.model.snapshot())
        if self._cursor is not None:
            msg.cursor.CopyFrom(cursor_to_proto(self._cursor))
        return msg

    # ------------------------------------------------------------------ stage callbacks (stage thread)
    def cursor_image(self) -> CursorImage | None:
        cursor, (x, y, visible) = self._cursor, self._cursor_pos
        if cursor is None:
            return None
        return CursorImage(cursor.width, cursor.height, cursor.hot_x, cursor.hot_y, cursor.argb, x, y, visible,
                           self._cursor_serial)  # fmt: skip

    def palette(self) -> bytes:
        return self.model.palette_rgb() if self.desktop.mode is not None and self.desktop.mode.bpp == 8 else b""

    def acknowledge(self, acks: list[PendingAck], presented_ns: int, presented: bool) -> None:
        msgs = [
            display_pb2.BackendMessage(
                frame_ack=display_pb2.FrameAck(
                    frame_id=a.frame_id,
                    received_ns=a.received_ns,
                    applied_ns=a.applied_ns,
                    presented_ns=presented_ns,
                    presented=presented,
                    sent_ns=a.sent_ns,
                )
            )
            for a in acks
        ]
        if presented:
            self.counters["frames_presented"] += len(acks)
        try:
            self._loop.call_soon_threadsafe(self._send_all, msgs)
        except RuntimeError:  # the loop is closing: the stream is gone anyway
            pass

    def _send_all(self, msgs: list[display_pb2.BackendMessage]) -> None:
        if not self._closed:
            for m in msgs:
                self._send(m)

    def cursor_move(self) -> display_pb2.CursorMove:
        x, y, visible = self._cursor_pos
        return display_pb2.CursorMove(x=x, y=y, visible=visible)

    def stop_acknowledging(self) -> None:
        """The stream is over: acknowledgements the stage still makes go nowhere."""
        self._closed = True
