"""The shim's ES1370: one guest sound card, served by a remote audio service.

This is the only place in the shim that talks gRPC for audio. It owns the session stream, the coherence
mode, sequencing, DMA pacing and reconnection:

- backend mode (paper's remote card 1): the service holds the only device state. Reads wait for the reply
  (bounded by `access_timeout`; a dead service reads as all ones, like a vanished PCI device), writes are
  posted, interrupts arrive as events, and the service pulls PCM out of guest memory with DMA requests.
- mirrored mode (card 2): the shim holds a full copy. Reads are answered here, writes are applied here and
  streamed, and the DMA engine runs here, pushing PCM. The service replays the same writes and DMA steps on its
  copy; on reconnect the shim sends its whole state so the copies are equal again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from frontend_shim.guests.guest import GuestMemory, GuestMemoryBusy, GuestMemoryError, InterruptLine
from frontend_shim.links.base import MODES, CoherenceMode, DeviceLink, LinkStats, ServiceEnd
from frontend_shim.links.ordered_dma import OrderedDma
from frontend_shim.links.session_stream import SessionStream
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common import logs
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.capture_pacing import CaptureQueue, adc_credit, adc_room
from services.devices.dma import DmaCredit
from services.devices.es1370 import AccessError, Es1370, PcmFormat, check_access
from services.devices.es1370_convert import state_to_proto

log = logs.get("shim.audio")
_PACER_PERIOD = 0.005  # device seconds between DMA checks when nothing else wakes the pacer
_DMA_REGISTERS = frozenset((R.CONTROL, R.SERIAL_CONTROL))  # writes that can let the DMA move
_CHANNELS = (R.DAC1, R.DAC2, R.ADC)
_MAX_WINDOWS = 64  # DMA windows stepped per channel and pacer pass (a sane ring needs one or two)
_MAX_CHUNK = 128 * 1024  # PCM bytes per message, far below the service's limit


@dataclass
class AudioStats(LinkStats):
    interrupts: int = 0
    pcm_bytes: int = 0
    dma_requests: int = 0
    dma_errors: int = 0
    dma_deferred: int = 0  # DMA over messages that waited while QEMU waited for a reply of ours (then retried)
    capture_bytes: int = 0  # recorded audio written into the guest's ring
    played: dict[int, int] = field(default_factory=dict)
    # per channel, as the service reports them: playback underruns, and (backend mode) late DMA
    underruns: dict[int, int] = field(default_factory=dict)
    late_dma: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        d = super().as_dict()
        for name in ("played", "underruns", "late_dma"):
            d["bytes_played" if name == "played" else name] = sum(getattr(self, name).values())
        return d


class _AudioServiceStream(SessionStream):
    """The ES1370's session stream."""

    def __init__(self, link: AudioLink, target: str, credentials: grpc.ChannelCredentials | None) -> None:
        super().__init__(target, credentials, link.stats, audio_pb2.FrontendMessage, on_sent=link._sent)
        self.link = link
        stub = audio_pb2_grpc.AudioServiceStub(self.channel)
        self.start(stub.Session, link._dispatch, link._end.lost, "audio-link-rx")  # type: ignore[arg-type]


class _AudioService(ServiceEnd):
    """The audio service: its session stream, opened with the mirrored state."""

    link: AudioLink

    def open_stream(self) -> SessionStream:
        link = self.link
        conn = _AudioServiceStream(link, self.target, link._credentials)
        opening = audio_pb2.Open(vm=link.vm, mode=MODES[link.mode])
        if link.model is not None:
            opening.state.CopyFrom(state_to_proto(link.model.state))
            link._follow_adc(restart=True)  # the new session records afresh
        conn.send(audio_pb2.FrontendMessage(open=opening))
        for channel in (R.DAC1, R.DAC2):  # the count goes on across reconnects
            link._late_before[channel] += link._credit.late(channel)
        link._credit = DmaCredit(link.clock, lead=link._credit.lead)
        return conn

    def stream_ended(self, conn: SessionStream) -> None:
        if conn is self.conn and self.link.model is None:
            self.link.irq.set_level(False)  # backend mode: the card is gone, and a card that is gone asserts nothing


class AudioLink(DeviceLink):
    """Implements `frontend_shim.guests.guest.Device` for an ES1370 whose back end is a remote audio service."""

    device = "audio"

    def __init__(
        self,
        target: str,
        mode: CoherenceMode,
        memory: GuestMemory,
        irq: InterruptLine,
        *,
        vm: str = "vm",
        clock: Clock | None = None,
        access_timeout: float = 0.05,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(mode, audio_pb2.FrontendMessage, access_timeout, log)
        self.target = target
        self.memory = memory
        self.irq = irq
        self.vm = vm
        self.clock = clock or Clock()
        self.stats = AudioStats()
        self.model = Es1370() if mode == "mirrored" else None
        self._credentials = credentials
        self._credit = DmaCredit(self.clock, lead=0.1)
        self._late_before = [0, 0, 0]  # late DMA counted by the credits of earlier connections
        self._end = _AudioService(self, target, carries_requests=True)
        self._irq_level = False
        self._kick = threading.Event()  # pacer: DMA may be possible
        self.last_interrupt_sent_ns = 0  # backend mode: when the service raised the latest interrupt
        self._dma_failing = False  # guest memory was unreadable at the last DMA attempt
        self.capture_info = audio_pb2.CaptureSourceInfo()  # what the service records from (set when opened)
        # Capture latency (ns): the source delivered a chunk at the service -> its first byte is in guest memory.
        self.capture_latency_ns: deque[int] = deque(maxlen=4096)
        # Mirrored mode's ADC: the capture jitter buffer, and the format of the capture it is for.
        self._capture = CaptureQueue(self.clock, latency=0.04)
        self._adc_credit = adc_credit(self.clock)
        self._adc_fmt: PcmFormat | None = None
        self._capture_accepting = False  # the service's first chunk of the current capture has arrived
        self._ordered = OrderedDma(self._dma_failed)  # backend mode: DMA writes and interrupts, in stream order

    # ------------------------------------------------------------------ lifecycle
    def start(self, connect_timeout: float = 5.0, required: bool = True) -> None:
        """Connect and start background work. A service that cannot be reached raises ConnectionError when
        `required`; otherwise the link starts offline and keeps trying, as after a lost session."""
        if not self._end.connect(connect_timeout):
            if required:
                raise ConnectionError(f"cannot open an audio session at {self.target}")
            log.warning("audio service unreachable, retrying in the background", extra={"target": self.target})
            self._end.offline_since = time.monotonic()
            self.wake_supervisor.set()
        self._spawn(self._supervise, "audio-link-supervisor")
        if self.mode == "mirrored":
            self._spawn(self._pace, "audio-link-pacer")

    @property
    def _conn(self) -> SessionStream | None:
        return self._end.conn

    def _request_stream(self) -> SessionStream | None:
        return self._end.conn

    def _ends(self) -> list[ServiceEnd]:
        return [self._end]

    def _reconnected(self, end: ServiceEnd) -> None:
        self._kick.set()

    def wait_played(self, timeout: float) -> bool:
        """Wait until the service has played every PCM byte it took so far."""
        deadline = time.monotonic() + timeout
        ack = self.barrier(timeout)
        if ack is None:
            return False
        while time.monotonic() < deadline and self.connected:
            if all(self.stats.played.get(c, 0) >= n for c, n in enumerate(ack.bytes_received)):
                return True
            time.sleep(0.005)
        return False

    def close(self, drain: bool = True, timeout: float = 10.0) -> None:
        """End the session; with `drain`, return once the remote side has played everything."""
        if drain and self._conn is not None:
            self.wait_played(timeout)
        self.stopping.set()
        self.wake_supervisor.set()
        self._kick.set()
        self._end.close(drain, timeout)
        self._join(timeout)
        self._ordered.close()

    @property
    def connected(self) -> bool:
        """A session is open (not merely being opened) on a live stream."""
        return self._end.connected

    # ------------------------------------------------------------------ Device interface
    def io_read(self, bar: int, offset: int, size: int) -> int:
        if bar:
            raise AccessError(f"the ES1370 has no BAR {bar}")
        self.stats.reads += 1
        if self.model is not None:
            if offset < R.PAGE_WINDOW:
                # No lock: every register is one field, so a read racing the DMA engine sees the value before or
                # after a DMA step, as on the chip.
                return self.model.read(offset, size)
            with self.lock:  # a DMA position: the pacer's step (memory read and commit) is wholly before or after
                value = self.model.read(offset, size)
                channel = self.model.position_channel(offset)
                if channel is not None:
                    self._credit.position_read(self.model, channel)
                return value
        check_access(offset, size)
        return self._read_remote(offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar:
            raise AccessError(f"the ES1370 has no BAR {bar}")
        self.stats.writes += 1
        if self.model is None:
            check_access(offset, size)
            conn = self._conn
            if conn is not None:
                conn.post_write(offset, size, value)
            return
        with self.lock:
            # A write that changed nothing here changes nothing at the service either (same model, same state):
            # leave it out. Linux's pointer reads rewrite MEMPAGE with the value it already has, for instance.
            conn = self._conn
            if self.model.write(offset, size, value) and conn is not None:
                conn.post_write(offset, size, value)
            if offset in _DMA_REGISTERS or offset >= R.PAGE_WINDOW:
                self._credit.follow(self.model)  # a stop, a new ring, a restart
            if self.model.irq != self._irq_level:
                self._update_irq()
            if offset & ~3 in _DMA_REGISTERS:
                self._follow_adc()
        if offset in _DMA_REGISTERS:
            self._kick.set()  # the guest may have started a DAC or acknowledged a period

    # ------------------------------------------------------------------ measurements and checks
    def barrier(self, timeout: float = 5.0) -> audio_pb2.BarrierAck | None:
        """Everything sent so far has been applied by the service; returns its state at that point."""
        return self._round_trip("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()), timeout)

    def compare_mirror(self, timeout: float = 5.0) -> tuple[audio_pb2.Es1370State, audio_pb2.Es1370State | None]:
        """Mirrored mode: (our state, the service's state) at the same point of the stream."""
        if self.model is None:
            raise RuntimeError("only a mirrored link holds a copy of the device")
        with self.lock:  # nothing enters the stream between our snapshot and the barrier
            ours = state_to_proto(self.model.state)
            seq, waiter = self._post("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()))
        ack = self._wait(seq, waiter, timeout)
        return ours, ack.state if ack is not None else None

    # ------------------------------------------------------------------ internals
    def _sent(self, msg: audio_pb2.FrontendMessage, wire_bytes: int) -> None:
        """Runs as each message leaves, on the thread that sends it (a hook for meters)."""

    def _send(self, msg: audio_pb2.FrontendMessage) -> None:
        conn = self._conn
        if conn is not None:
            conn.send(msg)

    def _update_irq(self) -> None:
        """Mirrored mode: drive the guest's line from the local model (caller holds the lock)."""
        level = self.model.irq  # type: ignore[union-attr]
        if level != self._irq_level:
            self._irq_level = level
            if level:
                self.stats.interrupts += 1
            self.irq.set_level(level)

    def _follow_adc(self, restart: bool = False) -> None:
        """Mirrored mode, under the lock: the guest started, stopped or reformatted its ADC (or the session is
        new): whatever was queued belongs to the old capture, and chunks still in flight from it are dropped
        until the service's first chunk of the new one."""
        model = self.model
        assert model is not None
        fmt = model.channel_format(R.ADC) if model.channel_running(R.ADC) else None
        if fmt == self._adc_fmt and not restart:
            return
        self._adc_fmt = fmt
        self._capture_accepting = False
        if fmt is None:
            self._capture.stop()
        else:
            self._capture.start(fmt)

    def _captured(self, c: audio_pb2.CaptureData) -> None:
        """Mirrored mode: recorded audio from the service, into the jitter buffer (receiving thread)."""
        with self.lock:
            if c.start and self._adc_fmt is not None:
                self._capture.start(self._adc_fmt)
                self._capture_accepting = True
            if self._capture_accepting and c.channel == R.ADC:
                self._capture.push(c.data, c.captured_ns)
        self._kick.set()

    def _interrupt(self, i: audio_pb2.Interrupt) -> None:
        """Backend mode: the service's line."""
        if i.level:
            self.stats.interrupts += 1
            self.last_interrupt_sent_ns = i.sent_ns
        self.irq.set_level(i.level)

    def _dma_write(self, conn: _AudioServiceStream, w: audio_pb2.DmaWrite) -> None:
        """Backend mode: the service's ADC writes recorded audio into guest memory (through `_ordered`: a
        GuestMemoryError makes it wait and retry), then hears that it is there."""
        self.memory.write(w.addr, w.data)
        self._dma_failing = False
        self._dma_written(conn, w, ok=True)
        self.stats.capture_bytes += len(w.data)
        if w.captured_ns:
            self.capture_latency_ns.append(time.monotonic_ns() - w.captured_ns)

    def _dma_written(self, conn: _AudioServiceStream, w: audio_pb2.DmaWrite, ok: bool) -> None:
        conn.send(audio_pb2.FrontendMessage(dma_written=audio_pb2.DmaWritten(request_id=w.request_id, ok=ok)))

    def _dispatch(self, conn: _AudioServiceStream, msg: audio_pb2.BackendMessage) -> None:
        """Runs on the stream's receiving thread (SessionStream)."""
        self._received(msg)
        kind = msg.WhichOneof("kind")
        if kind == "value" or kind == "barrier_ack":
            self._reply(kind, getattr(msg, kind))
        elif kind == "interrupt":
            i = msg.interrupt
            self._ordered.submit(lambda: self._interrupt(i))  # after a DMA read still waiting: the card read first
        elif kind == "dma_request":
            req = msg.dma_request
            self.stats.dma_requests += 1
            self._ordered.submit(lambda: self._serve_dma(conn, req), lambda: self._dma_unread(conn, req))
        elif kind == "dma_write":
            w = msg.dma_write
            self._ordered.submit(lambda: self._dma_write(conn, w), lambda: self._dma_written(conn, w, ok=False))
        elif kind == "capture" and conn is self._conn and self.model is not None:
            self._captured(msg.capture)
        elif kind == "position" and conn is self._conn:
            p = msg.position
            self._credit.played(p.channel, p.bytes_played)
            self.stats.underruns[p.channel] = p.underruns
            if self.model is None:
                self.stats.late_dma[p.channel] = p.late_dma
            self.stats.played[p.channel] = p.bytes_played
            self._kick.set()
        elif kind == "opened":
            conn.session_id = msg.opened.session_id
            if msg.opened.lead_ms:
                self._credit.lead = msg.opened.lead_ms / 1000
            self.capture_info = msg.opened.capture
            self._capture.latency = msg.opened.capture.latency_ms / 1000
            conn.opened.set()

    def _serve_dma(self, conn: _AudioServiceStream, req: audio_pb2.DmaRequest) -> None:
        """Read guest memory for the service (through `_ordered`: a read QEMU cannot serve just now, over DMA
        messages, is retried, and the interrupts after it wait). The read and its reply enter the stream under the
        lock that guest reads are sent under, so a DMA that took a slot before the guest refilled it reaches the
        service before the guest's next position read: the position the guest sees then tells it (an xrun)."""
        with self.lock:
            data = b"".join(self.memory.read(seg.addr, seg.length) for seg in req.segments)
            self._dma_failing = False
            self.stats.pcm_bytes += len(data)
            reply = audio_pb2.DmaData(request_id=req.request_id, data=data, ok=True)
            conn.send(audio_pb2.FrontendMessage(dma_data=reply))

    def _dma_unread(self, conn: _AudioServiceStream, req: audio_pb2.DmaRequest) -> None:
        """Guest memory stayed unreadable (the VM is gone): the card took nothing it can play."""
        conn.send(audio_pb2.FrontendMessage(dma_data=audio_pb2.DmaData(request_id=req.request_id, ok=False)))

    def _dma_failed(self, exc: GuestMemoryError) -> None:
        """The DMA engine retries every few ms while guest memory is unreachable (e.g. the VM is gone): warn
        once per outage, not once per retry. DMA that waits while QEMU waits for us is no outage."""
        if isinstance(exc, GuestMemoryBusy):
            self.stats.dma_deferred += 1
            log.debug("DMA waits: the client is busy", extra={"error": str(exc)})
            return
        self.stats.dma_errors += 1
        if self._dma_failing:
            log.debug("DMA outside guest memory", extra={"error": str(exc)})
        else:
            self._dma_failing = True
            log.warning("DMA outside guest memory (repeats logged at debug level)", extra={"error": str(exc)})

    def _pace(self) -> None:
        """Mirrored mode's DMA engine: move PCM from guest memory to the service as playback makes room. While no
        DMA channel runs it sleeps until kicked (a CONTROL or SERIAL_CONTROL write kicks it after changing the
        model, so the start is never missed): an idle card costs no wake-ups, which on a 2-core node also kept
        moving the vfio-user thread away from the guest's CPU (README, hot path)."""
        model = self.model
        assert model is not None
        last = self.clock.now()
        while not self.stopping.is_set():
            busy = any(model.channel_running(c) for c in _CHANNELS)
            self._kick.wait(self.clock.real_seconds(_PACER_PERIOD) if busy else None)
            self._kick.clear()
            now = self.clock.now()
            with self.lock:
                if not self.connected:
                    self._play_offline(now - last)
                for channel in (R.DAC1, R.DAC2):
                    self._run_channel(channel)
                self._run_capture()
            last = now

    def _run_channel(self, channel: int) -> None:
        """Move what playback has room for, as one PCM chunk. A guest may program a ring of a few bytes at
        hundreds of kHz: one message per DMA window would flood the link and the service (every session there
        shares one event loop), and stepping the model unboundedly would hold the lock against the guest. So
        windows are coalesced (the service replays a chunk window by window: both copies take the same steps)
        and at most _MAX_WINDOWS are stepped per pass; such a guest then sees a card slower than its rate."""
        model = self.model
        assert model is not None
        chunk = bytearray()
        for _ in range(_MAX_WINDOWS):
            room = min(self._credit.room(model, channel), _MAX_CHUNK - len(chunk))
            addr, length = model.dma_window(channel, room) if room > 0 else (0, 0)
            if not length:
                break
            try:
                data = self.memory.read(addr, length)
            except GuestMemoryError as exc:
                self._dma_failed(exc)
                break
            self._dma_failing = False
            self._credit.commit(model, channel, length)
            self.stats.pcm_bytes += length
            chunk += data
            self._update_irq()
        if chunk:
            late = self._credit.late(channel) + self._late_before[channel]
            self.stats.late_dma[channel] = late
            msg = audio_pb2.PcmChunk(channel=channel, data=bytes(chunk), sent_ns=time.monotonic_ns(), late_dma=late)
            self._send(audio_pb2.FrontendMessage(pcm=msg))

    def _run_capture(self) -> None:
        """Mirrored mode's ADC: write what the jitter buffer releases into the guest's ring (caller holds the
        lock), then tell the service the steps taken, coalesced like playback's chunks."""
        model = self.model
        assert model is not None
        written = 0
        for _ in range(_MAX_WINDOWS):
            room = adc_room(self._adc_credit, model, self._capture)
            addr, length = model.dma_window(R.ADC, room) if room > 0 else (0, 0)
            if not length:
                break
            data, captured_ns = self._capture.take(length)
            try:
                self.memory.write(addr, data)
            except GuestMemoryError as exc:
                # Not now (e.g. QEMU waits for our reply and serves no DMA_WRITE): the audio goes back to the head
                # of the jitter buffer and the ADC does not move, so both copies stay equal; the next pass retries.
                self._capture.unget(data, captured_ns)
                self._dma_failed(exc)
                break
            self._dma_failing = False
            model.dma_commit(R.ADC, length)
            self._adc_credit.moved(R.ADC, length)
            self.stats.capture_bytes += length
            if captured_ns:
                self.capture_latency_ns.append(time.monotonic_ns() - captured_ns)
            written += length
            self._update_irq()
        if written:
            self._send(audio_pb2.FrontendMessage(capture_step=audio_pb2.CaptureStep(channel=R.ADC, length=written)))

    def _play_offline(self, elapsed: float) -> None:
        """No service: pretend the sink played in real time, so the guest keeps its interrupts and never hangs."""
        for channel in (R.DAC1, R.DAC2):
            fmt = self.model.channel_format(channel)  # type: ignore[union-attr]
            moved, played = self._credit.totals(channel)
            self._credit.played(channel, min(moved, played + int(elapsed * fmt.rate * fmt.frame_bytes)))
