"""A PCI function as vfio-user presents it: config space emulation and the region table.

A device is described, not coded: its IDs, class and BARs (`PciSpec`, `BarSpec`). The server only speaks to a
`PciFunction`, which turns region accesses into config-space emulation, trapped BAR accesses for the shim's
`Device`, or reads/writes of an fd-backed BAR the client may also mmap. The ES1370 has one trapped I/O BAR; an
SVGA II would add memfd-backed VRAM and FIFO BARs by listing them (see `devices.py`).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from frontend_shim.guests.guest import Device
from frontend_shim.vfio_user import protocol as P

CONFIG_SPACE_SIZE = 256

# Type-0 header offsets and bits.
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION = 0x08
CLASS_PROG = 0x09
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
MIN_GNT = 0x3E
MAX_LAT = 0x3F

CMD_IO = 0x0001
CMD_MEMORY = 0x0002
CMD_MASTER = 0x0004
CMD_PARITY = 0x0040
CMD_SERR = 0x0100
CMD_INTX_DISABLE = 0x0400
_CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE
STATUS_INTERRUPT = 0x0008
STATUS_DEVSEL_MEDIUM = 0x0200
STATUS_DEVSEL_SLOW = 0x0400
_STATUS_W1C = 0xF900  # error bits: write 1 to clear

BAR_IO = 0x1
BAR_MEM_64 = 0x4
BAR_PREFETCH = 0x8

BarKind = Literal["io", "mem32", "mem64"]


@dataclass(frozen=True)
class FdBacking:
    """Memory behind a BAR that the client may mmap (e.g. SVGA VRAM in a memfd): fd, offset in it."""

    fd: int
    offset: int = 0


@dataclass(frozen=True)
class BarSpec:
    index: int
    kind: BarKind
    size: int
    prefetchable: bool = False
    backing: FdBacking | None = None  # None: every access is trapped and goes to the function's Device
    split_unaligned: bool = True  # hand the Device naturally aligned 1/2/4-byte pieces only

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 5 or (self.kind == "mem64" and self.index == 5):
            raise ValueError(f"BAR index {self.index} does not fit a type-0 header")
        minimum = 4 if self.kind == "io" else 16
        if self.size < minimum or self.size & (self.size - 1):
            raise ValueError(f"BAR{self.index}: size {self.size} must be a power of two >= {minimum}")
        if self.kind == "io" and (self.size > 256 or self.backing or self.prefetchable):
            raise ValueError(f"BAR{self.index}: an I/O BAR is at most 256 bytes, trapped, not prefetchable")

    @property
    def type_bits(self) -> int:
        if self.kind == "io":
            return BAR_IO
        return (BAR_MEM_64 if self.kind == "mem64" else 0) | (BAR_PREFETCH if self.prefetchable else 0)


@dataclass(frozen=True)
class PciSpec:
    vendor_id: int
    device_id: int
    class_code: int  # 24 bits: base class, sub-class, programming interface
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    revision: int = 0
    bars: tuple[BarSpec, ...] = ()
    interrupt_pin: int = 1  # 1 = INTA, 0 = none
    min_gnt: int = 0
    max_lat: int = 0
    status: int = 0
    msi_vectors: int = 0  # eventfds the server accepts for IRQ index 1 (needs an MSI capability to be used)
    # (BAR, offset, mask): a read there whose value has a mask bit set shows the guest a pending interrupt, i.e.
    # its handler runs (see irq.py); None if the device has no such register.
    interrupt_status: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        used: set[int] = set()
        for bar in self.bars:
            slots = {bar.index, bar.index + 1} if bar.kind == "mem64" else {bar.index}
            if used & slots:
                raise ValueError(f"BAR{bar.index} overlaps another BAR's slot")
            used |= slots

    def bar(self, index: int) -> BarSpec | None:
        return next((b for b in self.bars if b.index == index), None)


class ConfigSpace:
    """A 256-byte type-0 header without capabilities. Writes go through per-byte write masks; BARs read back
    their size mask after the all-ones sizing write, like hardware."""

    def __init__(self, spec: PciSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()
        self._wmask = bytearray(CONFIG_SPACE_SIZE)
        self._w1c = bytearray(CONFIG_SPACE_SIZE)
        _put(self._wmask, COMMAND, 2, _CMD_WRITABLE)
        _put(self._w1c, STATUS, 2, _STATUS_W1C)
        self._wmask[CACHE_LINE_SIZE] = self._wmask[LATENCY_TIMER] = self._wmask[INTERRUPT_LINE] = 0xFF
        for bar in spec.bars:
            size_mask = ~(bar.size - 1) & (0xFFFFFFFC if bar.kind == "io" else 0xFFFFFFF0)
            _put(self._wmask, BAR0 + 4 * bar.index, 4, size_mask)
            if bar.kind == "mem64":
                _put(self._wmask, BAR0 + 4 * bar.index + 4, 4, (~(bar.size - 1) >> 32) & 0xFFFFFFFF)
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.reset()

    def reset(self) -> None:
        s = self.spec
        with self._lock:
            d = self.data
            d[:] = bytes(CONFIG_SPACE_SIZE)
            _put(d, VENDOR_ID, 2, s.vendor_id)
            _put(d, DEVICE_ID, 2, s.device_id)
            _put(d, STATUS, 2, s.status)
            d[REVISION] = s.revision
            _put(d, CLASS_PROG, 3, s.class_code)
            _put(d, SUBSYSTEM_VENDOR_ID, 2, s.subsystem_vendor_id)
            _put(d, SUBSYSTEM_ID, 2, s.subsystem_id)
            for bar in s.bars:
                _put(d, BAR0 + 4 * bar.index, 4, bar.type_bits)
            d[INTERRUPT_PIN] = s.interrupt_pin
            d[MIN_GNT] = s.min_gnt
            d[MAX_LAT] = s.max_lat

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length, CONFIG_SPACE_SIZE, "config space")
        with self._lock:
            return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        _check_range(offset, len(data), CONFIG_SPACE_SIZE, "config space")
        with self._lock:
            for i, byte in enumerate(data, offset):
                keep = self.data[i] & ~self._wmask[i] & 0xFF
                self.data[i] = (keep | (byte & self._wmask[i])) & ~(byte & self._w1c[i]) & 0xFF

    def word(self, offset: int) -> int:
        return int.from_bytes(self.read(offset, 2), "little")

    @property
    def intx_disabled(self) -> bool:
        return bool(self.word(COMMAND) & CMD_INTX_DISABLE)


@dataclass(frozen=True)
class RegionInfo:
    flags: int
    size: int
    offset: int = 0  # mmap offset in `fd`
    fd: int | None = None


class PciFunction:
    """What the vfio-user server serves: regions 0-5 (BARs), 6 (ROM: none), 7 (config space), 8 (VGA: none)."""

    def __init__(self, spec: PciSpec, device: Device | None, reset: Callable[[], None] | None = None) -> None:
        if any(b.backing is None for b in spec.bars) and device is None:
            raise ValueError("trapped BARs need a Device")
        self.spec = spec
        self.config = ConfigSpace(spec)
        self.device = device
        self._reset_device = reset
        self._maps: dict[int, mmap.mmap] = {}
        self._maps_lock = threading.Lock()
        # Trapped BARs by index, for the register accesses of the hot path (see `read`).
        self._trapped = {b.index: b.size for b in spec.bars if b.backing is None}
        self._whole = {b.index for b in spec.bars if b.backing is None and not b.split_unaligned}
        status = spec.interrupt_status
        self._status_word = (status[0], status[1], status[2]) if status is not None else (-1, -1, 0)

    # ------------------------------------------------------------------ description
    def region_info(self, index: int) -> RegionInfo:
        if not 0 <= index < P.PCI_NUM_REGIONS:
            raise P.ProtocolError(errno.EINVAL, f"no region {index}")
        rw = P.REGION_INFO_FLAG_READ | P.REGION_INFO_FLAG_WRITE
        if index == P.PCI_CONFIG_REGION:
            return RegionInfo(rw, CONFIG_SPACE_SIZE)
        bar = self.spec.bar(index) if index <= 5 else None
        if bar is None:
            return RegionInfo(0, 0)  # unimplemented BAR, the upper half of a 64-bit BAR, no ROM, no VGA
        if bar.backing is not None:
            return RegionInfo(rw | P.REGION_INFO_FLAG_MMAP, bar.size, bar.backing.offset, bar.backing.fd)
        return RegionInfo(rw, bar.size)

    # ------------------------------------------------------------------ accesses
    def read_register(self, index: int, offset: int, count: int) -> int | None:
        """The hot path's read: a naturally aligned 1/2/4-byte access to a trapped BAR (what a CPU makes; on a BAR
        that takes accesses whole, any 1/2/4-byte one) is one piece, as _pieces would cut it, and its value is what
        the Device answers; None for any other access (`read` takes those)."""
        size = self._trapped.get(index)
        if (
            size is not None
            and count in _NATURAL
            and 0 <= offset <= size - count
            and (not offset % count or index in self._whole)
        ):
            return self.device.io_read(index, offset, count) & _MASKS[count]  # type: ignore[union-attr]
        return None

    def read(self, index: int, offset: int, count: int) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Bytes read, and the (offset, size, value) pieces the Device saw."""
        value = self.read_register(index, offset, count)
        if value is not None:
            return value.to_bytes(count, "little"), [(offset, count, value)]
        if index == P.PCI_CONFIG_REGION:
            return self._config_read(offset, count), []
        bar = self._bar(index, offset, count)
        if bar.backing is not None:
            mm = self._backing_map(bar)
            return bytes(mm[offset : offset + count]), []
        out, seen = bytearray(), []
        for off, size in _pieces(offset, count, bar.split_unaligned):
            value = self.device.io_read(bar.index, off, size) & ((1 << (8 * size)) - 1)  # type: ignore[union-attr]
            out += value.to_bytes(size, "little")
            seen.append((off, size, value))
        return bytes(out), seen

    def register_shows_interrupt(self, index: int, offset: int, count: int, value: int) -> bool:
        """`shows_interrupt` for one register read (`read_register`)."""
        bar, status, mask = self._status_word
        if index != bar:
            return False
        if offset == status and count == 4:
            return bool(value & mask)  # the whole status register at once
        return self.shows_interrupt(index, [(offset, count, value)])

    def shows_interrupt(self, index: int, pieces: list[tuple[int, int, int]]) -> bool:
        """Whether a read (as the Device saw it) showed the guest a pending interrupt."""
        bar, offset, mask = self._status_word
        if index != bar:
            return False
        if len(pieces) == 1 and pieces[0][0] == offset and pieces[0][1] == 4:
            return bool(pieces[0][2] & mask)  # the whole status register at once
        for off, size, value in pieces:
            for i in range(size):  # byte by byte: the guest may read the status register in pieces
                pos = off + i - offset
                if 0 <= pos < 4 and (value >> (8 * i)) & (mask >> (8 * pos)) & 0xFF:
                    return True
        return False

    def write(self, index: int, offset: int, data: bytes) -> list[tuple[int, int, int]]:
        size, count = self._trapped.get(index), len(data)
        if size is not None and count in _NATURAL and not offset % count and 0 <= offset <= size - count:
            value = int.from_bytes(data, "little")  # one piece, as in `read`
            self.device.io_write(index, offset, count, value)  # type: ignore[union-attr]
            return [(offset, count, value)]
        if index == P.PCI_CONFIG_REGION:
            self._config_write(offset, data)
            return []
        bar = self._bar(index, offset, len(data))
        if bar.backing is not None:
            mm = self._backing_map(bar)
            mm[offset : offset + len(data)] = data
            return []
        seen = []
        for off, size in _pieces(offset, len(data), bar.split_unaligned):
            value = int.from_bytes(data[off - offset : off - offset + size], "little")
            self.device.io_write(bar.index, off, size, value)  # type: ignore[union-attr]
            seen.append((off, size, value))
        return seen

    def reset(self) -> None:
        """VFIO_USER_DEVICE_RESET: the device model goes back to power-on state. Config space keeps its BAR
        addresses and command bits, like a function-level reset seen through QEMU (which restores them)."""
        if self._reset_device is not None:
            self._reset_device()

    def close(self) -> None:
        with self._maps_lock:
            for mm in self._maps.values():
                mm.close()
            self._maps.clear()

    # ------------------------------------------------------------------ internals
    def _config_read(self, offset: int, count: int) -> bytes:
        try:
            return self.config.read(offset, count)
        except ValueError as exc:
            raise P.ProtocolError(errno.EINVAL, str(exc)) from exc

    def _config_write(self, offset: int, data: bytes) -> None:
        try:
            self.config.write(offset, data)
        except ValueError as exc:
            raise P.ProtocolError(errno.EINVAL, str(exc)) from exc

    def _bar(self, index: int, offset: int, count: int) -> BarSpec:
        bar = self.spec.bar(index) if 0 <= index <= 5 else None
        if bar is None:
            raise P.ProtocolError(errno.EINVAL, f"region {index} cannot be accessed")
        try:
            _check_range(offset, count, bar.size, f"BAR{index}")
        except ValueError as exc:
            raise P.ProtocolError(errno.EINVAL, str(exc)) from exc
        if bar.backing is None and not bar.split_unaligned and count not in (1, 2, 4):
            # Handed on whole, so it must be an access a CPU can make: x86 port I/O is 1, 2 or 4 bytes.
            raise P.ProtocolError(errno.EINVAL, f"BAR{index}: a {count}-byte access to a register BAR")
        return bar

    def _backing_map(self, bar: BarSpec) -> mmap.mmap:
        with self._maps_lock:
            mm = self._maps.get(bar.index)
            if mm is None:
                assert bar.backing is not None
                mm = mmap.mmap(bar.backing.fd, bar.size, mmap.MAP_SHARED, offset=bar.backing.offset)
                self._maps[bar.index] = mm
            return mm


_NATURAL = (1, 2, 4)
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def _pieces(offset: int, count: int, split: bool) -> list[tuple[int, int]]:
    """Cut an access into naturally aligned 4/2/1-byte pieces, as a PCI bus would present it to the chip."""
    if not split:
        return [(offset, count)]
    out, pos, end = [], offset, offset + count
    while pos < end:
        size = next(s for s in (4, 2, 1) if pos % s == 0 and pos + s <= end)
        out.append((pos, size))
        pos += size
    return out


def _check_range(offset: int, length: int, size: int, what: str) -> None:
    if offset < 0 or length <= 0 or offset + length > size:
        raise ValueError(f"{what}: {length} bytes at {offset:#x} outside its {size} bytes")


def _put(buf: bytearray, offset: int, size: int, value: int) -> None:
    buf[offset : offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def memfd_backing(name: str, size: int) -> FdBacking:
    """A fresh memfd of `size` bytes to back a mmap-able BAR (the server keeps the fd for its lifetime)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return FdBacking(fd)
