"""Two ES1370s with the same guest-facing interface: QEMU's (over qtest) and ours (services.devices.es1370).

Each side is a `Device` (trapped port accesses), guest memory and an interrupt line, so the scripted
snd-ens1370-like driver (frontend_shim.guests.scripted_audio) runs unchanged against either.

Time. QEMU's DMA moves only on its audio timer (10 ms of virtual time), and under qtest virtual time moves
only when we step it; ours moves when its caller runs `dma_window`/`dma_commit`. Both sides therefore advance
their DMA only while the guest waits for an interrupt, and stop at the first period boundary: QEMU's transfer
never crosses the end of a period within one tick, so when its line rises the position registers sit exactly
on the boundary, as ours do. Register reads are compared exactly at those points.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path

from frontend_shim.guests.guest import Device, RamMemory
from frontend_shim.guests.scripted_audio import GUEST_RAM
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370, PcmFormat
from tests.qtest import PCI_IRQ, Qtest

IO_BASE = 0xC000  # where a BIOS would put BAR0 (and where the real guest's traces have it)
_STEP_LIMIT = 100_000  # clock steps per wait before we call QEMU stuck


@dataclass(frozen=True)
class Access:
    op: str  # "r" or "w"
    offset: int
    size: int
    value: int

    def __str__(self) -> str:
        return f"{'read ' if self.op == 'r' else 'write'} {self.offset:#04x}/{self.size} = {self.value:#010x}"


@dataclass
class LoggingDevice:
    """Records every access (with the value a read returned) on its way to `inner`."""

    inner: Device
    log: list[Access] = field(default_factory=list)

    def io_read(self, bar: int, offset: int, size: int) -> int:
        value = self.inner.io_read(bar, offset, size)
        self.log.append(Access("r", offset, size, value))
        return value

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.log.append(Access("w", offset, size, value))
        self.inner.io_write(bar, offset, size, value)


class QemuEs1370:
    """QEMU 7.2's ES1370 in a qtest machine. `wav` records what its DAC played (QEMU's wav audiodev)."""

    def __init__(self, wav: Path | None = None, rate: int = 44100, sample_format: str = "s16") -> None:
        if wav is None:
            audiodev = "none,id=a"
        else:
            # Two output channels even for a mono guest: QEMU 7.2 doubles the amplitude of mono output.
            audiodev = f"wav,id=a,path={wav},out.frequency={rate},out.channels=2,out.format={sample_format}"
        self.q = Qtest(["-audiodev", audiodev, "-device", "ES1370,audiodev=a"])
        fn = self.q.find_pci(R.PCI_VENDOR_ID, R.PCI_DEVICE_ID)
        self.q.setup_pci(fn, {0: IO_BASE | 1})
        self.q.irq_intercept_in("ioapic")
        self.memory = _QtestMemory(self.q)
        self.irq = _QtestLine(self.q)

    # Device
    def io_read(self, bar: int, offset: int, size: int) -> int:
        return self.q.in_(IO_BASE + offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.q.out(IO_BASE + offset, size, value)

    @property
    def level(self) -> bool:
        return self.irq.level

    def run_for(self, seconds: float) -> None:
        """Let virtual time pass (the DMA and the wav writer keep going)."""
        self.q.clock_step(int(seconds * 1e9))

    def close(self) -> None:
        self.q.close()


class _QtestMemory:
    def __init__(self, q: Qtest) -> None:
        self.q = q

    def read(self, addr: int, length: int) -> bytes:
        return self.q.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.q.write(addr, data)


class _QtestLine:
    """The ES1370's INTx as the I/O APIC sees it; waiting for it steps QEMU's clock timer by timer."""

    def __init__(self, q: Qtest) -> None:
        self.q = q

    @property
    def level(self) -> bool:
        return self.q.irq_levels.get(PCI_IRQ, False)

    @property
    def raised(self) -> int:
        return self.q.irq_raised.get(PCI_IRQ, 0)

    def wait_high(self, timeout: float) -> bool:
        """`timeout` is virtual seconds: the DMA runs on QEMU's clock, not ours."""
        start = now = self.q.clock_step(0)
        for _ in range(_STEP_LIMIT):
            if self.level or now - start > timeout * 1e9:
                break
            later = self.q.clock_step()
            now = later if later > now else self.q.clock_step(1_000_000)  # no timer armed: nudge
        return self.level


class ModelEs1370:
    """Our model with a DMA engine that runs only while the guest waits, up to the next period boundary."""

    def __init__(self) -> None:
        self.model = Es1370()
        self.memory = RamMemory(GUEST_RAM)
        self.pcm: dict[int, bytearray] = {R.DAC1: bytearray(), R.DAC2: bytearray()}
        self.irq = self  # the model is its own interrupt line
        self.raised = 0

    def io_read(self, bar: int, offset: int, size: int) -> int:
        return self.model.read(offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.model.write(offset, size, value)

    @property
    def level(self) -> bool:
        return self.model.irq

    def wait_high(self, timeout: float) -> bool:
        while not self.model.irq:
            if not self.run_period():
                return False
        return True

    def run_period(self, channels: tuple[int, ...] = (R.DAC1, R.DAC2, R.ADC)) -> bool:
        """Move each running channel to its next boundary (period or buffer end); False if nothing moved.
        The ADC records what QEMU's `none` audiodev captures (`silence`)."""
        moved = False
        for channel in channels:
            addr, length = self.model.dma_window(channel, 1 << 30)
            if not length:
                continue
            if channel == R.ADC:
                self.memory.write(addr, silence(self.model.channel_format(channel)) * length)
            else:
                self.pcm[channel] += self.memory.read(addr, length)
            before = self.model.irq
            self.model.dma_commit(channel, length)
            moved = True
            if self.model.irq and not before:
                self.raised += 1
                break
        return moved


def silence(fmt: PcmFormat) -> bytes:
    """One byte of what QEMU's `none` audiodev records: silence, which QEMU's mixer converts to 0x7f in U8 (one
    below mid-scale; a property of its audio layer, not of the ES1370, which DMAs whatever it is given)."""
    return b"\x7f" if fmt.bits == 8 else b"\x00"


def read_qemu_wav(path: Path, fmt: PcmFormat) -> bytes:
    """The PCM QEMU played, in the guest's format: one side of QEMU's stereo output for a mono guest."""
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and w.getsampwidth() * 8 == fmt.bits and w.getframerate() == fmt.rate
        data = w.readframes(w.getnframes())
    if fmt.channels == 2:
        return data
    width = fmt.bits // 8
    return b"".join(data[i : i + width] for i in range(0, len(data), 2 * width))
