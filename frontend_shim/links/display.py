"""The shim's SVGA II: one guest display card, shown by one or more remote display services.

This is the only place in the shim that talks gRPC for the display. `DisplayLink` implements
`frontend_shim.guests.guest.Device` for BAR0 (the I/O ports). VRAM (BAR1) and FIFO memory (BAR2) are guest memory
that the shim reads directly: buffers handed in by the trap source (bytearrays for the scripted guest, an mmap
from vfio-user later).

Coherence modes, and where the FIFO runs:
- The FIFO and VRAM are guest memory at the shim, so the FIFO engine always runs here: the shim keeps an
  `SvgaII` over the guest's buffers and replays *every* guest register write into it as the write passes by
  (the trap sees it anyway). A SYNC write therefore runs the FIFO pass right here, on the guest's thread, and
  a timer runs passes too (QEMU does on every display refresh). After each pass the shim sends `fifo_done`
  (BUSY and the interrupt flags the pass raised) behind the write that caused it, so the service's register
  file agrees about BUSY before the guest's next read can arrive.
- mirrored (the paper's card 2): that local model also answers the guest's reads; writes are streamed to the
  services, whose replicas follow.
- backend (card 1): the register file lives in the first service; the guest's reads are round trips to it
  (bounded by `access_timeout`; no answer reads as all ones, like a vanished card), writes are posted. The
  local model is then only a FIFO engine: it is never asked for a read and has no register authority.
  This keeps the paper's cost model (reads cross the network) without ever shipping guest memory to the
  service just so it can be sent back as frames.

The link in parts: this file is the device trap (the guest's port accesses, the FIFO passes and their
results); `display_frames.py` turns a pass's effects into frames per service (damage, commands, pixels, tile
diff), `encoding_policy.py` chooses each rectangle's encoding (and whether tile diff pays), and
`display_flow.py` keeps one `ScreenEnd` per service with its stream, its window of frames in flight and its
sender thread; `base.py` has what every link shares (round trips, reconnection, held writes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import grpc

from frontend_shim.links.base import CoherenceMode, DeviceLink, ServiceEnd
from frontend_shim.links.display_flow import ScreenEnd
from frontend_shim.links.display_frames import DisplayStats
from frontend_shim.links.encoding_policy import ENCODINGS
from frontend_shim.links.session_stream import SessionStream
from frontend_shim.links.video_streams import VideoSettings
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2
from services.common import logs
from services.devices import svga_regs as R
from services.devices.svga import AccessError, Buffer, Fence, FifoResult, SvgaII
from services.devices.svga_convert import registers_to_proto

log = logs.get("shim.display")
_REFRESH_PERIOD = 0.016  # seconds between timer-driven FIFO passes
_MAX_PASSES = 64  # passes per SYNC while the device reports it stopped at its per-pass bound

__all__ = ["ENCODINGS", "CoherenceMode", "DisplayLink", "DisplayStats"]


class DisplayLink(DeviceLink):
    """Implements `frontend_shim.guests.guest.Device` for an SVGA II whose screens are remote display services."""

    device = "display"
    stats: DisplayStats

    def __init__(
        self,
        targets: Sequence[str],
        mode: CoherenceMode,
        vram: Buffer,
        fifo: Buffer,
        *,
        vm: str = "vm",
        encoding: str = "auto",
        tile_diff: bool = False,
        access_timeout: float = 0.25,
        refresh_period: float = _REFRESH_PERIOD,
        credentials: grpc.ChannelCredentials | None = None,
        video: VideoSettings | None = None,
    ) -> None:
        super().__init__(mode, display_pb2.FrontendMessage, access_timeout, log)
        if not targets:
            raise ValueError("at least one display service is needed")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        self.vm = vm
        self.encoding = encoding
        self.tile_diff = tile_diff
        self.refresh_period = refresh_period
        self.credentials = credentials
        self.video = video or VideoSettings(mode="off")  # lossy video streams (frontend_shim/links/video_streams.py)
        self.stats = DisplayStats()
        # The FIFO engine over guest memory; in mirrored mode also the register file that answers reads.
        self.model = SvgaII(vram=vram, fifo=fifo)
        self.flushed = threading.Condition()
        self.last_presented_ns = 0  # service CLOCK_MONOTONIC of the latest present acknowledged (same host)
        self.slots = [ScreenEnd(self, t, i == 0) for i, t in enumerate(targets)]
        # Wake the refresh and video timers from their sleep: the FIFO turned on, a video stream started.
        self._fifo_on = threading.Event()
        self._video_on = threading.Event()
        for slot in self.slots:
            slot.builder.video.on_start = self._video_on.set

    # ------------------------------------------------------------------ lifecycle
    def start(self, connect_timeout: float = 5.0, required: bool = True) -> None:
        """Connect to every service and start the background work. A service that cannot be reached raises
        ConnectionError when `required`; otherwise its screen starts offline and the link keeps trying."""
        for slot in self.slots:
            if not slot.connect(connect_timeout):
                if required:
                    self.close(drain=False)
                    raise ConnectionError(f"cannot open a display session at {slot.target}: {slot.last_error}")
                log.warning("display service unreachable, retrying in the background", extra={"target": slot.target})
                self.wake_supervisor.set()
        for slot in self.slots:
            self._spawn(slot.run_sender, f"display-tx-{slot.target}")
        self._spawn(self._supervise, "display-supervisor")
        if self.refresh_period > 0:
            self._spawn(self._refresh, "display-refresh")
        if self.video.mode != "off":
            self._spawn(self._video_timer, "display-video")

    def _request_stream(self) -> SessionStream | None:
        return self.slots[0].conn

    def _ends(self) -> list[ServiceEnd]:
        return list(self.slots)

    def close(self, drain: bool = True, timeout: float = 10.0) -> None:
        if drain:
            for slot in self.slots:  # live video streams end: the services keep an exact last picture
                with self.lock:
                    slot.builder.video.expire(float("inf"))
            self.flush(timeout)
        self.stopping.set()
        self.wake_supervisor.set()
        self._fifo_on.set()
        self._video_on.set()
        for slot in self.slots:
            slot.wake()
            slot.close(drain, timeout)
        self._join(timeout)

    @property
    def connected(self) -> bool:
        return all(s.connected for s in self.slots)

    # ------------------------------------------------------------------ Device interface
    def io_read(self, bar: int, offset: int, size: int) -> int:
        if bar:
            raise AccessError(f"the SVGA II has port I/O on BAR0 only, not BAR{bar}")
        self.stats.reads += 1
        if self.mode == "mirrored":
            with self.lock:
                value = self.model.read(offset, size)
                if self.model.has_pending:  # a BUSY read may have run the FIFO
                    res = self.model.take_pending()
                    if res.ran or res.effects:
                        self._after_pass(res)
            return value
        if size not in (1, 2, 4) or offset < 0 or offset + size > R.IO_BAR_SIZE:
            raise AccessError(f"{size}-byte access at offset {offset} is outside the {R.IO_BAR_SIZE}-byte BAR0")
        return self._read_remote(offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar:
            raise AccessError(f"the SVGA II has port I/O on BAR0 only, not BAR{bar}")
        self.stats.writes += 1
        with self.lock:
            if self.mode == "mirrored" and self.model.reselects(offset, size, value):
                return  # nothing changes here, nor in the services' equal copies: no message
            res = self.model.write(offset, size, value)  # a SYNC write runs the FIFO pass here
            if self.model.fifo_enabled and not self._fifo_on.is_set():
                self._fifo_on.set()
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.post_write(offset, size, value)
            passes = 1
            while res.ran and res.bounded and passes < _MAX_PASSES:
                res.merge(self.model.process_fifo(self.model.sync_max_commands))
                passes += 1
            if res.ran or res.effects or res.errors:
                self._after_pass(res)

    # ------------------------------------------------------------------ FIFO results
    def process_fifo(self) -> FifoResult:
        """One FIFO pass now (what the refresh timer does; QEMU runs one on every display refresh)."""
        with self.lock:
            res = self.model.process_fifo()
            # A pass that found nothing changed nothing the services know (BUSY, interrupt flags): telling them
            # would be a message per refresh period per service while the guest idles.
            if res.commands or res.effects or res.errors:
                self._after_pass(res)
            return res

    def _after_pass(self, res: FifoResult) -> None:
        """Caller holds the lock: tell the services what BUSY says now, hand the effects to the builders."""
        s = self.stats
        if res.ran:
            s.fifo_passes += 1
            s.fifo_commands += res.commands
            flags = R.IRQFLAG_FIFO_PROGRESS if res.commands else 0
            if res.errors:
                flags |= R.IRQFLAG_ERROR
            if any(isinstance(e, Fence) for e in res.effects):
                flags |= R.IRQFLAG_ANY_FENCE
            done = display_pb2.FrontendMessage(
                fifo_done=display_pb2.FifoDone(busy=self.model.busy, irq_flags=flags, commands=res.commands)
            )
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.send(done)
        elif res.errors:
            # A pass refused outright (FIFO registers out of bounds) cleared BUSY and raised the error flag here;
            # the services set BUSY on the SYNC and must hear it cleared. Sending our whole IRQSTATUS is exact: the
            # services only ever hold bits we raised and the guest has not cleared since.
            done = display_pb2.FrontendMessage(
                fifo_done=display_pb2.FifoDone(busy=self.model.busy, irq_flags=self.model.snapshot().irq_status)
            )
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.send(done)
        if res.errors:
            s.fifo_errors += len(res.errors)
            log.info("device refused guest input", extra={"errors": "; ".join(res.errors[:4])})
        if res.effects:
            mode = self.model.mode
            for slot in self.slots:
                slot.builder.add(res.effects, mode, s)
                slot.wake()

    # ------------------------------------------------------------------ measurements and checks
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every service has been sent and has acknowledged (presented) all damage so far."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.wake()
        with self.flushed:
            while True:
                with self.lock:
                    done = all(s.idle() for s in self.slots)
                if done:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.flushed.wait(min(left, 0.02))

    def barrier(self, timeout: float = 5.0) -> display_pb2.BarrierAck | None:
        """Everything sent so far to the first service has been applied there; returns its state then."""
        return self._round_trip("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()), timeout)

    def compare_mirror(
        self, timeout: float = 5.0
    ) -> tuple[display_pb2.SvgaRegisters, display_pb2.SvgaRegisters | None]:
        """(our register file, the first service's) at the same point of its stream; equal in mirrored mode. The
        cursor image reaches the service in frames: compare after `flush` when it matters."""
        with self.lock:  # nothing enters the stream between our snapshot and the barrier
            ours = registers_to_proto(self.model.snapshot())
            seq, waiter = self._post("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()))
        ack = self._wait(seq, waiter, timeout)
        return ours, ack.registers if ack is not None else None  # type: ignore[attr-defined]

    def latencies(self) -> list[int]:
        """Frame latencies in ns: oldest damage in the frame (shim) to presented (service), same host only."""
        return list(self.stats.latency_ns)

    # ------------------------------------------------------------------ internals
    def _sleep_while_idle(self, wake: threading.Event, busy: Callable[[], bool]) -> bool:
        """A timer with nothing to do (not `busy()`) sleeps until `wake` is set (by what makes it busy, or by
        close); True if it slept. `busy` is asked again after the clear: a wake set before that is never lost."""
        if busy():
            return False
        wake.clear()
        if not busy():
            wake.wait()
        return True

    def _refresh(self) -> None:
        """A FIFO pass every refresh period while the FIFO is on (QEMU's display refresh does the same). Until
        the driver turns it on no pass could find anything: sleep until the write that does, so an idle card
        costs no wake-ups (each one can move the vfio-user thread off the guest's CPU: README, hot path)."""
        while not self.stopping.is_set():
            if self._sleep_while_idle(self._fifo_on, lambda: self.model.fifo_enabled):
                continue
            if self.stopping.wait(self.refresh_period):
                return
            self.process_fifo()

    def _video_timer(self) -> None:
        """Video streams that stopped changing end, and their regions get the lossless refresh: checked every
        50 ms, or sooner when a stream's still time runs out before that; asleep while no stream plays."""
        wait = 0.05
        while not self.stopping.is_set():
            if self._sleep_while_idle(self._video_on, lambda: any(slot.builder.video.streams for slot in self.slots)):
                continue
            if self.stopping.wait(wait):
                return
            now = time.monotonic()
            wait = 0.05
            for slot in self.slots:
                with self.lock:
                    ended = slot.builder.video.expire(now)
                    wait = min(wait, slot.builder.video.next_still(now))
                if ended:
                    slot.wake()
            wait = max(0.005, wait)

    def video_state(self) -> list[dict[str, object]]:
        """Per service: codec, live streams, frames and bytes encoded."""
        with self.lock:
            return [slot.builder.video.as_dict() for slot in self.slots]
