"""A trap source made of recorded guest traffic: QEMU trace logs of a real driver, replayed through the shim.

Input: QEMU's log of `-trace enable=memory_region_ops_* -msg timestamp=on -D FILE` (raw or gzip), e.g.

    11671@1795690083.640044:memory_region_ops_write cpu 0 mr 0x5574... addr 0xc020 value 0x10000c size 4 name 'es1370'

Only the lines of the ES1370's I/O region (name 'es1370') are used. `addr` is the absolute port: the BAR base
is the 256-byte block the accesses fall in. `size` is the size QEMU handed its device (always 4 for the
ES1370, whatever the guest used); an access logged at an offset that is not a multiple of 4 can only have
been a byte or word access (Linux uses `outb` for the UART registers there), and is replayed as one byte.

Replay. Every access is issued at its recorded time (divided by `speed`) through `AudioLink`, in backend or
mirrored mode, against a real audio service. DMA is not traced, so guest memory is all zeros: the PCM is
silence, but the DMA still runs (paced by the service's playback) and positions and interrupts evolve.

Reads are judged against what QEMU returned:
- the interrupt handler is synchronized to *our* interrupts: a STATUS read whose recorded value has INTR set
  is the guest's handler, which a guest only runs when its line is raised; the replay waits (up to
  `irq_wait` seconds) for our line before issuing it, and later accesses move by the same delay. Then
  STATUS is compared exactly, like every register that does not depend on DMA timing (CONTROL, MEMPAGE,
  CODEC, SERIAL_CONTROL, FRAMEADR, UART, unused offsets);
- position registers cannot match exactly: QEMU's DMA follows its 10 ms audio timer and runs ahead of its DAC by up
  to its mixing buffer; ours runs ahead of the remote sink by up to the service's DMA lead (100 ms by default) and
  holds at a period boundary until the guest acknowledges (for at most 50 ms). A pointer read right after the
  acknowledgement races our DMA into the next period; and after a period that ended late (a busy host) our DMA
  catches up by up to half the ring's slack (services/devices/dma.py). So FRAMECNT must have the same buffer size
  (low 16 bits) and a position (high 16 bits) within TOLERANCE of QEMU's, measured around the ring: max(one period
  of the channel, as the guest programmed SCOUNT; the DMA lead; half of the ring minus a period) plus one QEMU audio
  tick (10 ms). Where that exceeds half the ring (small rings of short periods) only the size is checked; exact
  positions are the qtest oracle's job (tests/test_oracle_es1370.py). SCOUNT must have the same period (low 16 bits)
  and a current count no larger than it. On a busy host the replay itself can fall behind its schedule: the time by
  which a read came later than due (`max_slip_ms` in the report; 0 on an idle host) widens that read's position
  tolerance by as much audio.
"""

from __future__ import annotations

import gzip
import io
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from frontend_shim.guests.guest import EventLine
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.session_stream import FRAME_OVERHEAD as _FRAME_OVERHEAD
from rdv.audio.v1 import audio_pb2
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370

REGION = "es1370"
BAR_SIZE = R.IO_BAR_SIZE
_LINE = re.compile(
    r"^(?:(?P<pid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):)?memory_region_ops_(?P<op>read|write) "
    r"cpu (?P<cpu>-?\d+) mr (?P<mr>0x[0-9a-fA-F]+) addr (?P<addr>0x[0-9a-fA-F]+) "
    r"value (?P<value>0x[0-9a-fA-F]+) size (?P<size>\d+) name '(?P<name>[^']*)'\s*$"
)
_MAX_LINE = 4096  # a trace line is ~120 bytes; anything this long is not a QEMU trace
QEMU_TICK = 0.010  # QEMU's audio timer period: its DMA moves in steps of this


class TraceError(ValueError):
    """The file is not a QEMU memory_region_ops trace of an ES1370 (the message says why and where)."""


@dataclass(frozen=True, slots=True)
class TraceAccess:
    t: float  # seconds since the first access
    write: bool
    offset: int  # in the BAR
    size: int  # as replayed (see the module docstring)
    value: int  # written, or what QEMU's device returned


@dataclass
class Trace:
    path: str
    base: int  # the BAR's port address in the recorded guest
    accesses: list[TraceAccess]

    @property
    def duration(self) -> float:
        return self.accesses[-1].t if self.accesses else 0.0


def load_trace(path: str | Path, region: str = REGION) -> Trace:
    """Parse a QEMU trace log (raw or gzip) and keep the accesses of `region`. Raises TraceError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise TraceError(f"{path}: damaged gzip data ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a text trace log (byte {exc.start} is not UTF-8)") from exc
    return parse_trace(io.StringIO(text), str(path), region)


def parse_trace(lines: Iterable[str], name: str = "<trace>", region: str = REGION) -> Trace:
    marker = f"name '{region}'"
    records: list[tuple[int | None, bool, int, int, int]] = []  # (time in µs, write, port, value, size)
    for number, line in enumerate(lines, 1):
        if len(line) > _MAX_LINE:
            raise TraceError(f"{name}:{number}: line of {len(line)} characters is not a QEMU trace line")
        if marker not in line:
            continue  # other devices, other events
        m = _LINE.match(line)
        if m is None:
            raise TraceError(f"{name}:{number}: not a memory_region_ops trace line: {line.strip()[:160]!r}")
        stamp = int(m["sec"]) * 1_000_000 + int(m["usec"]) if m["sec"] else None  # integers: exact µs
        size = int(m["size"])
        if size not in (1, 2, 4, 8):
            raise TraceError(f"{name}:{number}: access size {size}")
        records.append((stamp, m["op"] == "write", int(m["addr"], 16), int(m["value"], 16), size))
    if not records:
        hint = "record with -trace enable=memory_region_ops_*"
        raise TraceError(f"{name}: no accesses of the {region!r} region ({hint})")
    if any(r[0] is None for r in records):
        raise TraceError(f"{name}: lines without timestamps (record with -msg timestamp=on)")
    base = records[0][2] & ~(BAR_SIZE - 1)
    first = records[0][0]
    accesses, last = [], 0.0
    for stamp, write, addr, value, logged_size in records:
        offset = addr - base
        if not 0 <= offset < BAR_SIZE:
            raise TraceError(f"{name}: access at port {addr:#x} outside the BAR at {base:#x} (did the BAR move?)")
        t = (stamp - first) / 1e6  # type: ignore[operator]
        if t < last - 1e-3:
            raise TraceError(f"{name}: timestamps go back in time at port {addr:#x} ({t:.6f} s after {last:.6f} s)")
        last = max(last, t)
        # QEMU logs its device's 4-byte access size; an unaligned offset was a byte access by the guest.
        size = min(logged_size, 4) if offset % 4 == 0 else 1
        mask = (1 << (8 * size)) - 1
        accesses.append(TraceAccess(max(t, 0.0), write, offset, size, value & mask))
    return Trace(name, base, accesses)


# ----------------------------------------------------------------------------------------- register names
_PAGED_NAMES = {
    R.DAC1_FRAMEADR: "DAC1_FRAMEADR",
    R.DAC1_FRAMECNT: "DAC1_FRAMECNT",
    R.DAC2_FRAMEADR: "DAC2_FRAMEADR",
    R.DAC2_FRAMECNT: "DAC2_FRAMECNT",
    R.ADC_FRAMEADR: "ADC_FRAMEADR",
    R.ADC_FRAMECNT: "ADC_FRAMECNT",
    R.PHANTOM_FRAMEADR: "PHANTOM_FRAMEADR",
    R.PHANTOM_FRAMECNT: "PHANTOM_FRAMECNT",
}
_NAMES = {
    R.CONTROL: "CONTROL",
    R.STATUS: "STATUS",
    R.UART_DATA: "UART",
    R.MEMPAGE: "MEMPAGE",
    R.CODEC: "CODEC",
    R.SERIAL_CONTROL: "SERIAL_CONTROL",
    R.DAC1_SCOUNT: "DAC1_SCOUNT",
    R.DAC2_SCOUNT: "DAC2_SCOUNT",
    R.ADC_SCOUNT: "ADC_SCOUNT",
}
_DAC_ENABLE = R.CTRL_DAC1_EN | R.CTRL_DAC2_EN
_FRAMECNT_CHANNEL = {R.DAC1_FRAMECNT: R.DAC1, R.DAC2_FRAMECNT: R.DAC2, R.ADC_FRAMECNT: R.ADC}
_SCOUNT_CHANNEL = {R.DAC1_SCOUNT: R.DAC1, R.DAC2_SCOUNT: R.DAC2, R.ADC_SCOUNT: R.ADC}


def register_name(offset: int, page: int) -> str:
    aligned = offset & ~3
    if R.PAGE_WINDOW <= aligned <= R.PAGE_WINDOW_END:
        return _PAGED_NAMES.get((page << 8) | aligned, f"PAGE{page:X}+{aligned:#04x}")
    return _NAMES.get(aligned, f"{aligned:#04x}")


# ----------------------------------------------------------------------------------------- wire meter
_TO_SERVICE = {"access": "io", "writes": "io", "pcm": "audio", "dma_data": "audio"}
_FROM_SERVICE = {"value": "io", "interrupt": "interrupt", "dma_request": "audio", "position": "audio"}


class MeteredLink(AudioLink):
    """AudioLink that also sorts its wire bytes by what they carry: port I/O, interrupts, audio, control.

    The totals are the link's own (LinkStats); the split is measured on the same messages, as they leave (a batch
    of posted writes counts as the one message it is).
    """

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.to_service: Counter[str] = Counter()
        self.from_service: Counter[str] = Counter()

    def _sent(self, msg: audio_pb2.FrontendMessage, wire_bytes: int) -> None:
        self.to_service[_TO_SERVICE.get(msg.WhichOneof("kind") or "", "control")] += wire_bytes  # as it leaves

    def _dispatch(self, conn: object, msg: audio_pb2.BackendMessage) -> None:
        what = _FROM_SERVICE.get(msg.WhichOneof("kind") or "", "control")
        self.from_service[what] += msg.ByteSize() + _FRAME_OVERHEAD
        super()._dispatch(conn, msg)  # type: ignore[arg-type]


class ZeroMemory:
    """Guest memory for replay: DMA is not in the trace, so every address reads as zeros."""

    def read(self, addr: int, length: int) -> bytes:
        return bytes(length)

    def write(self, addr: int, data: bytes) -> None:
        pass


# ----------------------------------------------------------------------------------------- replay
@dataclass
class Mismatch:
    index: int
    t: float
    register: str
    qemu: int
    ours: int
    tolerated: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "t": round(self.t, 6),
            "register": self.register,
            "qemu": f"{self.qemu:#x}",
            "ours": f"{self.ours:#x}",
            "tolerated": self.tolerated,
        }


@dataclass
class ReplayReport:
    trace: str
    mode: str
    speed: float
    accesses: int = 0
    reads: int = 0
    writes: int = 0
    by_register: dict[str, Counter[str]] = field(default_factory=dict)
    trace_interrupts: int = 0  # interrupt handler entries in the trace
    interrupts: int = 0  # rising edges of our line the replayed guest saw
    isr_waits: int = 0  # handler entries that had to wait for our interrupt
    isr_timeouts: int = 0  # ... and gave up waiting
    max_isr_wait_ms: float = 0.0
    max_slip_ms: float = 0.0  # the latest a mismatching read came after its due time (recording's time)
    mismatches: list[Mismatch] = field(default_factory=list)
    max_position_error: float = 0.0  # largest position difference, in periods
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    wire_to_service: dict[str, int] = field(default_factory=dict)
    wire_from_service: dict[str, int] = field(default_factory=dict)
    playing: dict[str, float] = field(default_factory=dict)  # wire figures from the first DAC start to the end

    def playing_rates(self) -> dict[str, float]:
        """Bytes per second on the wire while the guest plays (the paper's Fig. 7 is measured that way)."""
        p = self.playing
        if not p or p["seconds"] <= 0:
            return {}
        rates = {f"{k}_per_s": round(v / p["seconds"], 1) for k, v in p.items() if k != "seconds"}
        return {"seconds": p["seconds"], **rates}

    @property
    def unexpected_mismatches(self) -> int:
        return sum(not m.tolerated for m in self.mismatches)

    def as_dict(self) -> dict[str, object]:
        to, frm = self.stats.get("bytes_to_service", 0), self.stats.get("bytes_from_service", 0)
        secs = max(self.seconds, 1e-9)
        return {
            "trace": self.trace,
            "mode": self.mode,
            "speed": self.speed,
            "accesses": self.accesses,
            "reads": self.reads,
            "writes": self.writes,
            "interrupts": self.interrupts,
            "trace_interrupts": self.trace_interrupts,
            "isr_waits": self.isr_waits,
            "isr_timeouts": self.isr_timeouts,
            "max_isr_wait_ms": round(self.max_isr_wait_ms, 3),
            "max_slip_ms": round(self.max_slip_ms, 3),
            "unexpected_mismatches": self.unexpected_mismatches,
            "tolerated_mismatches": len(self.mismatches) - self.unexpected_mismatches,
            "max_position_error_periods": round(self.max_position_error, 3),
            "mismatch_examples": [m.as_dict() for m in self.mismatches if not m.tolerated][:10],
            "bytes_to_service": to,
            "bytes_from_service": frm,
            "bytes_to_service_per_s": round(to / secs, 1),
            "bytes_from_service_per_s": round(frm / secs, 1),
            "wire_to_service": dict(self.wire_to_service),
            "wire_from_service": dict(self.wire_from_service),
            "pcm_bytes": self.stats.get("pcm_bytes", 0),
            "read_timeouts": self.stats.get("read_timeouts", 0),
            "seconds": round(self.seconds, 3),
            "playing": self.playing_rates(),
            "by_register": {k: dict(v) for k, v in sorted(self.by_register.items())},
        }


class _GuestView:
    """What the recorded guest programmed, followed from its writes (for register names and tolerances)."""

    def __init__(self) -> None:
        self.card = Es1370()  # only its registers: no DMA runs here

    @property
    def page(self) -> int:
        return self.card.state.mempage

    def register(self, offset: int) -> int:
        return (self.page << 8) | offset if R.PAGE_WINDOW <= offset <= R.PAGE_WINDOW_END else offset

    def wrote(self, offset: int, size: int, value: int) -> None:
        if size == 4:
            self.card.write(offset, size, value)

    def period_bytes(self, channel: int) -> int:
        fmt = self.card.channel_format(channel)
        sample_bytes = fmt.frame_bytes
        return ((self.card.state.channels[channel].scount & 0xFFFF) + 1) * sample_bytes

    def byte_rate(self, channel: int) -> int:
        fmt = self.card.channel_format(channel)
        return fmt.rate * fmt.frame_bytes


class Replayer:
    """Replays one trace through an AudioLink; `run` returns the report."""

    def __init__(
        self,
        trace: Trace,
        target: str,
        mode: str,
        *,
        speed: float = 1.0,
        irq_wait: float = 0.5,
        access_timeout: float = 0.5,
        vm: str = "trace-replay",
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.trace = trace
        self.speed = speed
        self.irq_wait = irq_wait
        self.line = EventLine()
        self.link = MeteredLink(
            target, mode, ZeroMemory(), self.line, vm=vm, clock=Clock(speed), access_timeout=access_timeout
        )
        self.report = ReplayReport(trace.path, mode, speed)

    def run(self) -> ReplayReport:
        self.link.start()
        try:
            self._replay()
        finally:
            self.link.close(drain=True, timeout=5.0)
            rep = self.report
            rep.stats = self.link.stats.as_dict()
            rep.interrupts = self.line.raised
            rep.wire_to_service = dict(self.link.to_service)
            rep.wire_from_service = dict(self.link.from_service)
        return self.report

    def _replay(self) -> None:
        rep, link, view = self.report, self.link, _GuestView()
        lead = self.link._credit.lead  # seconds of audio the service lets the DMA run ahead
        start = time.monotonic()
        shift = 0.0  # how far behind the recording we are because the guest waited for our interrupts
        playing: tuple[float, ...] | None = None  # wire counters when the guest first started a DAC
        for index, a in enumerate(self.trace.accesses):
            due = start + a.t / self.speed + shift
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            name = register_name(a.offset, view.page)
            rep.by_register.setdefault(name, Counter())["writes" if a.write else "reads"] += 1
            rep.accesses += 1
            if a.write:
                rep.writes += 1
                if playing is None and view.register(a.offset) == R.CONTROL and a.value & _DAC_ENABLE:
                    playing = self._wire_snapshot()
                link.io_write(0, a.offset, a.size, a.value)
                view.wrote(a.offset, a.size, a.value)
                continue
            rep.reads += 1
            if a.offset == R.STATUS and a.size == 4 and a.value & R.STAT_INTR:
                rep.trace_interrupts += 1
                if not self.line.level:
                    rep.isr_waits += 1
                    waited = time.monotonic()
                    if not self.line.wait_high(self.irq_wait / self.speed):
                        rep.isr_timeouts += 1
                    waited = time.monotonic() - waited
                    rep.max_isr_wait_ms = max(rep.max_isr_wait_ms, waited * 1000 * self.speed)
                    shift += waited
            ours = link.io_read(0, a.offset, a.size)
            if ours != a.value:
                # A busy host may make the replay itself late: the read then sees a card that ran on meanwhile.
                slip = max(0.0, time.monotonic() - (start + a.t / self.speed + shift)) * self.speed
                rep.max_slip_ms = max(rep.max_slip_ms, slip * 1000)
                tolerated = self._tolerated(a, ours, view, lead + slip)
                rep.mismatches.append(Mismatch(index, a.t, name, a.value, ours, tolerated))
        rep.seconds = (time.monotonic() - start) * self.speed
        if playing is not None:
            end = self._wire_snapshot()
            t, to, frm, reg_to, reg_frm = (b - a for a, b in zip(playing, end, strict=True))
            rep.playing = {
                "seconds": round(t * self.speed, 3),
                "bytes_to_service": int(to),
                "bytes_from_service": int(frm),
                "register_bytes_to_service": int(reg_to),
                "register_bytes_from_service": int(reg_frm),
            }

    def _wire_snapshot(self) -> tuple[float, ...]:
        """(time, bytes to, bytes from, register bytes to, register bytes from): playback rates are differences."""
        link = self.link
        return (
            time.monotonic(),
            link.stats.bytes_to_service,
            link.stats.bytes_from_service,
            link.to_service["io"],
            link.from_service["io"] + link.from_service["interrupt"],
        )

    def _tolerated(self, a: TraceAccess, ours: int, view: _GuestView, lead: float) -> bool:
        """Position registers may differ within the documented tolerance (module docstring); `lead` includes how
        late the replay made this read."""
        if a.size != 4:
            return False
        reg = view.register(a.offset)
        if reg in _SCOUNT_CHANNEL:
            return (ours & 0xFFFF) == (a.value & 0xFFFF) and (ours >> 16) <= (ours & 0xFFFF)
        channel = _FRAMECNT_CHANNEL.get(reg)
        if channel is None or (ours & 0xFFFF) != (a.value & 0xFFFF):
            return False
        ring = ((a.value & 0xFFFF) + 1) * 4
        distance = abs((ours >> 16) - (a.value >> 16)) * 4 % ring
        distance = min(distance, ring - distance)
        period = max(view.period_bytes(channel), 4)
        self.report.max_position_error = max(self.report.max_position_error, distance / period)
        rate = view.byte_rate(channel)
        catch_up = max(0, ring - period) // 2  # after a late period, our DMA may run this far ahead (dma.py)
        return distance <= max(period, lead * rate, catch_up) + QEMU_TICK * rate


def replay(path: str | Path, target: str, mode: str, *, speed: float = 1.0, irq_wait: float = 0.5) -> ReplayReport:
    """Load and replay one trace file (TraceError for a malformed file, ConnectionError without a service)."""
    trace = load_trace(path)
    return Replayer(trace, target, mode, speed=speed, irq_wait=irq_wait).run()


__all__ = [
    "MeteredLink",
    "ReplayReport",
    "Replayer",
    "Trace",
    "TraceAccess",
    "TraceError",
    "ZeroMemory",
    "load_trace",
    "parse_trace",
    "register_name",
    "replay",
]
