"""A scripted guest that drives an ES1370 the way Linux's snd-ens1370 driver and ALSA do.

It owns a slice of guest RAM and a CPU thread: probe (mixer writes with codec-busy polling), prepare,
start, then per period interrupt the driver's handler (STATUS read, acknowledge by clearing and restoring
INT_EN, the position read twice) while "aplay" refills the period that just played, and finally stop.
The access sequences are those REFERENCE.md records from the real driver.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from frontend_shim.guests.guest import Device, DmaLog, EventLine, GuestMemory, RamMemory
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat

GUEST_RAM = 4 * 1024 * 1024
BUFFER_ADDR = 0x100000  # where the driver's DMA buffer lives in guest RAM
CAPTURE_ADDR = 0x200000  # where the capture buffer lives
PHANTOM_ADDR = 0x80000  # the driver points the ADC's "phantom" frame at a scratch page (a chip bug workaround)
_SILENCE = {8: b"\x80", 16: b"\x00"}  # U8 silence is mid-scale


class GuestError(RuntimeError):
    """The scripted guest gave up (its device stopped interrupting)."""


@dataclass
class PlayResult:
    frames: int  # frames of the caller's PCM played
    periods: int  # periods the guest queued (the last one padded with silence)
    interrupts: int  # period interrupts the guest's handler saw
    spurious: int  # interrupts with nothing pending
    accesses: int
    seconds: float
    queued: bytes  # every byte of the song the guest placed in the DMA buffer, in playback order
    xruns: int  # times the guest found the DMA past what it had written, stopped and restarted (like ALSA)


def dac_for(fmt: PcmFormat, prefer: str = "dac2") -> int:
    """DAC1 only has four rates; everything else plays on DAC2, like snd-ens1370 does."""
    if prefer == "dac1":
        if fmt.rate not in R.DAC1_RATES:
            raise ValueError(f"DAC1 plays only {R.DAC1_RATES} Hz, not {fmt.rate}")
        return R.DAC1
    return R.DAC2


def expressible(fmt: PcmFormat) -> bool:
    """Can an ES1370 play this format exactly?"""
    if fmt.bits not in (8, 16) or fmt.channels not in (1, 2):
        return False
    return fmt.rate in R.DAC1_RATES or R.dac2_rate(R.dac2_divider(fmt.rate)) == fmt.rate


class CountingDevice:
    """Counts accesses on their way to the real device (what the driver costs)."""

    def __init__(self, inner: Device) -> None:
        self.inner = inner
        self.accesses = 0

    def io_read(self, bar: int, offset: int, size: int) -> int:
        self.accesses += 1
        return self.inner.io_read(bar, offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.accesses += 1
        self.inner.io_write(bar, offset, size, value)


class ScriptedEs1370Driver:
    def __init__(
        self, device: Device, memory: GuestMemory, irq: EventLine, irq_timeout: float = 2.0, clock: Clock | None = None
    ) -> None:
        self.dev = CountingDevice(device)
        self.clock = clock or Clock()  # the guest's own sense of time (ALSA's jiffies)
        self.memory = memory
        self.irq = irq
        self.irq_timeout = irq_timeout  # real seconds without an interrupt before the guest gives up
        self.ctrl = R.CTRL_CDC_EN | R.CTRL_SERR_DIS
        self.sctrl = 0

    # ------------------------------------------------------------------ register helpers
    def outl(self, offset: int, value: int) -> None:
        self.dev.io_write(0, offset, 4, value)

    def inl(self, offset: int) -> int:
        return self.dev.io_read(0, offset, 4)

    # ------------------------------------------------------------------ driver phases
    def probe(self) -> None:
        """Chip init as snd-ens1370 does it: control, serial control, phantom frame, then the AK4531 mixer."""
        self.outl(R.CONTROL, self.ctrl)
        self.outl(R.SERIAL_CONTROL, self.sctrl)
        self.outl(R.MEMPAGE, R.FRAME_PAGE_ADC)
        self.outl(R.PHANTOM_FRAMEADR & 0xFF, PHANTOM_ADDR)
        self.outl(R.PHANTOM_FRAMECNT & 0xFF, 0)
        for reg, value in _AK4531_INIT:
            self._codec_write(reg, value)

    def _codec_write(self, reg: int, value: int) -> None:
        for _ in range(100):  # the driver polls the codec-busy bit before each write
            if not self.inl(R.STATUS) & R.STAT_CSTAT:
                break
        self.dev.io_write(0, R.CODEC, 2, (reg << 8) | value)

    def _prepare(self, dac: int, fmt: PcmFormat, buffer_bytes: int, period_bytes: int) -> None:
        mode = (R.FMT_BIT_16 if fmt.bits == 16 else 0) | (R.FMT_BIT_STEREO if fmt.channels == 2 else 0)
        shift = (mode & 1) + (mode >> 1)
        enable = R.CTRL_DAC1_EN if dac == R.DAC1 else R.CTRL_DAC2_EN
        self.ctrl &= ~enable
        self.outl(R.CONTROL, self.ctrl)
        self.outl(R.MEMPAGE, R.FRAME_PAGE_DAC)
        frame_adr, frame_cnt = (
            (R.DAC1_FRAMEADR, R.DAC1_FRAMECNT) if dac == R.DAC1 else (R.DAC2_FRAMEADR, R.DAC2_FRAMECNT)
        )
        self.outl(frame_adr & 0xFF, BUFFER_ADDR)
        self.outl(frame_cnt & 0xFF, buffer_bytes // 4 - 1)
        if dac == R.DAC1:
            self.sctrl &= ~(R.SCTRL_P1LOOPSEL | R.SCTRL_P1PAUSE | R.SCTRL_P1SCTRLD | R.SCTRL_P1FMT)
            self.sctrl |= R.SCTRL_P1INTEN | (mode << R.SCTRL_SH_P1FMT)
        else:
            self.sctrl &= ~(
                R.SCTRL_P2LOOPSEL
                | R.SCTRL_P2PAUSE
                | R.SCTRL_P2DACSEN
                | R.SCTRL_P2ENDINC
                | R.SCTRL_P2STINC
                | R.SCTRL_P2FMT
            )
            end_inc = 2 if mode & R.FMT_BIT_16 else 1
            self.sctrl |= R.SCTRL_P2INTEN | (mode << R.SCTRL_SH_P2FMT) | (end_inc << R.SCTRL_SH_P2ENDINC)
        self.outl(R.SERIAL_CONTROL, self.sctrl)
        self.outl(R.DAC1_SCOUNT if dac == R.DAC1 else R.DAC2_SCOUNT, (period_bytes >> shift) - 1)
        if dac == R.DAC1:
            self.ctrl = (self.ctrl & ~R.CTRL_WTSRSEL) | (R.DAC1_RATES.index(fmt.rate) << R.CTRL_SH_WTSRSEL)
        else:
            self.ctrl = (self.ctrl & ~R.CTRL_PCLKDIV) | (R.dac2_divider(fmt.rate) << R.CTRL_SH_PCLKDIV)
        self.outl(R.CONTROL, self.ctrl)

    def _prepare_capture(self, fmt: PcmFormat, buffer_bytes: int, period_bytes: int) -> None:
        """snd_ensoniq_capture_prepare: the ADC's frame on page 0xd, R1 format and INT_EN, count, rate. The ADC
        shares PCLKDIV with DAC2: the driver leaves the rate alone while DAC2 plays (both run at one rate)."""
        mode = (R.FMT_BIT_16 if fmt.bits == 16 else 0) | (R.FMT_BIT_STEREO if fmt.channels == 2 else 0)
        shift = (mode & 1) + (mode >> 1)
        self.ctrl &= ~R.CTRL_ADC_EN
        self.outl(R.CONTROL, self.ctrl)
        self.outl(R.MEMPAGE, R.FRAME_PAGE_ADC)
        self.outl(R.ADC_FRAMEADR & 0xFF, CAPTURE_ADDR)
        self.outl(R.ADC_FRAMECNT & 0xFF, buffer_bytes // 4 - 1)
        self.sctrl &= ~(R.SCTRL_R1LOOPSEL | R.SCTRL_R1FMT)
        self.sctrl |= R.SCTRL_R1INTEN | (mode << R.SCTRL_SH_R1FMT)
        self.outl(R.SERIAL_CONTROL, self.sctrl)
        self.outl(R.ADC_SCOUNT, (period_bytes >> shift) - 1)
        if not self.ctrl & R.CTRL_DAC2_EN:
            self.ctrl = (self.ctrl & ~R.CTRL_PCLKDIV) | (R.dac2_divider(fmt.rate) << R.CTRL_SH_PCLKDIV)
        self.outl(R.CONTROL, self.ctrl)

    def _interrupt(self, channels: tuple[int, ...]) -> tuple[bool, dict[int, int]]:
        """The driver's interrupt handler: (was it ours, {channel that interrupted: its DMA position})."""
        status = self.inl(R.STATUS)
        if not status & R.STAT_INTR:
            return False, {}
        ack = self.sctrl
        for stat, inten in (
            (R.STAT_DAC1, R.SCTRL_P1INTEN),
            (R.STAT_DAC2, R.SCTRL_P2INTEN),
            (R.STAT_ADC, R.SCTRL_R1INTEN),
        ):
            if status & stat:
                ack &= ~inten
        self.outl(R.SERIAL_CONTROL, ack)
        self.outl(R.SERIAL_CONTROL, self.sctrl)
        done = {}
        for channel in channels:
            if status & _STAT_BIT[channel]:
                for _ in range(2):  # snd_pcm_period_elapsed asks for the pointer, ALSA asks again to update
                    done[channel] = self._pointer(channel)
        return True, done

    def _pointer(self, channel: int) -> int:
        self.inl(R.CONTROL)
        if channel == R.ADC:
            self.outl(R.MEMPAGE, R.FRAME_PAGE_ADC)
            return (self.inl(R.ADC_FRAMECNT & 0xFF) >> 16) * 4
        self.outl(R.MEMPAGE, R.FRAME_PAGE_DAC)
        return (self.inl((R.DAC1_FRAMECNT if channel == R.DAC1 else R.DAC2_FRAMECNT) & 0xFF) >> 16) * 4

    def play(
        self, pcm: bytes, fmt: PcmFormat, *, dac: int = R.DAC2, period_frames: int = 1024, periods: int = 4
    ) -> PlayResult:
        """Play `pcm` (the guest's format) start to finish; returns what the guest saw."""
        return self.run(Playback(pcm, fmt, dac, period_frames, periods), None)[0]  # type: ignore[return-value]

    def record(self, fmt: PcmFormat, seconds: float, *, period_frames: int = 1024, periods: int = 4) -> RecordResult:
        """Record `seconds` (rounded up to whole periods) like arecord; returns what landed in the ring."""
        return self.run(None, Capture(fmt, seconds, period_frames, periods))[1]  # type: ignore[return-value]

    def run(self, play: Playback | None, capture: Capture | None) -> tuple[PlayResult | None, RecordResult | None]:
        """Playback, capture or both at once (full duplex), each stream's periods handled as they complete."""
        streams: list[_Stream] = []
        if play is not None:
            streams.append(_PlayStream(self, play))
        if capture is not None:
            streams.append(_CaptureStream(self, capture))
        if play is not None and capture is not None and play.dac == R.DAC2 and play.fmt.rate != capture.fmt.rate:
            raise ValueError("DAC2 and the ADC share one clock: play and record at the same rate")
        start = time.monotonic()
        for s in streams:
            s.prepare()
        for s in streams:
            self.ctrl |= _CTL_EN[s.channel]
        self.outl(R.CONTROL, self.ctrl)  # one trigger starts the linked streams together (snd_pcm_link)
        for s in streams:
            s.triggered()
        interrupts = spurious = 0
        try:
            while not all(s.finished for s in streams):
                if not self.irq.wait_high(self.irq_timeout):
                    progress = ", ".join(f"{R.CHANNEL_NAMES[s.channel]} {s.done}/{s.total}" for s in streams)
                    raise GuestError(f"no interrupt for {self.irq_timeout} s ({progress} periods)")
                ours, done = self._interrupt(tuple(s.channel for s in streams))
                if not ours:
                    spurious += 1
                    continue
                interrupts += 1
                for s in streams:
                    if s.channel in done and not s.finished:
                        s.period_elapsed(done[s.channel])
                        if s.finished and self.ctrl & _CTL_EN[s.channel]:
                            self.ctrl &= ~_CTL_EN[s.channel]
                            self.outl(R.CONTROL, self.ctrl)
        finally:  # each stream was stopped as it finished (the trigger ALSA sends); here only what is left
            running = sum(_CTL_EN[s.channel] for s in streams) & self.ctrl
            if running:
                self.ctrl &= ~running
                self.outl(R.CONTROL, self.ctrl)
        seconds = time.monotonic() - start
        results: list[PlayResult | RecordResult | None] = [None, None]
        for s in streams:
            results[0 if isinstance(s, _PlayStream) else 1] = s.result(interrupts, spurious, self.dev.accesses, seconds)
        return results[0], results[1]  # type: ignore[return-value]


@dataclass(frozen=True)
class Playback:
    pcm: bytes
    fmt: PcmFormat
    dac: int = R.DAC2
    period_frames: int = 1024
    periods: int = 4


@dataclass(frozen=True)
class Capture:
    fmt: PcmFormat
    seconds: float
    period_frames: int = 1024
    periods: int = 4


@dataclass
class RecordResult:
    periods: int  # periods recorded
    interrupts: int  # interrupts the guest's handler saw (all channels)
    spurious: int
    accesses: int
    seconds: float
    captured: bytes  # every byte the guest took out of its ring, in order (what arecord writes)


_CTL_EN = {R.DAC1: R.CTRL_DAC1_EN, R.DAC2: R.CTRL_DAC2_EN, R.ADC: R.CTRL_ADC_EN}
_STAT_BIT = {R.DAC1: R.STAT_DAC1, R.DAC2: R.STAT_DAC2, R.ADC: R.STAT_ADC}


def _ring(fmt: PcmFormat, period_frames: int, periods: int) -> tuple[int, int]:
    if periods < 2:
        raise ValueError("the driver needs at least two periods")
    period_bytes = period_frames * fmt.frame_bytes
    if period_bytes % 4 or period_bytes * periods > 0x40000:
        raise ValueError("period must be whole dwords and the buffer at most 256 KiB")
    return period_bytes, period_bytes * periods


class _Stream:
    channel: int
    done: int = 0
    total: int = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def prepare(self) -> None: ...

    def triggered(self) -> None:
        """The stream's trigger START has just been written."""

    def period_elapsed(self, position: int) -> None: ...

    def result(self, interrupts: int, spurious: int, accesses: int, seconds: float) -> PlayResult | RecordResult: ...


class _PlayStream(_Stream):
    """aplay: the buffer filled ahead, one period refilled per period interrupt, xruns detected as ALSA does and
    recovered from as aplay does (stop, prepare, fill, start again)."""

    def __init__(self, driver: ScriptedEs1370Driver, p: Playback) -> None:
        self.driver, self.p, self.channel = driver, p, p.dac
        self.period_bytes, self.buffer_bytes = _ring(p.fmt, p.period_frames, p.periods)
        self.total = max(1, math.ceil(len(p.pcm) / self.period_bytes))
        self.silence = _SILENCE[p.fmt.bits] * self.period_bytes
        self.chunks = [p.pcm[i * self.period_bytes : (i + 1) * self.period_bytes] for i in range(self.total)]
        self.chunks[-1] = self.chunks[-1] + self.silence[len(self.chunks[-1]) :]
        self.queued = bytearray()
        self.ring = _AlsaRing(self.period_bytes, self.buffer_bytes, p.fmt.rate * p.fmt.frame_bytes, driver.clock)
        self.written = 0  # periods of the song written to the ring so far (then silence, until the song has played)
        self.end = 0  # bytes from the last start to the song's end
        self.elapsed = 0  # period interrupts since the last start
        self.xruns = 0
        self.read_at_start = 0  # with a DMA log: bytes the card had read when the stream last started
        self.stale = False  # with a DMA log: the card had read past the start of a period before it was written

    @property
    def finished(self) -> bool:
        return self.elapsed * self.period_bytes >= self.end

    def _write_period(self) -> None:
        """aplay's write of one period at the application pointer."""
        ring = self.ring
        data = self.chunks[self.written] if self.written < self.total else self.silence
        memory = self.driver.memory
        memory.write(BUFFER_ADDR + ring.appl % self.buffer_bytes, data)
        if isinstance(memory, DmaLog) and memory.read_before_last_write - self.read_at_start > ring.appl:
            self.stale = True
        if self.written < self.total:
            self.queued.extend(data)
        ring.appl += self.period_bytes
        self.written += 1

    def prepare(self) -> None:
        """snd_pcm_prepare with the ring filled (aplay's start threshold is the whole buffer)."""
        self.ring.reset()
        self.end = (self.total - self.written) * self.period_bytes
        self.elapsed = 0
        for _ in range(self.p.periods):
            self._write_period()
        self.driver._prepare(self.p.dac, self.p.fmt, self.buffer_bytes, self.period_bytes)

    def triggered(self) -> None:
        self.ring.updated = self.driver.clock.now()  # ALSA's hw_ptr_jiffies starts with the trigger
        memory = self.driver.memory
        self.read_at_start = memory.bytes_read if isinstance(memory, DmaLog) else 0
        self.stale = False

    def period_elapsed(self, position: int) -> None:
        self.done += 1
        self.elapsed += 1
        ring = self.ring
        xrun = ring.update(position, in_interrupt=True)
        while not xrun and ring.avail() >= self.period_bytes and not self.finished:
            before = ring.appl
            self._write_period()
            # ALSA updates the position again at aplay's next write. The test guest asks one thing more than
            # ALSA can: had the DMA passed the start of what we just wrote? Then it took some of it before we
            # wrote it, and the card played the ring's old contents there. The position says so when it is
            # current; with a DMA log the guest also knows what the card had read when the write landed (the
            # position of a backend card moves when the data reaches the service, a round trip after the read).
            xrun = ring.update(self.driver._pointer(self.channel)) or ring.hw > before or self.stale
        if xrun and not self.finished:
            # ALSA stops the stream (the driver's trigger STOP) and aplay prepares and restarts it.
            self.xruns += 1
            driver = self.driver
            driver.ctrl &= ~_CTL_EN[self.channel]
            driver.outl(R.CONTROL, driver.ctrl)
            if self.written < self.total:
                self.prepare()
                driver.ctrl |= _CTL_EN[self.channel]
                driver.outl(R.CONTROL, driver.ctrl)
                self.triggered()
            else:
                self.end = 0  # what is left of the song was in the ring: it is lost, as with aplay's drain

    def result(self, interrupts: int, spurious: int, accesses: int, seconds: float) -> PlayResult:
        return PlayResult(
            frames=len(self.p.pcm) // self.p.fmt.frame_bytes,
            periods=self.total,
            interrupts=interrupts,
            spurious=spurious,
            accesses=accesses,
            seconds=seconds,
            queued=bytes(self.queued),
            xruns=self.xruns,
        )


class _CaptureStream(_Stream):
    """arecord: what the hardware pointer says was recorded is copied out of the ring, period by period (as ALSA
    moves its hw_ptr from the pointer, not from interrupt counts: a stale interrupt brings no data). The capture
    ring lives apart from playback's."""

    channel = R.ADC

    def __init__(self, driver: ScriptedEs1370Driver, c: Capture) -> None:
        self.driver, self.c = driver, c
        self.period_bytes, self.buffer_bytes = _ring(c.fmt, c.period_frames, c.periods)
        self.total = max(1, math.ceil(c.seconds * c.fmt.rate / c.period_frames))
        self.captured = bytearray()
        self.hw_ptr = 0  # bytes recorded since start, from the hardware pointer
        self.position = 0  # the pointer's last value (bytes into the ring)

    def prepare(self) -> None:
        self.driver.memory.write(CAPTURE_ADDR, b"\xa5" * self.buffer_bytes)  # stale bytes a DMA bug would show
        self.driver._prepare_capture(self.c.fmt, self.buffer_bytes, self.period_bytes)

    def period_elapsed(self, position: int) -> None:
        self.hw_ptr += (position - self.position) % self.buffer_bytes
        self.position = position
        while self.hw_ptr - self.done * self.period_bytes >= self.period_bytes and not self.finished:
            slot = self.done % self.c.periods
            self.captured += self.driver.memory.read(CAPTURE_ADDR + slot * self.period_bytes, self.period_bytes)
            self.done += 1

    def result(self, interrupts: int, spurious: int, accesses: int, seconds: float) -> RecordResult:
        return RecordResult(self.total, interrupts, spurious, accesses, seconds, bytes(self.captured))


class _AlsaRing:
    """ALSA's view of a playback ring: the hardware pointer it keeps from the driver's position reads, and the
    application pointer aplay writes at (both in bytes since the stream started)."""

    def __init__(self, period: int, size: int, byte_rate: int, clock: Clock) -> None:
        self.period = period
        self.size = size
        self.byte_rate = byte_rate
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.hw = self.appl = self.hw_interrupt = 0
        self.updated = self.clock.now()

    def avail(self) -> int:
        return self.hw + self.size - self.appl

    def update(self, pos: int, in_interrupt: bool = False) -> bool:
        """snd_pcm_update_hw_ptr0 with a position read from the card; True on an xrun (the hardware pointer
        reached the application pointer: the DMA is playing what was never written)."""
        now = self.clock.now()
        if pos >= self.size:
            pos = 0  # ALSA: "invalid position", taken as the ring's start (a card that vanished reads all ones)
        base = self.hw - self.hw % self.size
        new = base + pos
        long_ago = now - self.updated > self.size / self.byte_rate / 2
        if in_interrupt and new < self.hw_interrupt + self.period and long_ago:
            new += self.size  # a period elapsed, yet the pointer says less: it went once round the ring unseen
        elif new < self.hw:
            new += self.size  # the pointer wrapped at the ring's end
        self.hw, self.updated = new, now
        if in_interrupt:
            self.hw_interrupt = new
        return self.avail() >= self.size  # stop_threshold = buffer size: nothing written is left to play


def new_guest(record: bool = False) -> tuple[GuestMemory, EventLine]:
    """The scripted guest's RAM and interrupt line; `record` keeps every DMA read (a DmaLog)."""
    ram = RamMemory(GUEST_RAM)
    return (DmaLog(ram) if record else ram), EventLine()


# The AK4531 mixer set-up snd-ens1370 performs at probe: (register, value). Volumes at 0 dB, outputs unmuted.
_AK4531_INIT = (
    (0x16, 0x03),  # reset off, power on
    (0x17, 0x00),  # clock select
    (0x00, 0x00),
    (0x01, 0x00),  # master volume L/R
    (0x02, 0x06),
    (0x03, 0x06),  # voice volume L/R
    (0x04, 0x86),
    (0x05, 0x86),  # FM volume L/R (muted)
    (0x06, 0x86),
    (0x07, 0x86),  # CD volume
    (0x08, 0x86),
    (0x09, 0x86),  # line volume
    (0x0A, 0x86),
    (0x0B, 0x86),  # aux volume
    (0x0C, 0x80),  # mono 1
    (0x0D, 0x80),  # mono 2
    (0x0E, 0x80),  # mic
    (0x0F, 0x80),  # mono out
    (0x10, 0x1F),
    (0x11, 0x1F),  # output mixer switches
    (0x12, 0x00),
    (0x13, 0x00),
    (0x14, 0x00),
    (0x15, 0x00),  # input mixer switches
    (0x18, 0x00),
    (0x19, 0x00),  # mic gain, mode
)
