"""The ES1370 sound card as a pure state machine.

Used unchanged in three places: the shim (mirrored mode answers the guest from it), the audio service (the
authoritative copy in backend mode, the mirror in mirrored mode) and the tests. It owns no thread, socket or
clock. DMA is split in two steps so that the caller decides where guest memory comes from:
`dma_window()` says which guest bytes the next transfer would read (DACs) or write (the ADC), `dma_commit()`
advances the channel by the bytes actually moved. The three channels share one engine, as on the chip: the ADC
records at DAC2's clock (PCLKDIV) in its own format (R1 bits of SERIAL_CONTROL), has no pause bit, and raises
STAT_ADC per period; what it records and from which input (AK4531 registers behind the write-only CODEC port)
is the caller's business. Register semantics follow the chip as QEMU models it; the few deliberate
differences are marked "Deviation".
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from services.devices import es1370_regs as R


@dataclass(frozen=True)
class PcmFormat:
    rate: int
    channels: int
    bits: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8

    def __str__(self) -> str:
        return f"{self.rate} Hz {self.bits}-bit {'stereo' if self.channels == 2 else 'mono'}"


@dataclass
class Channel:
    """Per-channel DMA state; the same fields QEMU migrates (its `shift` is derived here from the format)."""

    leftover: int = 0  # bytes of a partly consumed dword at the frame position
    scount: int = 0  # current samples left (high 16 bits) | samples per interrupt - 1 (low 16 bits)
    frame_addr: int = 0  # guest-physical address of the DMA buffer
    frame_cnt: int = 0  # current dword (high 16 bits) | buffer size in dwords - 1 (low 16 bits)


@dataclass(frozen=True)
class _Bits:
    ctl_en: int
    stat_int: int
    sctl_pause: int
    sctl_inten: int
    sctl_fmt_shift: int
    sctl_loopsel: int


_CHANNEL_BITS = (
    _Bits(R.CTRL_DAC1_EN, R.STAT_DAC1, R.SCTRL_P1PAUSE, R.SCTRL_P1INTEN, R.SCTRL_SH_P1FMT, R.SCTRL_P1LOOPSEL),
    _Bits(R.CTRL_DAC2_EN, R.STAT_DAC2, R.SCTRL_P2PAUSE, R.SCTRL_P2INTEN, R.SCTRL_SH_P2FMT, R.SCTRL_P2LOOPSEL),
    _Bits(R.CTRL_ADC_EN, R.STAT_ADC, 0, R.SCTRL_R1INTEN, R.SCTRL_SH_R1FMT, R.SCTRL_R1LOOPSEL),
)
_CHANNEL_STAT_BITS = R.STAT_DAC1 | R.STAT_DAC2 | R.STAT_ADC
_FRAME_REGS = {
    R.DAC1_FRAMEADR: (R.DAC1, "frame_addr"),
    R.DAC1_FRAMECNT: (R.DAC1, "frame_cnt"),
    R.DAC2_FRAMEADR: (R.DAC2, "frame_addr"),
    R.DAC2_FRAMECNT: (R.DAC2, "frame_cnt"),
    R.ADC_FRAMEADR: (R.ADC, "frame_addr"),
    R.ADC_FRAMECNT: (R.ADC, "frame_cnt"),
}
_SCOUNT_REGS = {R.DAC1_SCOUNT: R.DAC1, R.DAC2_SCOUNT: R.DAC2, R.ADC_SCOUNT: R.ADC}
_ALL_ONES = 0xFFFFFFFF
_DWORD_OFFSETS = frozenset(range(0, R.IO_BAR_SIZE, 4))


class AccessError(ValueError):
    """An access no ES1370 could receive (outside the BAR, or not 1, 2 or 4 bytes)."""


@dataclass
class Es1370State:
    control: int = R.RESET_CONTROL
    status: int = R.RESET_STATUS
    mempage: int = 0
    codec: int = 0
    serial_control: int = 0
    uart_control: int = 0
    channels: list[Channel] = field(default_factory=lambda: [Channel() for _ in range(3)])
    codec_regs: list[int] = field(default_factory=lambda: [0] * R.AK4531_REGISTERS)

    def copy(self) -> Es1370State:
        return Es1370State(
            self.control,
            self.status,
            self.mempage,
            self.codec,
            self.serial_control,
            self.uart_control,
            [Channel(**{f.name: getattr(c, f.name) for f in fields(Channel)}) for c in self.channels],
            list(self.codec_regs),
        )


class Es1370:
    """Register file and DMA engine of one ES1370."""

    def __init__(self, state: Es1370State | None = None) -> None:
        self.state = state.copy() if state else Es1370State()

    # ----------------------------------------------------------------- guest accesses
    def read(self, offset: int, size: int) -> int:
        """A guest read of `size` bytes at `offset` in the I/O BAR.

        Deviation: QEMU answers a narrow read at an offset that is not a multiple of 4 with all ones (its
        dword handler sees no register there); we return the register's byte lanes, like the chip.
        """
        if size == 4 and offset in _DWORD_OFFSETS:  # the common case, kept short: mirrored reads are hot
            return self._read_dword(offset)
        check_access(offset, size)
        lane = (offset & 3) * 8
        return (self._read_dword(offset & ~3) >> lane) & _mask(size)

    def write(self, offset: int, size: int, value: int) -> bool:
        """A guest write; True when it changed the device state. Narrow writes land in their byte lanes.

        Deviation: QEMU hands a narrow write to its dword handler zero-extended (and drops it when unaligned);
        the chip, like we do here, only changes the bytes written. Linux writes CODEC with 16 bits and the UART
        with 8, where both behave the same.
        """
        if size == 4 and offset in _DWORD_OFFSETS:
            return self._write_dword(offset, value & _ALL_ONES)
        check_access(offset, size)
        if size < 4:
            aligned, lane = offset & ~3, (offset & 3) * 8
            mask = _mask(size) << lane
            current = self._register_value_for_merge(aligned)
            value = (current & ~mask) | ((value << lane) & mask)
            offset = aligned
        return self._write_dword(offset, value & _ALL_ONES)

    # ----------------------------------------------------------------- interrupt line
    @property
    def irq(self) -> bool:
        return bool(self.state.status & _CHANNEL_STAT_BITS)

    def interrupt_pending(self, channel: int) -> bool:
        return bool(self.state.status & _CHANNEL_BITS[channel].stat_int)

    # ----------------------------------------------------------------- channel view
    def channel_running(self, channel: int) -> bool:
        bits = _CHANNEL_BITS[channel]
        s = self.state
        return bool(s.control & bits.ctl_en) and not (bits.sctl_pause and s.serial_control & bits.sctl_pause)

    def channel_format(self, channel: int) -> PcmFormat:
        fmt = (self.state.serial_control >> _CHANNEL_BITS[channel].sctl_fmt_shift) & 3
        if channel == R.DAC1:
            rate = R.DAC1_RATES[(self.state.control & R.CTRL_WTSRSEL) >> R.CTRL_SH_WTSRSEL]
        else:
            rate = R.dac2_rate((self.state.control & R.CTRL_PCLKDIV) >> R.CTRL_SH_PCLKDIV)
        return PcmFormat(
            rate=rate,
            channels=2 if fmt & R.FMT_BIT_STEREO else 1,
            bits=16 if fmt & R.FMT_BIT_16 else 8,
        )

    def buffer_bytes(self, channel: int) -> int:
        return ((self.state.channels[channel].frame_cnt & 0xFFFF) + 1) * 4

    def period_bytes(self, channel: int) -> int:
        """Bytes between two of the channel's interrupts (its SCOUNT period)."""
        return ((self.state.channels[channel].scount & 0xFFFF) + 1) << self._shift(channel)

    def position_channel(self, offset: int) -> int | None:
        """The channel whose DMA position (FRAMECNT) a read at `offset` returns, if it is such a read."""
        hit = _FRAME_REGS.get(self._paged(offset & ~3))
        return hit[0] if hit is not None and hit[1] == "frame_cnt" else None

    def position_bytes(self, channel: int) -> int:
        ch = self.state.channels[channel]
        return (ch.frame_cnt >> 16) * 4 + ch.leftover

    # ----------------------------------------------------------------- DMA
    def dma_window(self, channel: int, max_bytes: int) -> tuple[int, int]:
        """(guest address, length) the channel would move now, given room for `max_bytes`.

        A transfer never crosses the end of the buffer nor the end of the current interrupt period, so one
        window is one contiguous range of guest memory. Length 0 means nothing to do.
        """
        if not self.channel_running(channel):
            return 0, 0
        ch = self.state.channels[channel]
        shift = self._shift(channel)
        cnt, size = ch.frame_cnt >> 16, ch.frame_cnt & 0xFFFF
        if cnt > size:
            return 0, 0
        # Deviation: QEMU adds `leftover` to the bytes left in the buffer where it should subtract it: when a
        # transfer that stopped inside a dword is followed by one that reaches the buffer end (a buffer that
        # is not whole periods, which ALSA does pick here), QEMU reads past the buffer end and its position
        # lags a dword from then on (tests/test_oracle_es1370.py, test_leftover_deviation).
        left = ((size - cnt + 1) << 2) - ch.leftover
        period_left = ((ch.scount >> 16) + 1) << shift
        length = min(max_bytes, left, period_left)
        if length < left and length < period_left:
            # Only the caller's room is rounded down to whole samples. The buffer's end is exact even when a
            # format change left the position inside a sample, so that the window of a window's length is that
            # window again: the shim and the service check each other's DMA steps that way.
            length &= ~((1 << shift) - 1)
        if length <= 0:
            return 0, 0
        return (ch.frame_addr + (cnt << 2) + ch.leftover) & _ALL_ONES, length

    def dma_commit(self, channel: int, moved: int) -> bool:
        """Advance `channel` by `moved` bytes of the current window; True when a period completed."""
        _, window = self.dma_window(channel, moved)
        if moved <= 0 or moved > window:
            raise ValueError(f"dma_commit of {moved} bytes outside the window of {window}")
        s = self.state
        ch = s.channels[channel]
        bits = _CHANNEL_BITS[channel]
        shift = self._shift(channel)
        sc, period_left = ch.scount & 0xFFFF, ((ch.scount >> 16) + 1) << shift
        completed = moved == period_left
        if completed:
            ch.scount = sc | (sc << 16)
        else:
            ch.scount = sc | (((period_left - moved - 1) >> shift) << 16)
        cnt = (ch.frame_cnt >> 16) + ((moved + ch.leftover) >> 2)
        size = ch.frame_cnt & 0xFFFF
        if not s.serial_control & bits.sctl_loopsel:  # 0 selects loop mode
            cnt = 0 if cnt > size else cnt
        else:
            # Non-loop mode stops at the buffer end (QEMU only logs a warning and freezes the position).
            cnt = min(cnt, size + 1) & 0xFFFF
        ch.frame_cnt = size | (cnt << 16)
        ch.leftover = (moved + ch.leftover) & 3
        if completed and s.serial_control & bits.sctl_inten:
            self._set_status(s.status | bits.stat_int)
        return completed

    # ----------------------------------------------------------------- internals
    def _shift(self, channel: int) -> int:
        fmt = (self.state.serial_control >> _CHANNEL_BITS[channel].sctl_fmt_shift) & 3
        return (fmt & 1) + (fmt >> 1)

    def _paged(self, offset: int) -> int:
        if R.PAGE_WINDOW <= offset <= R.PAGE_WINDOW_END:
            return offset | (self.state.mempage << 8)
        return offset

    def _read_dword(self, offset: int) -> int:
        s = self.state
        if offset == R.STATUS:  # by far the most read register (interrupt handlers, codec polling)
            return s.status
        reg = self._paged(offset)
        if reg == R.CONTROL:
            return s.control
        if reg == R.STATUS:
            return s.status
        if reg == R.MEMPAGE:
            return s.mempage
        if reg == R.CODEC:
            # Write-only (the AK4531 has no read path): QEMU's model and the real guest's traces read 0 here
            # whatever was written. Linux reads it back after the codec reset write, to flush the write.
            return 0
        if reg == R.SERIAL_CONTROL:
            return s.serial_control
        if reg in _SCOUNT_REGS:
            return s.channels[_SCOUNT_REGS[reg]].scount
        if reg in _FRAME_REGS:
            channel, name = _FRAME_REGS[reg]
            return getattr(s.channels[channel], name)
        # The UART, the phantom registers and unused pages read as all ones, as on QEMU's model.
        return _ALL_ONES

    def _register_value_for_merge(self, offset: int) -> int:
        """What the untouched lanes of a narrow write keep: the register's written value."""
        reg = self._paged(offset)
        if reg in _SCOUNT_REGS:
            return self.state.channels[_SCOUNT_REGS[reg]].scount & 0xFFFF
        if reg == R.UART_DATA:
            return self.state.uart_control << 8
        if reg == R.CODEC:
            return self.state.codec
        return self._read_dword(offset)

    def _write_dword(self, offset: int, value: int) -> bool:
        """Apply a dword write; True when the device state changed (mirrored mode streams only those)."""
        s = self.state
        reg = self._paged(offset)
        if reg == R.CONTROL:
            changed = s.control != value
            s.control = value
        elif reg == R.MEMPAGE:
            changed = s.mempage != value & 0xF
            s.mempage = value & 0xF
        elif reg == R.CODEC:
            address, data = (value >> 8) & 0xFF, value & 0xFF
            changed = s.codec != value
            s.codec = value
            if address < R.AK4531_REGISTERS:
                changed |= s.codec_regs[address] != data
                s.codec_regs[address] = data
        elif reg == R.SERIAL_CONTROL:
            # Clearing a channel's INT_EN clears its pending interrupt: this is how drivers acknowledge.
            changed = s.serial_control != value  # the status can only change when INT_EN bits do
            cleared = s.serial_control & ~value
            status = s.status
            for bits in _CHANNEL_BITS:
                if cleared & bits.sctl_inten:
                    status &= ~bits.stat_int
            s.serial_control = value
            self._set_status(status)
        elif reg in _SCOUNT_REGS:
            count = value & 0xFFFF
            ch = s.channels[_SCOUNT_REGS[reg]]
            changed = ch.scount != (count << 16) | count
            ch.scount = (count << 16) | count
        elif reg in _FRAME_REGS:
            channel, name = _FRAME_REGS[reg]
            ch = s.channels[channel]
            changed = getattr(ch, name) != value or (name == "frame_cnt" and ch.leftover != 0)
            setattr(ch, name, value)
            if name == "frame_cnt":
                ch.leftover = 0
        elif reg == R.UART_DATA:
            changed = s.uart_control != (value >> 8) & 0xFF
            s.uart_control = (value >> 8) & 0xFF  # kept so a resync restores it; no UART is modelled
        else:
            changed = False  # STATUS is read-only; other offsets are ignored like on the chip
        return changed

    def _set_status(self, status: int) -> None:
        if status & _CHANNEL_STAT_BITS:
            status |= R.STAT_INTR
        else:
            status &= ~R.STAT_INTR
        self.state.status = status


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def check_access(offset: int, size: int) -> None:
    """Raise AccessError for an access no ES1370 could receive."""
    if size not in (1, 2, 4):
        raise AccessError(f"access size {size} is not 1, 2 or 4 bytes")
    if offset < 0 or offset + size > R.IO_BAR_SIZE or (offset & 3) + size > 4:
        raise AccessError(f"access of {size} bytes at offset {offset:#x} is outside the ES1370's registers")
