"""The VMware SVGA II display adapter as a pure state machine.

The same class runs in the shim beside QEMU, in the display service and in the tests. It owns no thread,
socket or clock: the caller hands it the guest's port accesses (`read` / `write` on BAR0, the same shape as
the ES1370 model's) and two writable buffers, VRAM (BAR1) and FIFO memory (BAR2), which may be shared memory
the guest writes directly.
Everything the device does that someone else must see comes back as values: effects (damage rectangles,
fills and copies the device applied to VRAM, cursor changes, fences, mode changes) and error strings in a
`FifoResult`. Nothing a guest can do raises or makes the model touch memory outside those two buffers.

Design choices (the spec leaves them open or QEMU gets them wrong):
- Port accesses. The VALUE port is BAR0+1 and drivers use 32-bit accesses there. A 4-byte access at offset 1
  is one register access. When the memory core splits it into aligned pieces (1 byte at 1, 2 at 2, 1 at 4;
  any ascending run of contiguous pieces from offset 1 to 5 is accepted) the pieces are merged: a read
  performs the register read once, on its first piece, and answers the later pieces from the latched
  value; a write is buffered and performed once its last byte arrives. Any other access in between
  abandons the run (a buffered write is dropped and reported). A lone narrow access at offset 2 is the
  (unused) BIOS port.
- FIFO passes. The FIFO runs when the guest writes SYNC, when it reads BUSY while work is left, and when the
  caller calls `process_fifo` (QEMU also runs it on every display refresh). The four FIFO registers are
  re-read and validated on every pass; a bad layout is reported and nothing else is read. A command runs
  only when all its words are present; otherwise the pass stops there and STOP stays at its start. A pass
  runs at most `max_commands` commands and only the data present when it started.
- Unknown commands. A command whose length is known (see svga_regs.CMD_WORDS and the measurable
  variable-length ones) is skipped exactly and reported if unsupported. A command whose length cannot be
  known (unknown id, malformed header, or longer than the FIFO could ever hold) makes the device skip to
  NEXT_CMD: everything queued so far is discarded and reported, so the guest's next command starts clean.
- FIFO word 290 (the guest's "host is busy" flag) is cleared at the start of every pass, before NEXT_CMD is
  read: a command committed after that read finds the flag clear and SYNCs again, so none is forgotten.
- RECT_FILL / RECT_COPY are done by the device inside the current mode's framebuffer, clipped to it (a copy
  is cut so source and destination both fit); fully outside means refused and reported. UPDATE only
  reports damage, clipped the same way.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

from services.common import raster
from services.common.raster import EMPTY, Rect, Surface
from services.devices import svga_regs as R

# Exactly what this model implements. PITCHLOCK is what Linux vmwgfx needs to probe at all; RECT_FILL and
# RECT_COPY are done in VRAM; CURSOR (DEFINE_CURSOR), ALPHA_CURSOR (DEFINE_ALPHA_CURSOR) and both cursor
# bypass variants (the CURSOR_* registers, including ON values 2 and 3) are modelled. Not offered: IRQMASK
# (the registers exist, but nothing delivers the interrupt yet), EXTENDED_FIFO (no FIFO fences, FIFO
# pitchlock or FIFO cursor), 8-bit emulation, GMRs, screen objects and 3D.
CAPABILITIES = (
    R.CAP_RECT_FILL
    | R.CAP_RECT_COPY
    | R.CAP_CURSOR
    | R.CAP_CURSOR_BYPASS
    | R.CAP_CURSOR_BYPASS_2
    | R.CAP_ALPHA_CURSOR
    | R.CAP_PITCHLOCK
)
FIFO_CAPABILITIES = R.FIFO_CAP_NONE  # written to the FIFO register when the guest leaves room for it

DEFAULT_MAX_COMMANDS = 1024
QUEUE_LIMIT = 65536  # effects held for the caller before BUSY reads stop running the FIFO

_U32 = 0xFFFFFFFF
_WORD = 4
_PSEUDOCOLOR_BPP = 8
_BITS_PER_BYTE = 8
_VALUE_PORT = R.VALUE_PORT  # (a module global: read on every register read)

Buffer = bytearray | memoryview | mmap.mmap


def _signed32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value & 0x80000000 else value


def _mask(size: int) -> int:
    return (1 << (size * _BITS_PER_BYTE)) - 1


@lru_cache(maxsize=64)
def _words_struct(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}I")


_CMD_NAMES = {
    value: name[len("CMD_") :]
    for name, value in vars(R).items()
    if name.startswith("CMD_") and isinstance(value, int) and not name.startswith("CMD_3D")
}


def _cmd_name(cmd: int) -> str:
    if R.CMD_3D_FIRST <= cmd <= R.CMD_3D_LAST:
        return f"3D command {cmd}"
    return f"{_CMD_NAMES.get(cmd, 'command')} ({cmd})"


# ------------------------------------------------------------------------------------------- values
@dataclass(frozen=True, slots=True)
class Mode:
    """The guest framebuffer as the registers describe it (pitch from PITCHLOCK when the guest set one)."""

    width: int
    height: int
    bpp: int
    depth: int
    pitch: int
    fb_offset: int
    enabled: bool
    hidden: bool = False  # ENABLE_HIDE: the guest asked the host not to show the framebuffer

    @property
    def bytes_per_pixel(self) -> int:
        return self.bpp // _BITS_PER_BYTE

    @property
    def surface(self) -> Surface:
        return Surface(self.width, self.height, self.pitch, self.bytes_per_pixel, self.fb_offset)


@dataclass(frozen=True, slots=True)
class Cursor:
    """A cursor image: width*height pixels of little-endian 32-bit ARGB (bytes B, G, R, A), not premultiplied
    unless the guest premultiplied them, plus the hotspot inside the image."""

    width: int
    height: int
    hot_x: int
    hot_y: int
    argb: bytes


@dataclass(frozen=True, slots=True)
class Update:
    """The guest says `rect` of the framebuffer changed."""

    rect: Rect


@dataclass(frozen=True, slots=True)
class Fill:
    """The device filled `rect` with `color` (framebuffer pixel format) in VRAM."""

    rect: Rect
    color: int


@dataclass(frozen=True, slots=True)
class Copy:
    """The device copied the pixels at (src_x, src_y) to `rect` in VRAM (overlap-safe)."""

    src_x: int
    src_y: int
    rect: Rect


@dataclass(frozen=True, slots=True)
class CursorDefined:
    cursor: Cursor


@dataclass(frozen=True, slots=True)
class CursorMoved:
    """Hotspot position in framebuffer pixels (may be negative) and whether the cursor is shown."""

    x: int
    y: int
    visible: bool


@dataclass(frozen=True, slots=True)
class Fence:
    fence_id: int


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """The mode registers changed. A driver writes them one by one, so intermediate modes show up too."""

    mode: Mode


Effect = Update | Fill | Copy | CursorDefined | CursorMoved | Fence | ModeChanged


@dataclass
class FifoResult:
    """What a FIFO pass or a port write did, in order. Also returned by `write` and `take_pending`."""

    effects: list[Effect] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    commands: int = 0  # commands consumed from the FIFO (run, skipped or discarded)
    skipped: int = 0  # of those, the ones that did nothing: unsupported, refused, unknown
    clipped: int = 0  # rectangles cut to the framebuffer
    partial: bool = False  # the last pass stopped at a command whose words are not all there yet
    bounded: bool = False  # the last pass stopped at max_commands with complete commands left
    ran: bool = False  # a pass read commands (device enabled and configured, FIFO layout valid)

    def merge(self, other: FifoResult) -> None:
        self.effects.extend(other.effects)
        self.errors.extend(other.errors)
        self.commands += other.commands
        self.skipped += other.skipped
        self.clipped += other.clipped
        if other.ran:
            self.partial, self.bounded, self.ran = other.partial, other.bounded, True


class AccessError(ValueError):
    """An access no SVGA II could receive (outside the 16-byte BAR, or not 1, 2 or 4 bytes): a caller bug."""


class SnapshotError(ValueError):
    """A snapshot that does not describe a state of this device."""


@dataclass(frozen=True)
class SvgaState:
    """All register state of an SvgaII (not VRAM or FIFO memory), checked on the way in: a state that exists has
    32-bit registers, a supported id and depth, flags that are booleans and a cursor that fits its size, or
    making it raised SnapshotError. What depends on the device's configuration (its maximum mode, its number
    of scratch registers) is checked by `SvgaII.restore`."""

    SCALARS: ClassVar[tuple[str, ...]] = (
        "index", "svga_id", "enable", "width", "height", "bpp", "pitchlock", "config_done", "guest_id",
        "cursor_id", "cursor_x", "cursor_y", "cursor_on", "irq_mask", "irq_status",
    )  # fmt: skip
    PLAIN: ClassVar[tuple[str, ...]] = (*SCALARS, "cursor_visible", "busy", "fb_start", "mem_start")  # as on the wire

    index: int = 0
    svga_id: int = R.ID_2
    enable: int = 0
    width: int = R.DEFAULT_WIDTH
    height: int = R.DEFAULT_HEIGHT
    bpp: int = R.DEFAULT_BPP
    pitchlock: int = 0
    config_done: int = 0
    guest_id: int = 0
    cursor_id: int = 0
    cursor_x: int = 0
    cursor_y: int = 0
    cursor_on: int = R.CURSOR_ON_HIDE
    irq_mask: int = 0
    irq_status: int = 0
    cursor_visible: bool = False
    busy: bool = False
    fb_start: int = 0
    mem_start: int = 0
    scratch: tuple[int, ...] = ()
    palette: tuple[int, ...] = (0,) * R.NUM_PALETTE_REGS
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        for name in self.SCALARS:
            _check_u32(name, getattr(self, name))
        if self.width > R.MAX_WIDTH or self.height > R.MAX_HEIGHT:
            raise SnapshotError(f"mode {self.width}x{self.height} beyond the maximum")
        if self.bpp not in R.SUPPORTED_BPP:
            raise SnapshotError(f"unsupported bits per pixel {self.bpp}")
        if self.svga_id not in R.SUPPORTED_IDS:
            raise SnapshotError(f"unsupported SVGA id {self.svga_id:#x}")
        for name in ("scratch", "palette"):
            values = getattr(self, name)
            if not isinstance(values, tuple):
                raise SnapshotError(f"{name} must be a tuple of integers")
            for value in values:
                _check_u32(name, value)
        if len(self.palette) != R.NUM_PALETTE_REGS:
            raise SnapshotError(f"palette must hold {R.NUM_PALETTE_REGS} entries, not {len(self.palette)}")
        if not (isinstance(self.cursor_visible, bool) and isinstance(self.busy, bool)):
            raise SnapshotError("cursor_visible and busy must be booleans")
        for name in ("fb_start", "mem_start"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SnapshotError(f"{name} must be a non-negative integer, not {value!r}")
        if self.cursor is not None:
            _check_cursor(self.cursor)


@dataclass(slots=True)
class _Split:
    """A VALUE-port access arriving in pieces: direction, next byte offset expected, bytes so far."""

    write: bool
    next_offset: int
    value: int


class _Ring:
    """The FIFO's data area [min, max) for one pass, with wrap-around reads."""

    __slots__ = ("buf", "lo", "hi", "size")

    def __init__(self, buf: Buffer, lo: int, hi: int) -> None:
        self.buf, self.lo, self.hi, self.size = buf, lo, hi, hi - lo

    def advance(self, pos: int, nbytes: int) -> int:
        return self.lo + (pos - self.lo + nbytes) % self.size

    def words(self, pos: int, n: int) -> tuple[int, ...]:
        first = min(n, (self.hi - pos) // _WORD)
        out = _words_struct(first).unpack_from(self.buf, pos)
        if first < n:
            out += _words_struct(n - first).unpack_from(self.buf, self.lo)
        return out

    def data(self, pos: int, nbytes: int) -> bytes:
        first = min(nbytes, self.hi - pos)
        out = bytes(self.buf[pos : pos + first])
        if first < nbytes:
            out += bytes(self.buf[self.lo : self.lo + nbytes - first])
        return out


def as_buffer(buf: Buffer | int, what: str) -> Buffer:
    """A guest memory buffer (VRAM, FIFO) checked to be writable bytes, or a fresh one of that size."""
    if isinstance(buf, bool):
        raise TypeError(f"{what} must be a writable buffer or a size")
    if isinstance(buf, int):
        if buf <= 0:
            raise ValueError(f"{what} size must be positive, not {buf}")
        return bytearray(buf)
    if isinstance(buf, memoryview):
        if buf.readonly:
            raise ValueError(f"{what} buffer is read-only")
        return buf if buf.format == "B" and buf.ndim == 1 else buf.cast("B")
    if isinstance(buf, (bytearray, mmap.mmap)):
        return buf
    raise TypeError(f"{what} must be a bytearray, memoryview, mmap or size, not {type(buf).__name__}")


# ------------------------------------------------------------------------------------------- device
class SvgaII:
    """Registers, FIFO engine and 2D operations of one SVGA II adapter (SVGA_ID_2)."""

    def __init__(
        self,
        vram: Buffer | int = R.DEFAULT_VRAM_SIZE,
        fifo: Buffer | int = R.DEFAULT_FIFO_SIZE,
        *,
        max_width: int = R.MAX_WIDTH,
        max_height: int = R.MAX_HEIGHT,
        width: int = R.DEFAULT_WIDTH,
        height: int = R.DEFAULT_HEIGHT,
        scratch_size: int = R.DEFAULT_SCRATCH_SIZE,
        sync_max_commands: int = DEFAULT_MAX_COMMANDS,
    ) -> None:
        self.vram = as_buffer(vram, "VRAM")
        self.fifo = as_buffer(fifo, "FIFO")
        if len(self.fifo) < R.FIFO_NUM_BASIC_REGS * _WORD:
            raise ValueError(f"FIFO memory of {len(self.fifo)} bytes cannot hold the 4 FIFO registers")
        if not (0 < width <= max_width and 0 < height <= max_height):
            raise ValueError(f"initial mode {width}x{height} outside 1..{max_width}x1..{max_height}")
        if scratch_size < 0:
            raise ValueError("scratch_size must not be negative")
        self.max_width = max_width
        self.max_height = max_height
        self.sync_max_commands = max(1, sync_max_commands)
        self._initial_size = (width, height)
        self._scratch_size = scratch_size
        # Guest-physical addresses of BAR1 / BAR2: the trap source fills them in from PCI config space.
        self.fb_start = 0
        self.mem_start = 0
        self.reset()

    def reset(self) -> None:
        """Power-on register state (VRAM and FIFO contents are left alone, as on real hardware)."""
        self._index = 0
        self._svga_id = R.ID_2
        self._enable = 0
        self._width, self._height = self._initial_size
        self._bpp = R.DEFAULT_BPP
        self._pitchlock = 0
        self._config_done = 0
        self._guest_id = 0
        self._cursor_id = 0
        self._cursor_x = 0
        self._cursor_y = 0
        self._cursor_on = R.CURSOR_ON_HIDE
        self._cursor_visible = False
        self._cursor: Cursor | None = None
        self._irq_mask = 0
        self._irq_status = 0
        self._busy = False
        self._scratch = [0] * self._scratch_size
        self._palette = [0] * R.NUM_PALETTE_REGS
        self._split: _Split | None = None
        self._queued = FifoResult()
        self._update_mode()

    # ------------------------------------------------------------------------------ guest port accesses
    def read(self, offset: int, size: int) -> int:
        """A guest read of `size` bytes at `offset` in BAR0.

        A BUSY read may run the FIFO; what that pass produced waits for `take_pending` (or the next result).
        """
        if offset == _VALUE_PORT and size == _WORD and self._split is None:  # the usual read: one whole register
            return self._read_register(self._index) & _U32
        _check_access(offset, size)
        split = self._split
        if split is not None and not split.write and offset == split.next_offset:
            if offset + size <= R.VALUE_PORT_END:
                shift = (offset - R.VALUE_PORT) * _BITS_PER_BYTE
                split.next_offset += size
                if split.next_offset == R.VALUE_PORT_END:
                    self._split = None
                return (split.value >> shift) & _mask(size)
        self._abandon_split(self._queued)
        if offset == R.VALUE_PORT:
            value = self._read_register(self._index)
            if size < _WORD:  # first piece of a split read: latch the whole register
                self._split = _Split(False, R.VALUE_PORT + size, value)
            return value & _mask(size)
        if offset == R.INDEX_PORT:
            return self._index & _mask(size)
        if R.IRQSTATUS_PORT <= offset < R.IRQSTATUS_PORT + _WORD:
            lane = (offset - R.IRQSTATUS_PORT) * _BITS_PER_BYTE
            return (self._irq_status >> lane) & _mask(size)
        return 0  # BIOS port and the unused bytes of the BAR

    def reselects(self, offset: int, size: int, value: int) -> bool:
        """The write selects the register already selected, with no split access open: it changes nothing (a
        driver polling BUSY writes the same INDEX before every VALUE read)."""
        return offset == R.INDEX_PORT and size == _WORD and value == self._index and self._split is None

    def write(self, offset: int, size: int, value: int) -> FifoResult:
        """A guest write to BAR0; the result carries what it caused (a SYNC write runs the FIFO)."""
        _check_access(offset, size)
        res = self.take_pending()
        value &= _mask(size)
        split = self._split
        if split is not None and split.write and offset == split.next_offset:
            if offset + size <= R.VALUE_PORT_END:
                split.value |= value << ((offset - R.VALUE_PORT) * _BITS_PER_BYTE)
                split.next_offset += size
                if split.next_offset == R.VALUE_PORT_END:
                    self._split = None
                    self._write_register(self._index, split.value, res)
                return res
        self._abandon_split(res)
        if offset == R.VALUE_PORT:
            if size == _WORD:
                self._write_register(self._index, value, res)
            else:  # first piece of a split write: wait for the rest
                self._split = _Split(True, R.VALUE_PORT + size, value)
        elif offset == R.INDEX_PORT:
            self._index = (self._index & ~_mask(size)) | value
        elif R.IRQSTATUS_PORT <= offset < R.IRQSTATUS_PORT + _WORD:
            self._irq_status &= ~(value << ((offset - R.IRQSTATUS_PORT) * _BITS_PER_BYTE))
        return res

    def read_register(self, index: int) -> int:
        """INDEX then VALUE, as a driver reads a register (for tests and scripted guests).

        Nothing is lost: what the INDEX write handed back stays pending for `take_pending`.
        """
        res = self.write(R.INDEX_PORT, _WORD, index)
        res.merge(self._queued)
        self._queued = res
        return self.read(R.VALUE_PORT, _WORD)

    def write_register(self, index: int, value: int) -> FifoResult:
        """INDEX then VALUE, as a driver writes a register; returns what the write caused."""
        res = self.write(R.INDEX_PORT, _WORD, index)
        res.merge(self.write(R.VALUE_PORT, _WORD, value))
        return res

    def _abandon_split(self, res: FifoResult) -> None:
        split, self._split = self._split, None
        if split is not None and split.write:
            got = split.next_offset - R.VALUE_PORT
            res.errors.append(f"VALUE port write of {got} of 4 bytes was not completed; dropped")

    # ------------------------------------------------------------------------------ caller interface
    def process_fifo(self, max_commands: int = DEFAULT_MAX_COMMANDS) -> FifoResult:
        """Run one FIFO pass of at most `max_commands` commands (plus anything queued by earlier reads)."""
        res = self.take_pending()
        res.merge(self._run_pass(max(1, max_commands)))
        return res

    @property
    def has_pending(self) -> bool:
        """Port reads caused something since the last `take_pending` (cheaper to ask than to take)."""
        q = self._queued
        return bool(q.ran or q.effects or q.errors or q.commands)

    def take_pending(self) -> FifoResult:
        """What port reads caused since the last result (a BUSY read may run the FIFO); clears it."""
        res, self._queued = self._queued, FifoResult()
        return res

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def surface(self) -> Surface | None:
        """Where the visible framebuffer is in VRAM, or None when the mode does not fit VRAM."""
        return self._surface

    @property
    def cursor(self) -> Cursor | None:
        return self._cursor

    @property
    def cursor_position(self) -> CursorMoved:
        return CursorMoved(_signed32(self._cursor_x), _signed32(self._cursor_y), self._cursor_visible)

    @property
    def irq_pending(self) -> bool:
        """The interrupt line: a pending flag the guest enabled in IRQMASK."""
        return bool(self._irq_status & self._irq_mask)

    @property
    def busy(self) -> bool:
        return self._busy

    def read_framebuffer(self, rect: Rect | None = None) -> tuple[Rect, bytes]:
        """Pixels of `rect` (default: the whole visible framebuffer) as packed rows.

        The rectangle is clipped to the current mode; the rect actually read comes back with the bytes
        (EMPTY and b"" when nothing is visible or the mode does not fit VRAM).
        """
        surface = self._surface
        if surface is None:
            return EMPTY, b""
        clipped = surface.bounds if rect is None else raster.clip(rect, surface.width, surface.height)
        if clipped.empty:
            return EMPTY, b""
        return clipped, raster.read_rect(self.vram, surface, clipped)

    def palette_rgb(self) -> bytes:
        """The 256-entry palette as 768 bytes (r, g, b), for 8-bit pseudocolor modes."""
        return bytes(self._palette)

    # ------------------------------------------------------------------------------ registers
    def _update_mode(self, res: FifoResult | None = None) -> None:
        bypp = self._bpp // _BITS_PER_BYTE
        pitch = self._pitchlock or -(-self._width * bypp // _WORD) * _WORD
        mode = Mode(
            width=self._width,
            height=self._height,
            bpp=self._bpp,
            depth=R.DEPTH_FOR_BPP[self._bpp],
            pitch=pitch,
            fb_offset=0,
            enabled=bool(self._enable & R.ENABLE_ENABLE),
            hidden=bool(self._enable & R.ENABLE_HIDE),
        )
        if res is not None and mode != self._mode:
            res.effects.append(ModeChanged(mode))
        self._mode = mode
        surface = mode.surface
        ok = surface.fits(len(self.vram)) and mode.width > 0 and mode.height > 0
        self._surface = surface if ok else None

    def _read_register(self, index: int) -> int:
        mode = self._mode
        match index:
            case R.REG_ID:
                return self._svga_id
            case R.REG_ENABLE:
                return self._enable
            case R.REG_WIDTH:
                return self._width
            case R.REG_HEIGHT:
                return self._height
            case R.REG_MAX_WIDTH:
                return self.max_width
            case R.REG_MAX_HEIGHT:
                return self.max_height
            case R.REG_DEPTH:
                return mode.depth
            case R.REG_BITS_PER_PIXEL:
                return self._bpp
            case R.REG_PSEUDOCOLOR:
                return int(self._bpp == _PSEUDOCOLOR_BPP)
            case R.REG_RED_MASK | R.REG_GREEN_MASK | R.REG_BLUE_MASK:
                return R.MASKS_FOR_BPP[self._bpp][index - R.REG_RED_MASK]
            case R.REG_BYTES_PER_LINE:
                return mode.pitch & _U32
            case R.REG_FB_START:
                return self.fb_start & _U32
            case R.REG_FB_OFFSET:
                return mode.fb_offset
            case R.REG_VRAM_SIZE | R.REG_FB_SIZE:
                return min(len(self.vram), _U32)
            case R.REG_CAPABILITIES:
                return CAPABILITIES
            case R.REG_MEM_START:
                return self.mem_start & _U32
            case R.REG_MEM_SIZE:
                return min(len(self.fifo), _U32)
            case R.REG_CONFIG_DONE:
                return self._config_done
            case R.REG_SYNC:
                return int(self._busy)
            case R.REG_BUSY:
                return self._read_busy()
            case R.REG_GUEST_ID:
                return self._guest_id
            case R.REG_CURSOR_ID:
                return self._cursor_id
            case R.REG_CURSOR_X:
                return self._cursor_x
            case R.REG_CURSOR_Y:
                return self._cursor_y
            case R.REG_CURSOR_ON:
                return self._cursor_on
            case R.REG_HOST_BITS_PER_PIXEL:
                return R.HOST_BITS_PER_PIXEL
            case R.REG_SCRATCH_SIZE:
                return self._scratch_size
            case R.REG_MEM_REGS:
                return R.FIFO_NUM_REGS
            case R.REG_NUM_DISPLAYS:
                return R.NUM_DISPLAYS
            case R.REG_PITCHLOCK:
                return self._pitchlock
            case R.REG_IRQMASK:
                return self._irq_mask
        if R.PALETTE_BASE <= index < R.PALETTE_END:
            return self._palette[index - R.PALETTE_BASE]
        if R.SCRATCH_BASE <= index < R.SCRATCH_BASE + self._scratch_size:
            return self._scratch[index - R.SCRATCH_BASE]
        return 0  # registers this device does not have read as zero

    def _read_busy(self) -> int:
        # Reading BUSY drains the FIFO (drivers poll it after SYNC). The result waits in the queue; a caller
        # that never collects it makes BUSY stay set once the queue is full rather than grow without bound.
        if self._busy and len(self._queued.effects) < QUEUE_LIMIT:
            self._queued.merge(self._run_pass(self.sync_max_commands))
        return int(self._busy)

    def _write_register(self, index: int, value: int, res: FifoResult) -> None:
        match index:
            case R.REG_ID:
                # An ID we do not speak leaves the old one: the guest reads back a different value and knows.
                if value in R.SUPPORTED_IDS:
                    self._svga_id = value
            case R.REG_ENABLE:
                self._enable = value & R.ENABLE_MASK
                self._update_mode(res)
            case R.REG_WIDTH | R.REG_HEIGHT:
                limit = self.max_width if index == R.REG_WIDTH else self.max_height
                if value > limit:
                    res.errors.append(f"{'width' if index == R.REG_WIDTH else 'height'} {value} > {limit}")
                    return
                if index == R.REG_WIDTH:
                    self._width = value
                else:
                    self._height = value
                self._update_mode(res)
            case R.REG_BITS_PER_PIXEL:
                if value not in R.SUPPORTED_BPP:
                    res.errors.append(f"{value} bits per pixel not supported (have {R.SUPPORTED_BPP})")
                    return
                self._bpp = value
                self._update_mode(res)
            case R.REG_PITCHLOCK:
                self._pitchlock = value
                self._update_mode(res)
            case R.REG_CONFIG_DONE:
                self._config_done = int(bool(value))
                if self._config_done:
                    self._init_fifo_registers()
            case R.REG_SYNC:
                self._busy = True
                res.merge(self._run_pass(self.sync_max_commands))
            case R.REG_GUEST_ID:
                self._guest_id = value
            case R.REG_CURSOR_ID:
                self._cursor_id = value
            case R.REG_CURSOR_X:
                self._cursor_x = value
            case R.REG_CURSOR_Y:
                self._cursor_y = value
            case R.REG_CURSOR_ON:
                # SHOW / HIDE commit a position; REMOVE_FROM_FB / RESTORE_TO_FB concern software cursors
                # drawn into the framebuffer, which a host-side cursor never is.
                self._cursor_on = value
                if value in (R.CURSOR_ON_HIDE, R.CURSOR_ON_SHOW):
                    self._cursor_visible = value == R.CURSOR_ON_SHOW
                    res.effects.append(self.cursor_position)
            case R.REG_IRQMASK:
                self._irq_mask = value & R.IRQFLAG_MASK
            case (
                R.REG_MAX_WIDTH
                | R.REG_MAX_HEIGHT
                | R.REG_DEPTH
                | R.REG_PSEUDOCOLOR
                | R.REG_RED_MASK
                | R.REG_GREEN_MASK
                | R.REG_BLUE_MASK
                | R.REG_BYTES_PER_LINE
                | R.REG_FB_START
                | R.REG_FB_OFFSET
                | R.REG_VRAM_SIZE
                | R.REG_FB_SIZE
                | R.REG_CAPABILITIES
                | R.REG_MEM_START
                | R.REG_MEM_SIZE
                | R.REG_BUSY
                | R.REG_HOST_BITS_PER_PIXEL
                | R.REG_SCRATCH_SIZE
                | R.REG_MEM_REGS
                | R.REG_NUM_DISPLAYS
                | R.REG_TRACES
            ):
                pass  # read-only, or (TRACES) not implemented: writes are ignored, as on the device
            case _:
                if R.PALETTE_BASE <= index < R.PALETTE_END:
                    self._palette[index - R.PALETTE_BASE] = value & 0xFF  # 8 bits per colour component
                elif R.SCRATCH_BASE <= index < R.SCRATCH_BASE + self._scratch_size:
                    self._scratch[index - R.SCRATCH_BASE] = value
                else:
                    res.errors.append(f"write of {value:#x} to unknown register {index} ignored")

    def _init_fifo_registers(self) -> None:
        """At CONFIG_DONE, fill in the extended FIFO registers the guest left room for (all say 'none')."""
        lo = _words_struct(1).unpack_from(self.fifo, R.FIFO_MIN * _WORD)[0]
        limit = min(lo, len(self.fifo))
        for reg, value in ((R.FIFO_CAPABILITIES, FIFO_CAPABILITIES), (R.FIFO_FLAGS, R.FIFO_FLAG_NONE)):
            if (reg + 1) * _WORD <= limit:
                _words_struct(1).pack_into(self.fifo, reg * _WORD, value)

    def _fifo_register(self, reg: int, lo: int) -> int | None:
        """FIFO register `reg` if the guest's MIN leaves room for it, else None."""
        if (reg + 1) * _WORD > lo:
            return None
        return _words_struct(1).unpack_from(self.fifo, reg * _WORD)[0]

    def _set_fifo_register(self, reg: int, lo: int, value: int) -> None:
        if (reg + 1) * _WORD <= lo:
            _words_struct(1).pack_into(self.fifo, reg * _WORD, value & _U32)

    # ------------------------------------------------------------------------------ FIFO engine
    def _layout_problem(self, lo: int, hi: int, nxt: int, stop: int) -> str | None:
        regs = f"MIN={lo:#x} MAX={hi:#x} NEXT_CMD={nxt:#x} STOP={stop:#x}"
        if (lo | hi | nxt | stop) & (_WORD - 1):
            return f"FIFO registers not word aligned ({regs})"
        if lo < R.FIFO_NUM_BASIC_REGS * _WORD:
            return f"FIFO MIN overlaps the 4 FIFO registers ({regs})"
        if hi > len(self.fifo):
            return f"FIFO MAX beyond the {len(self.fifo)}-byte FIFO memory ({regs})"
        if lo >= hi:
            return f"FIFO MIN not below MAX ({regs})"
        if not (lo <= nxt < hi and lo <= stop < hi):
            return f"FIFO NEXT_CMD or STOP outside [MIN, MAX) ({regs})"
        return None

    @property
    def fifo_enabled(self) -> bool:
        """The driver has turned the FIFO on (ENABLE and CONFIG_DONE): a pass may find commands."""
        return bool(self._config_done and self._enable & R.ENABLE_ENABLE)

    def _run_pass(self, max_commands: int) -> FifoResult:
        res = FifoResult()
        if not self.fifo_enabled:
            self._busy = False
            return res
        lo, hi, nxt, stop = _words_struct(R.FIFO_NUM_BASIC_REGS).unpack_from(self.fifo, 0)
        problem = self._layout_problem(lo, hi, nxt, stop)
        if problem:
            res.errors.append(problem + "; FIFO not processed")
            self._irq_status |= R.IRQFLAG_ERROR
            self._busy = False
            return res
        res.ran = True
        self._set_fifo_register(R.FIFO_BUSY, lo, 0)
        # NEXT_CMD may have moved since the first read; take it again after clearing the busy word.
        nxt = _words_struct(1).unpack_from(self.fifo, R.FIFO_NEXT_CMD * _WORD)[0]
        if nxt & (_WORD - 1) or not lo <= nxt < hi:
            nxt = stop  # went bad in between: process nothing this time, report on the next pass
        ring = _Ring(self.fifo, lo, hi)
        pos = stop
        avail = (nxt - stop) % ring.size
        while avail:
            if res.commands >= max_commands:
                res.bounded = True
                break
            cmd = ring.words(pos, 1)[0]
            length = self._measure(ring, pos, cmd, avail)
            if length is None:  # header not complete yet
                res.partial = True
                break
            if isinstance(length, str) or length * _WORD > ring.size - _WORD:
                why = length if isinstance(length, str) else f"{_cmd_name(cmd)} of {length} words"
                res.errors.append(f"{why} cannot be measured or never fits the FIFO; skipped to NEXT_CMD")
                res.commands += 1
                res.skipped += 1
                pos, avail = nxt, 0
                break
            if length * _WORD > avail:
                res.partial = True
                break
            self._execute(ring, pos, cmd, length, lo, res)
            res.commands += 1
            pos = ring.advance(pos, length * _WORD)
            avail -= length * _WORD
        _words_struct(1).pack_into(self.fifo, R.FIFO_STOP * _WORD, pos)
        if res.commands:
            self._irq_status |= R.IRQFLAG_FIFO_PROGRESS
        if res.errors:
            self._irq_status |= R.IRQFLAG_ERROR
        self._busy = res.bounded
        return res

    def _measure(self, ring: _Ring, pos: int, cmd: int, avail: int) -> int | str | None:
        """Length in words of the command at `pos`; None if its header is incomplete; str if unknowable."""
        fixed = R.CMD_WORDS.get(cmd)
        if fixed is not None:
            return fixed
        if cmd == R.CMD_DEFINE_CURSOR:
            header = R.DEFINE_CURSOR_HEADER_WORDS
        elif cmd == R.CMD_DEFINE_ALPHA_CURSOR:
            header = R.DEFINE_ALPHA_CURSOR_HEADER_WORDS
        elif cmd == R.CMD_ESCAPE:
            header = R.ESCAPE_HEADER_WORDS
        elif cmd == R.CMD_DEFINE_SCREEN:
            header = R.DEFINE_SCREEN_HEADER_WORDS
        elif R.CMD_3D_FIRST <= cmd <= R.CMD_3D_LAST:
            header = R.CMD_3D_HEADER_WORDS
        else:
            return f"unknown command {cmd}"
        if header * _WORD > avail:
            return None
        w = ring.words(pos, header)
        if cmd == R.CMD_DEFINE_CURSOR:
            width, height, and_depth, xor_depth = w[4], w[5], w[6], w[7]
            if not (1 <= and_depth <= 32 and 1 <= xor_depth <= 32):
                return f"DEFINE_CURSOR with mask depths {and_depth}/{xor_depth}"
            return header + _mask_words(width, height, and_depth) + _mask_words(width, height, xor_depth)
        if cmd == R.CMD_DEFINE_ALPHA_CURSOR:
            return header + w[4] * w[5]
        if cmd == R.CMD_ESCAPE:
            return header + -(-w[2] // _WORD)
        if cmd == R.CMD_DEFINE_SCREEN:
            if w[1] < _WORD:
                return f"DEFINE_SCREEN with a {w[1]}-byte screen object"
            return 1 + -(-w[1] // _WORD)
        return header + -(-w[1] // _WORD)  # SVGA3D: id, size in bytes, body

    def _execute(self, ring: _Ring, pos: int, cmd: int, length: int, lo: int, res: FifoResult) -> None:
        if cmd in (R.CMD_UPDATE, R.CMD_UPDATE_VERBOSE):
            _, x, y, w, h = ring.words(pos, 5)
            self._update(Rect(x, y, w, h), res)
        elif cmd == R.CMD_RECT_FILL:
            _, color, x, y, w, h = ring.words(pos, length)
            self._fill(Rect(x, y, w, h), color, res)
        elif cmd == R.CMD_RECT_COPY:
            _, sx, sy, dx, dy, w, h = ring.words(pos, length)
            self._copy(Rect(sx, sy, w, h), dx, dy, res)
        elif cmd == R.CMD_RECT_ROP_COPY:
            _, sx, sy, dx, dy, w, h, rop = ring.words(pos, length)
            if rop == R.ROP_COPY:
                self._copy(Rect(sx, sy, w, h), dx, dy, res)
            else:
                res.errors.append(f"RECT_ROP_COPY with raster op {rop:#x} not supported; skipped")
                res.skipped += 1
        elif cmd in (R.CMD_DEFINE_CURSOR, R.CMD_DEFINE_ALPHA_CURSOR):
            self._define_cursor(ring, pos, cmd, res)
        elif cmd == R.CMD_FENCE:
            fence_id = ring.words(pos, 2)[1]
            res.effects.append(Fence(fence_id))
            self._set_fifo_register(R.FIFO_FENCE, lo, fence_id)
            self._irq_status |= R.IRQFLAG_ANY_FENCE
            if self._fifo_register(R.FIFO_FENCE_GOAL, lo) == fence_id:
                self._irq_status |= R.IRQFLAG_FENCE_GOAL
        elif cmd in (R.CMD_INVALID_CMD, R.CMD_NOP):
            pass
        else:
            res.errors.append(f"{_cmd_name(cmd)} not supported; skipped {length} words")
            res.skipped += 1

    def _refuse(self, what: str, res: FifoResult) -> None:
        res.errors.append(what)
        res.skipped += 1

    def _update(self, rect: Rect, res: FifoResult) -> None:
        surface = self._surface
        if rect.empty:
            return
        if surface is None:
            return self._refuse(f"UPDATE {rect} with no framebuffer that fits VRAM", res)
        clipped = raster.clip(rect, surface.width, surface.height)
        if clipped.empty:
            return self._refuse(f"UPDATE {rect} outside the {surface.width}x{surface.height} framebuffer", res)
        res.clipped += clipped != rect
        res.effects.append(Update(clipped))

    def _fill(self, rect: Rect, color: int, res: FifoResult) -> None:
        surface = self._surface
        if rect.empty:
            return
        if surface is None:
            return self._refuse(f"RECT_FILL {rect} with no framebuffer that fits VRAM", res)
        clipped = raster.clip(rect, surface.width, surface.height)
        if clipped.empty:
            return self._refuse(f"RECT_FILL {rect} outside the {surface.width}x{surface.height} framebuffer", res)
        color &= _mask(surface.bytes_per_pixel)
        raster.fill(self.vram, surface, clipped, color)
        res.clipped += clipped != rect
        res.effects.append(Fill(clipped, color))

    def _copy(self, src: Rect, dst_x: int, dst_y: int, res: FifoResult) -> None:
        surface = self._surface
        if src.empty:
            return
        if surface is None:
            return self._refuse(f"RECT_COPY {src} with no framebuffer that fits VRAM", res)
        clipped, dx, dy = raster.clip_copy(src, dst_x, dst_y, surface.width, surface.height)
        if clipped.empty:
            return self._refuse(
                f"RECT_COPY {src} to ({dst_x}, {dst_y}) outside the {surface.width}x{surface.height} framebuffer",
                res,
            )
        raster.copy(self.vram, surface, clipped, dx, dy)
        res.clipped += clipped != src or (dx, dy) != (dst_x, dst_y)
        res.effects.append(Copy(clipped.x, clipped.y, Rect(dx, dy, clipped.w, clipped.h)))

    def _define_cursor(self, ring: _Ring, pos: int, cmd: int, res: FifoResult) -> None:
        alpha = cmd == R.CMD_DEFINE_ALPHA_CURSOR
        header = R.DEFINE_ALPHA_CURSOR_HEADER_WORDS if alpha else R.DEFINE_CURSOR_HEADER_WORDS
        w = ring.words(pos, header)
        hot_x, hot_y, width, height = w[2], w[3], w[4], w[5]
        if not (1 <= width <= R.MAX_CURSOR_SIZE and 1 <= height <= R.MAX_CURSOR_SIZE):
            return self._refuse(f"{_cmd_name(cmd)} of {width}x{height} (limit {R.MAX_CURSOR_SIZE}); skipped", res)
        data_pos = ring.advance(pos, header * _WORD)
        if alpha:
            argb = ring.data(data_pos, width * height * _WORD)
        else:
            and_depth, xor_depth = w[6], w[7]
            if and_depth not in (1, 32) or xor_depth not in (1, 32):
                return self._refuse(f"DEFINE_CURSOR with mask depths {and_depth}/{xor_depth}; skipped", res)
            and_bytes = _mask_words(width, height, and_depth) * _WORD
            xor_bytes = _mask_words(width, height, xor_depth) * _WORD
            and_mask = ring.data(data_pos, and_bytes)
            xor_mask = ring.data(ring.advance(data_pos, and_bytes), xor_bytes)
            argb = _and_xor_to_argb(width, height, and_mask, and_depth, xor_mask, xor_depth)
        cursor = Cursor(width, height, min(hot_x, width - 1), min(hot_y, height - 1), argb)
        self._cursor = cursor
        res.effects.append(CursorDefined(cursor))

    # ------------------------------------------------------------------------------ state
    def snapshot(self) -> SvgaState:
        """All register state (not VRAM or FIFO memory)."""
        return SvgaState(
            **{name: getattr(self, "_" + name) for name in SvgaState.SCALARS},
            cursor_visible=self._cursor_visible,
            busy=self._busy,
            fb_start=self.fb_start,
            mem_start=self.mem_start,
            scratch=tuple(self._scratch),
            palette=tuple(self._palette),
            cursor=self._cursor,
        )

    def restore(self, state: SvgaState) -> None:
        """Take over `state`; raises SnapshotError (leaving the device unchanged) if this device cannot hold it."""
        if not isinstance(state, SvgaState):
            raise SnapshotError(f"an SvgaState is needed, not {type(state).__name__}")
        if state.width > self.max_width or state.height > self.max_height:
            raise SnapshotError(f"mode {state.width}x{state.height} beyond the maximum")
        if len(state.scratch) != self._scratch_size:
            raise SnapshotError(f"scratch must hold {self._scratch_size} registers, not {len(state.scratch)}")
        for name in SvgaState.SCALARS:
            setattr(self, "_" + name, getattr(state, name))
        self._enable &= R.ENABLE_MASK
        self._config_done = int(bool(self._config_done))
        self._irq_mask &= R.IRQFLAG_MASK
        self._irq_status &= R.IRQFLAG_MASK
        self._cursor_visible, self._busy = state.cursor_visible, state.busy
        self.fb_start, self.mem_start = state.fb_start, state.mem_start
        self._scratch = list(state.scratch)
        self._palette = [v & 0xFF for v in state.palette]
        self._cursor = state.cursor
        self._split = None
        self._queued = FifoResult()
        self._update_mode()


def _check_access(offset: int, size: int) -> None:
    if size not in (1, 2, 4) or not 0 <= offset or offset + size > R.IO_BAR_SIZE:
        raise AccessError(f"{size}-byte access at offset {offset} is outside the {R.IO_BAR_SIZE}-byte BAR0")


def _mask_words(width: int, height: int, depth: int) -> int:
    """Words of one cursor mask: every scanline padded to a 32-bit boundary."""
    return -(-width * depth // 32) * height


def _and_xor_to_argb(
    width: int, height: int, and_mask: bytes, and_depth: int, xor_mask: bytes, xor_depth: int
) -> bytes:
    """Turn an AND/XOR cursor into ARGB.

    1-bit masks are read most significant bit first in each byte (as QEMU and the guest drivers lay them
    out); 32-bit masks are little-endian pixels. AND clear: the XOR colour, opaque. AND set and XOR zero:
    transparent. AND set and XOR non-zero would invert the screen, which ARGB cannot express: drawn opaque in
    the XOR colour (white for a monochrome cursor) so the cursor stays visible.
    """
    and_pitch = -(-width * and_depth // 32) * _WORD
    xor_pitch = -(-width * xor_depth // 32) * _WORD
    white = 0xFFFFFF
    opaque = 0xFF000000
    pixels: list[int] = []
    for y in range(height):
        and_row = _row_values(and_mask[y * and_pitch : (y + 1) * and_pitch], width, and_depth)
        xor_row = _row_values(xor_mask[y * xor_pitch : (y + 1) * xor_pitch], width, xor_depth)
        for a, x in zip(and_row, xor_row, strict=True):
            color = (white if x else 0) if xor_depth == 1 else x & white
            keep_screen = a != 0 if and_depth == 1 else (a & white) != 0
            pixels.append(0 if keep_screen and color == 0 else opaque | color)
    return _words_struct(len(pixels)).pack(*pixels)


def _row_values(row: bytes, width: int, depth: int) -> list[int]:
    if depth == 1:
        return [(row[x >> 3] >> (7 - (x & 7))) & 1 for x in range(width)]
    return list(_words_struct(width).unpack_from(row, 0))


def _check_u32(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
        raise SnapshotError(f"{name} must be a 32-bit unsigned integer, not {value!r}")


def _check_cursor(cursor: object) -> None:
    if not isinstance(cursor, Cursor):
        raise SnapshotError(f"cursor must be a Cursor or None, not {type(cursor).__name__}")
    for name in ("width", "height", "hot_x", "hot_y"):
        _check_u32(f"cursor {name}", getattr(cursor, name))
    if not (1 <= cursor.width <= R.MAX_CURSOR_SIZE and 1 <= cursor.height <= R.MAX_CURSOR_SIZE):
        raise SnapshotError(f"cursor size {cursor.width}x{cursor.height} out of range")
    if not isinstance(cursor.argb, bytes) or len(cursor.argb) != cursor.width * cursor.height * _WORD:
        raise SnapshotError("cursor image does not match its size")
    if cursor.hot_x >= cursor.width or cursor.hot_y >= cursor.height:
        raise SnapshotError("cursor hotspot outside the image")


__all__ = [
    "CAPABILITIES",
    "AccessError",
    "Copy",
    "Cursor",
    "CursorDefined",
    "CursorMoved",
    "Effect",
    "Fence",
    "FifoResult",
    "Fill",
    "Mode",
    "ModeChanged",
    "SnapshotError",
    "SvgaII",
    "SvgaState",
    "as_buffer",
    "Update",
]
