"""The SVGA II model driven the way a guest driver drives it: registers, FIFO, 2D operations, cursor."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend_shim.guests.scripted_svga import FifoWriter
from services.common.raster import Rect
from services.devices import svga_regs as R
from services.devices.svga import (
    CAPABILITIES,
    AccessError,
    Copy,
    Cursor,
    CursorDefined,
    CursorMoved,
    Fence,
    FifoResult,
    Fill,
    Mode,
    ModeChanged,
    SnapshotError,
    SvgaII,
    Update,
)
from services.devices.svga_convert import registers_from_proto, registers_to_proto

W, H = 16, 12
PITCH = W * 4 + 12  # pitchlock with padding, so bytes between rows exist and must stay untouched
TAIL = 64
SENTINEL = 0xA5
FIFO_SIZE = 8192
FIFO_MIN = 4096  # what Linux picks (one page): leaves room for every FIFO register incl. word 290


def pattern(x: int, y: int) -> int:
    return 0x00100000 | (y << 8) | x


def configure(dev: SvgaII, width: int = W, height: int = H, pitch: int = PITCH, bpp: int = 32) -> None:
    """The register sequence of Linux vmwgfx: negotiate, enable, mode (pitchlock first)."""
    dev.write_register(R.REG_ID, R.ID_2)
    assert dev.read_register(R.REG_ID) == R.ID_2
    dev.write_register(R.REG_ENABLE, R.ENABLE_ENABLE | R.ENABLE_HIDE)
    dev.write_register(R.REG_PITCHLOCK, pitch)
    dev.write_register(R.REG_WIDTH, width)
    dev.write_register(R.REG_HEIGHT, height)
    dev.write_register(R.REG_BITS_PER_PIXEL, bpp)


def make(**kw: int) -> tuple[SvgaII, FifoWriter]:
    """A configured device whose framebuffer holds `pattern` and whose VRAM elsewhere holds SENTINEL."""
    vram = bytearray([SENTINEL]) * (PITCH * H + TAIL)
    dev = SvgaII(vram=vram, fifo=FIFO_SIZE, width=W, height=H, **kw)
    configure(dev)
    for y in range(H):
        for x in range(W):
            struct.pack_into("<I", dev.vram, y * PITCH + x * 4, pattern(x, y))
    writer = FifoWriter(dev.fifo, min_offset=FIFO_MIN)
    res = dev.write_register(R.REG_CONFIG_DONE, 1)
    assert not res.errors
    return dev, writer


def pixels(dev: SvgaII) -> list[list[int]]:
    return [[struct.unpack_from("<I", dev.vram, y * PITCH + x * 4)[0] for x in range(W)] for y in range(H)]


def reference() -> list[list[int]]:
    return [[pattern(x, y) for x in range(W)] for y in range(H)]


def outside_intact(dev: SvgaII) -> bool:
    """Row padding and the VRAM after the framebuffer still hold SENTINEL."""
    for y in range(H):
        pad = dev.vram[y * PITCH + W * 4 : (y + 1) * PITCH]
        if y < H - 1 and any(b != SENTINEL for b in pad):
            return False
    return all(b == SENTINEL for b in dev.vram[(H - 1) * PITCH + W * 4 :])


def fifo_word(dev: SvgaII, index: int) -> int:
    return struct.unpack_from("<I", dev.fifo, index * 4)[0]


def sync(dev: SvgaII, writer: FifoWriter) -> FifoResult:
    res = writer.ping(dev)
    assert res is not None
    return res


# --------------------------------------------------------------------------------------------- registers
def test_id_negotiation() -> None:
    dev = SvgaII(vram=4096, fifo=4096, width=8, height=8)
    assert dev.read_register(R.REG_ID) == R.ID_2
    dev.write_register(R.REG_ID, R.ID_1)
    assert dev.read_register(R.REG_ID) == R.ID_1
    dev.write_register(R.REG_ID, R.make_id(3))  # SVGA3 is not this device: the old id stays
    assert dev.read_register(R.REG_ID) == R.ID_1
    dev.write_register(R.REG_ID, 0x12345678)
    assert dev.read_register(R.REG_ID) == R.ID_1
    dev.write_register(R.REG_ID, R.ID_2)
    assert dev.read_register(R.REG_ID) == R.ID_2


def test_capabilities_satisfy_linux_probe_and_claim_only_what_exists() -> None:
    dev = SvgaII(vram=4096, fifo=4096, width=8, height=8)
    caps = dev.read_register(R.REG_CAPABILITIES)
    assert caps == CAPABILITIES == 0x000202E3
    # vmwgfx refuses a device with none of these ("Hardware has no pitchlock").
    assert caps & R.CAP_PITCHLOCK
    for cap in (R.CAP_RECT_FILL, R.CAP_RECT_COPY, R.CAP_CURSOR, R.CAP_ALPHA_CURSOR):
        assert caps & cap
    # Not implemented, so not claimed (IRQMASK would make Linux wait for interrupts that never come).
    for cap in (
        R.CAP_IRQMASK,
        R.CAP_EXTENDED_FIFO,
        R.CAP_3D,
        R.CAP_GMR,
        R.CAP_GMR2,
        R.CAP_DISPLAY_TOPOLOGY,
        R.CAP_8BIT_EMULATION,
        R.CAP_RASTER_OP,
        R.CAP_MULTIMON,
        R.CAP_SCREEN_OBJECT_2,
        R.CAP_COMMAND_BUFFERS,
        R.CAP_CAP2_REGISTER,
        R.CAP_TRACES,
    ):
        assert not caps & cap


def test_linux_probe_registers() -> None:
    vram, fifo = bytearray(1 << 20), bytearray(65536)
    dev = SvgaII(vram=vram, fifo=fifo, width=800, height=600)
    dev.fb_start, dev.mem_start = 0xE0000000, 0xFE000000
    assert dev.read_register(R.REG_NUM_DISPLAYS) == 1
    assert dev.read_register(R.REG_DEPTH) == 24
    assert dev.read_register(R.REG_BITS_PER_PIXEL) == 32
    assert dev.read_register(R.REG_HOST_BITS_PER_PIXEL) == 32
    assert dev.read_register(R.REG_BUSY) == 0
    assert dev.read_register(R.REG_VRAM_SIZE) == len(vram)
    assert dev.read_register(R.REG_FB_SIZE) == len(vram)
    assert dev.read_register(R.REG_MEM_SIZE) == len(fifo)
    assert dev.read_register(R.REG_FB_START) == 0xE0000000
    assert dev.read_register(R.REG_MEM_START) == 0xFE000000
    assert dev.read_register(R.REG_FB_OFFSET) == 0
    assert (dev.read_register(R.REG_MAX_WIDTH), dev.read_register(R.REG_MAX_HEIGHT)) == (R.MAX_WIDTH, R.MAX_HEIGHT)
    assert (dev.read_register(R.REG_WIDTH), dev.read_register(R.REG_HEIGHT)) == (800, 600)
    masks = [dev.read_register(r) for r in (R.REG_RED_MASK, R.REG_GREEN_MASK, R.REG_BLUE_MASK)]
    assert masks == [0xFF0000, 0xFF00, 0xFF]
    assert dev.read_register(R.REG_PSEUDOCOLOR) == 0
    assert dev.read_register(R.REG_MEM_REGS) == R.FIFO_NUM_REGS
    assert dev.read_register(R.REG_SCRATCH_SIZE) == R.DEFAULT_SCRATCH_SIZE
    assert dev.read_register(R.REG_CONFIG_DONE) == 0
    dev.write_register(R.REG_GUEST_ID, 0x5007)
    assert dev.read_register(R.REG_GUEST_ID) == 0x5007
    # Linux writes SVGA_REG_TRACES (45) on load and unload: ignored quietly, and reads as zero.
    assert not dev.write_register(R.REG_TRACES, 0).errors
    assert dev.read_register(R.REG_TRACES) == 0


def test_scratch_palette_and_unknown_registers() -> None:
    dev = SvgaII(vram=4096, fifo=4096, width=8, height=8, scratch_size=4)
    dev.write_register(R.SCRATCH_BASE + 3, 0xCAFEF00D)
    assert dev.read_register(R.SCRATCH_BASE + 3) == 0xCAFEF00D
    dev.write_register(R.PALETTE_BASE + 5, 0x1FF)
    assert dev.read_register(R.PALETTE_BASE + 5) == 0xFF  # palette components are 8 bits
    assert dev.palette_rgb()[5] == 0xFF and len(dev.palette_rgb()) == 768
    res = dev.write_register(R.SCRATCH_BASE + 4, 1)  # one past the scratch registers
    assert res.errors and dev.read_register(R.SCRATCH_BASE + 4) == 0
    assert dev.write_register(40, 7).errors
    assert dev.read_register(40) == 0 and dev.read_register(0xFFFFFFFF) == 0
    dev.write_register(R.REG_CAPABILITIES, 0)  # read-only
    assert dev.read_register(R.REG_CAPABILITIES) == CAPABILITIES


def test_mode_set_and_pitch() -> None:
    dev = SvgaII(vram=1 << 20, fifo=4096, width=640, height=480)
    res = dev.write_register(R.REG_WIDTH, 101)
    assert res.effects == [ModeChanged(dev.mode)]
    dev.write_register(R.REG_HEIGHT, 50)
    assert dev.read_register(R.REG_BYTES_PER_LINE) == 404
    dev.write_register(R.REG_BITS_PER_PIXEL, 16)
    assert dev.read_register(R.REG_DEPTH) == 16
    assert dev.read_register(R.REG_BYTES_PER_LINE) == 204  # 202 rounded up to whole words
    masks = [dev.read_register(r) for r in (R.REG_RED_MASK, R.REG_GREEN_MASK, R.REG_BLUE_MASK)]
    assert masks == [0xF800, 0x07E0, 0x001F]
    dev.write_register(R.REG_BITS_PER_PIXEL, 8)
    assert dev.read_register(R.REG_PSEUDOCOLOR) == 1
    dev.write_register(R.REG_BITS_PER_PIXEL, 32)
    dev.write_register(R.REG_PITCHLOCK, 4096)
    assert dev.read_register(R.REG_BYTES_PER_LINE) == 4096
    assert dev.read_register(R.REG_PITCHLOCK) == 4096
    dev.write_register(R.REG_ENABLE, R.ENABLE_ENABLE)
    assert dev.mode == Mode(width=101, height=50, bpp=32, depth=24, pitch=4096, fb_offset=0, enabled=True)
    assert dev.surface is not None and dev.surface.pitch == 4096
    dev.write_register(R.REG_PITCHLOCK, 0)
    assert dev.read_register(R.REG_BYTES_PER_LINE) == 404
    # Refused values leave the mode alone and say why.
    before = dev.mode
    for reg, value in ((R.REG_WIDTH, R.MAX_WIDTH + 1), (R.REG_HEIGHT, 2**32 - 1), (R.REG_BITS_PER_PIXEL, 24)):
        res = dev.write_register(reg, value)
        assert res.errors and not res.effects
    assert dev.mode == before
    assert not dev.write_register(R.REG_WIDTH, 101).effects  # unchanged value: no ModeChanged


def test_mode_that_does_not_fit_vram_has_no_surface() -> None:
    dev = SvgaII(vram=100 * 100 * 4, fifo=4096, width=100, height=100)
    assert dev.surface is not None
    dev.write_register(R.REG_HEIGHT, 101)
    assert dev.surface is None
    assert dev.read_framebuffer() == (Rect(0, 0, 0, 0), b"")
    dev.write_register(R.REG_HEIGHT, 100)
    dev.write_register(R.REG_PITCHLOCK, 399)  # shorter than a row
    assert dev.surface is None


def test_value_port_split_into_pieces_is_one_access() -> None:
    """A 4-byte access at the unaligned VALUE port may arrive as 1 + 2 + 1 bytes at offsets 1, 2, 4."""
    dev = SvgaII(vram=1 << 20, fifo=4096, width=64, height=64)
    value = 0x00000123
    dev.write(R.INDEX_PORT, 4, R.REG_WIDTH)
    assert not dev.write(1, 1, value & 0xFF).effects  # nothing happens before the last piece
    assert not dev.write(2, 2, (value >> 8) & 0xFFFF).effects
    assert dev.mode.width == 64
    res = dev.write(4, 1, value >> 24)
    assert dev.mode.width == 0x123 and res.effects == [ModeChanged(dev.mode)]
    # A split read: the register is read once, the pieces come from that one value.
    dev.write(R.INDEX_PORT, 4, R.REG_ID)
    pieces = dev.read(1, 1) | dev.read(2, 2) << 8 | dev.read(4, 1) << 24
    assert pieces == R.ID_2
    # The whole 32-bit access at offset 1 (QEMU with .unaligned = true) is one access too.
    dev.write(R.INDEX_PORT, 4, R.REG_HEIGHT)
    dev.write(R.VALUE_PORT, 4, 0x40)
    assert dev.read(R.VALUE_PORT, 4) == 0x40
    # Byte-by-byte pieces are accepted as well.
    dev.write(R.INDEX_PORT, 4, R.REG_GUEST_ID)
    for i, b in enumerate((0x78, 0x56, 0x34, 0x12)):
        dev.write(1 + i, 1, b)
    assert dev.read_register(R.REG_GUEST_ID) == 0x12345678


def test_interrupted_split_write_is_dropped_and_reported() -> None:
    dev = SvgaII(vram=1 << 20, fifo=4096, width=64, height=64)
    dev.write(R.INDEX_PORT, 4, R.REG_WIDTH)
    dev.write(1, 1, 0x10)
    dev.write(2, 2, 0)
    res = dev.write(R.INDEX_PORT, 4, R.REG_HEIGHT)  # not the expected last piece
    assert res.errors and "dropped" in res.errors[0]
    assert dev.mode.width == 64
    res = dev.write(4, 1, 0)  # a stray piece on its own does nothing
    assert dev.mode.width == 64 and dev.mode.height == 64


def test_split_sync_runs_the_fifo_once_on_the_last_piece() -> None:
    dev, writer = make()
    writer.update(0, 0, 4, 4)
    dev.write(R.INDEX_PORT, 4, R.REG_SYNC)
    assert not dev.write(1, 1, 1).effects
    assert not dev.write(2, 2, 0).effects
    res = dev.write(4, 1, 0)
    assert res.effects == [Update(Rect(0, 0, 4, 4))]
    assert not dev.write_register(R.REG_SYNC, 1).effects  # nothing left


def test_access_outside_bar_is_a_caller_error() -> None:
    dev = SvgaII(vram=4096, fifo=4096, width=8, height=8)
    for offset, size in ((16, 1), (15, 2), (-1, 1), (0, 3), (0, 8)):
        with pytest.raises(AccessError):
            dev.read(offset, size)
        with pytest.raises(AccessError):
            dev.write(offset, size, 0)
    assert dev.read(R.BIOS_PORT, 2) == 0
    assert not dev.write(R.BIOS_PORT, 2, 0xFFFF).errors


def test_irq_status_and_mask() -> None:
    dev, writer = make()
    writer.fence(7)
    sync(dev, writer)
    assert dev.read(R.IRQSTATUS_PORT, 4) & R.IRQFLAG_ANY_FENCE
    assert not dev.irq_pending  # IRQMASK is 0
    dev.write_register(R.REG_IRQMASK, R.IRQFLAG_ANY_FENCE)
    assert dev.irq_pending
    dev.write(R.IRQSTATUS_PORT, 4, R.IRQFLAG_ANY_FENCE)  # write one to clear
    assert not dev.read(R.IRQSTATUS_PORT, 4) & R.IRQFLAG_ANY_FENCE
    assert not dev.irq_pending


# --------------------------------------------------------------------------------------------- FIFO
def test_sync_runs_fifo_updates_stop_and_clears_busy_word() -> None:
    dev, writer = make()
    assert writer.update(1, 2, 3, 4)
    assert writer.update_verbose(0, 0, W, H, reason=9)
    assert fifo_word(dev, R.FIFO_BUSY) == 0
    res = sync(dev, writer)
    assert res.effects == [Update(Rect(1, 2, 3, 4)), Update(Rect(0, 0, W, H))]
    assert res.ran and res.commands == 2 and not res.errors
    assert fifo_word(dev, R.FIFO_STOP) == fifo_word(dev, R.FIFO_NEXT_CMD) == FIFO_MIN + 11 * 4
    assert fifo_word(dev, R.FIFO_BUSY) == 0  # set by the ping, cleared by the device
    assert dev.read_register(R.REG_BUSY) == 0
    assert pixels(dev) == reference()  # UPDATE only reports damage


def test_busy_word_set_by_guest_suppresses_ping_until_device_clears_it() -> None:
    dev, writer = make()
    writer.update(0, 0, 1, 1)
    assert writer.ping(dev) is not None
    writer.update(0, 0, 2, 2)
    struct.pack_into("<I", dev.fifo, R.FIFO_BUSY * 4, 1)  # as if the guest pinged and the host is busy
    assert writer.ping(dev) is None
    assert dev.process_fifo().effects == [Update(Rect(0, 0, 2, 2))]
    assert fifo_word(dev, R.FIFO_BUSY) == 0


def test_config_done_fills_extended_fifo_registers_with_none() -> None:
    dev = SvgaII(vram=4096, fifo=FIFO_SIZE, width=8, height=8)
    dev.fifo[R.FIFO_CAPABILITIES * 4 : R.FIFO_FLAGS * 4 + 4] = b"\xff" * 8  # junk from a previous boot
    FifoWriter(dev.fifo, min_offset=FIFO_MIN)
    dev.write_register(R.REG_CONFIG_DONE, 1)
    assert fifo_word(dev, R.FIFO_CAPABILITIES) == 0 and fifo_word(dev, R.FIFO_FLAGS) == 0


def test_fifo_does_not_run_before_config_done_or_enable() -> None:
    dev = SvgaII(vram=PITCH * H + TAIL, fifo=FIFO_SIZE, width=W, height=H)
    configure(dev)
    writer = FifoWriter(dev.fifo, min_offset=FIFO_MIN)
    writer.rect_fill(1, 0, 0, 2, 2)
    res = dev.write_register(R.REG_SYNC, 1)
    assert not res.ran and not res.effects and dev.read_register(R.REG_BUSY) == 0
    dev.write_register(R.REG_CONFIG_DONE, 1)
    dev.write_register(R.REG_ENABLE, 0)
    assert not dev.process_fifo().ran
    dev.write_register(R.REG_ENABLE, R.ENABLE_ENABLE)
    assert dev.process_fifo().effects == [Fill(Rect(0, 0, 2, 2), 1)]


def test_wrap_around_command() -> None:
    dev, writer = make()
    hi = FIFO_SIZE
    writer.set_registers(FIFO_MIN, hi, hi - 8, hi - 8)  # a 6-word command must wrap after 2 words
    assert writer.rect_fill(0xABCDEF, 2, 3, 4, 5)
    assert fifo_word(dev, R.FIFO_NEXT_CMD) == FIFO_MIN + 16
    res = sync(dev, writer)
    assert res.effects == [Fill(Rect(2, 3, 4, 5), 0xABCDEF)]
    assert fifo_word(dev, R.FIFO_STOP) == FIFO_MIN + 16
    ref = reference()
    for y in range(3, 8):
        for x in range(2, 6):
            ref[y][x] = 0xABCDEF
    assert pixels(dev) == ref


def test_many_laps_through_a_small_ring() -> None:
    dev, writer = make()
    writer = FifoWriter(dev.fifo, min_offset=FIFO_MIN, max_offset=FIFO_MIN + 52)  # 13 words of ring
    dev.write_register(R.REG_CONFIG_DONE, 1)
    seen = []
    for i in range(40):
        assert writer.update(i % W, 0, 1, 1)
        assert writer.update(0, i % H, 1, 1)
        seen += sync(dev, writer).effects
    assert seen == [e for i in range(40) for e in (Update(Rect(i % W, 0, 1, 1)), Update(Rect(0, i % H, 1, 1)))]


def test_full_fifo_refuses_a_command() -> None:
    dev, _ = make()
    writer = FifoWriter(dev.fifo, min_offset=FIFO_MIN, max_offset=FIFO_MIN + 40)  # 10 words, 9 usable
    dev.write_register(R.REG_CONFIG_DONE, 1)
    assert writer.update(0, 0, 1, 1)  # 5 words
    assert not writer.update(0, 0, 2, 2)  # 5 more do not fit
    assert writer.fence(1)  # 2 do
    assert sync(dev, writer).effects == [Update(Rect(0, 0, 1, 1)), Fence(1)]
    assert writer.update(0, 0, 2, 2)


def test_partial_command_waits_for_its_last_word() -> None:
    dev, writer = make()
    words = (R.CMD_RECT_FILL, 0x55, 1, 1, 2, 2)
    assert writer.write_words(words[:3])
    res = sync(dev, writer)
    assert res.partial and not res.effects and res.commands == 0 and not res.errors
    assert fifo_word(dev, R.FIFO_STOP) == FIFO_MIN  # stays at the start of the command
    assert pixels(dev) == reference()
    assert writer.write_words(words[3:5])
    assert not sync(dev, writer).effects
    assert writer.write_words(words[5:])
    res = sync(dev, writer)
    assert res.effects == [Fill(Rect(1, 1, 2, 2), 0x55)] and not res.partial
    assert fifo_word(dev, R.FIFO_STOP) == FIFO_MIN + 24


def test_partial_variable_length_command() -> None:
    dev, writer = make()
    argb = bytes(range(64))  # 4x4 pixels
    header = struct.pack("<6I", R.CMD_DEFINE_ALPHA_CURSOR, 0, 1, 2, 4, 4)
    writer.write_bytes(header[:12])  # half a header
    assert sync(dev, writer).partial
    writer.write_bytes(header[12:] + argb[:32])  # header and half the image
    assert sync(dev, writer).partial and dev.cursor is None
    writer.write_bytes(argb[32:])
    res = sync(dev, writer)
    assert res.effects == [CursorDefined(dev.cursor)] and dev.cursor is not None
    assert dev.cursor.argb == argb and (dev.cursor.hot_x, dev.cursor.hot_y) == (1, 2)


@pytest.mark.parametrize(
    "regs",
    [
        (FIFO_MIN + 1, FIFO_SIZE, FIFO_MIN, FIFO_MIN),  # MIN not aligned
        (FIFO_MIN, FIFO_SIZE - 2, FIFO_MIN, FIFO_MIN),  # MAX not aligned
        (FIFO_MIN, FIFO_SIZE, FIFO_MIN + 2, FIFO_MIN),  # NEXT_CMD not aligned
        (FIFO_MIN, FIFO_SIZE, FIFO_MIN, FIFO_MIN + 6),  # STOP not aligned
        (8, FIFO_SIZE, 8, 8),  # MIN inside the 4 FIFO registers
        (0, FIFO_SIZE, 0, 0),
        (FIFO_MIN, FIFO_SIZE + 4, FIFO_MIN, FIFO_MIN),  # MAX beyond FIFO memory
        (FIFO_MIN, 0xFFFFFFFC, FIFO_MIN, FIFO_MIN),
        (FIFO_MIN, FIFO_MIN, FIFO_MIN, FIFO_MIN),  # MIN == MAX
        (FIFO_SIZE - 4, FIFO_MIN, FIFO_MIN, FIFO_MIN),  # MIN > MAX
        (FIFO_MIN, FIFO_SIZE, FIFO_SIZE, FIFO_MIN),  # NEXT_CMD == MAX
        (FIFO_MIN, FIFO_SIZE, FIFO_MIN - 4, FIFO_MIN),  # NEXT_CMD below MIN
        (FIFO_MIN, FIFO_SIZE, FIFO_MIN + 24, FIFO_SIZE),  # STOP == MAX
        (FIFO_MIN, FIFO_SIZE, FIFO_MIN + 24, 16),  # STOP below MIN
    ],
)
def test_bogus_fifo_layout_is_reported_and_not_processed(regs: tuple[int, int, int, int]) -> None:
    dev, writer = make()
    writer.rect_fill(0x77, 0, 0, W, H)
    writer.set_registers(*regs)
    fifo_before, vram_before = bytes(dev.fifo), bytes(dev.vram)
    res = sync(dev, writer)
    assert res.errors and not res.ran and not res.effects and res.commands == 0
    assert bytes(dev.vram) == vram_before
    busy = R.FIFO_BUSY * 4
    assert bytes(dev.fifo[:busy]) == fifo_before[:busy] and bytes(dev.fifo[busy + 4 :]) == fifo_before[busy + 4 :]
    assert dev.read_register(R.REG_BUSY) == 0


def test_unknown_command_skips_to_next_cmd() -> None:
    dev, writer = make()
    writer.write_words((999, 1, 2, 3))
    writer.rect_fill(0x11, 0, 0, 1, 1)  # queued behind garbage: discarded with it
    res = sync(dev, writer)
    assert len(res.errors) == 1 and "unknown command 999" in res.errors[0]
    assert not res.effects and res.skipped == 1
    assert fifo_word(dev, R.FIFO_STOP) == fifo_word(dev, R.FIFO_NEXT_CMD)
    assert pixels(dev) == reference()
    writer.rect_fill(0x22, 0, 0, 1, 1)  # the FIFO is in step again
    assert sync(dev, writer).effects == [Fill(Rect(0, 0, 1, 1), 0x22)]


@pytest.mark.parametrize(
    "words",
    [
        (R.CMD_RECT_ROP_FILL, 0x33, 0, 0, 4, 4, 0x3),
        (R.CMD_FRONT_ROP_FILL, 0x33, 0, 0, 4, 4, 0x3),
        (R.CMD_RECT_ROP_COPY, 0, 0, 1, 1, 4, 4, 0x6),  # raster op other than copy
        (R.CMD_DEFINE_GMRFB, 0, 0, 64, 0x2018),
        (R.CMD_ESCAPE, 0, 6, 0x11111111, 0x2222),  # 6 bytes of data: 2 words
        (R.CMD_3D_FIRST + 40, 8, 0xAAAA, 0xBBBB),
        (R.CMD_DEFINE_SCREEN, 12, 1, 2),
        (R.CMD_NOP_ERROR,),
    ],
)
def test_known_unsupported_command_is_skipped_exactly(words: tuple[int, ...]) -> None:
    dev, writer = make()
    writer.write_words(words)
    writer.rect_fill(0x22, 0, 0, 1, 1)
    res = sync(dev, writer)
    assert len(res.errors) == 1 and "not supported" in res.errors[0]
    assert res.effects == [Fill(Rect(0, 0, 1, 1), 0x22)] and res.commands == 2 and res.skipped == 1


def test_nop_and_invalid_cmd_are_silent() -> None:
    dev, writer = make()
    writer.write_words((R.CMD_NOP, R.CMD_INVALID_CMD, R.CMD_NOP))
    writer.fence(3)
    res = sync(dev, writer)
    assert res.effects == [Fence(3)] and not res.errors and res.commands == 4


def test_command_longer_than_the_fifo_is_discarded() -> None:
    dev, writer = make()
    writer.write_words((R.CMD_DEFINE_ALPHA_CURSOR, 0, 0, 0, 0xFFFF, 0xFFFF))  # 4 Gi pixels
    res = sync(dev, writer)
    assert res.errors and "never fits" in res.errors[0]
    assert not res.partial and fifo_word(dev, R.FIFO_STOP) == fifo_word(dev, R.FIFO_NEXT_CMD)


def test_per_pass_bound() -> None:
    dev, writer = make(sync_max_commands=4)
    for i in range(12):
        writer.update(i, 0, 1, 1)
    res = dev.process_fifo(max_commands=3)
    assert [e.rect.x for e in res.effects] == [0, 1, 2] and res.bounded  # type: ignore[union-attr]
    assert fifo_word(dev, R.FIFO_STOP) == FIFO_MIN + 3 * 20
    # SYNC runs 4 more, leaves BUSY set; each BUSY read runs another pass (results wait for the caller).
    res = dev.write_register(R.REG_SYNC, 1)
    assert len(res.effects) == 4 and res.bounded and dev.busy
    assert dev.read_register(R.REG_BUSY) == 1  # 4 more run (7..10), one is left
    assert dev.read_register(R.REG_BUSY) == 0  # the last one runs
    pending = dev.take_pending()
    assert [e.rect.x for e in pending.effects] == [7, 8, 9, 10, 11]  # type: ignore[union-attr]
    assert [e.rect.x for e in res.effects] == [3, 4, 5, 6]  # type: ignore[union-attr]
    assert not dev.take_pending().effects


def test_pending_results_travel_with_the_next_write() -> None:
    dev, writer = make(sync_max_commands=1)
    writer.update(0, 0, 1, 1)
    writer.update(1, 0, 1, 1)
    writer.update(2, 0, 1, 1)
    assert len(dev.write_register(R.REG_SYNC, 1).effects) == 1
    dev.read_register(R.REG_BUSY)  # runs the second, queued
    res = dev.write_register(R.REG_GUEST_ID, 1)
    assert res.effects == [Update(Rect(1, 0, 1, 1))]


def test_fence_writes_fifo_register() -> None:
    dev, writer = make()
    struct.pack_into("<I", dev.fifo, R.FIFO_FENCE_GOAL * 4, 42)
    writer.fence(41)
    writer.fence(42)
    res = sync(dev, writer)
    assert res.effects == [Fence(41), Fence(42)]
    assert fifo_word(dev, R.FIFO_FENCE) == 42
    assert dev.read(R.IRQSTATUS_PORT, 4) & R.IRQFLAG_FENCE_GOAL


# --------------------------------------------------------------------------------------------- 2D
def fill_ref(ref: list[list[int]], x: int, y: int, w: int, h: int, color: int) -> None:
    for j in range(y, min(y + h, H)):
        for i in range(x, min(x + w, W)):
            ref[j][i] = color


def copy_ref(ref: list[list[int]], sx: int, sy: int, dx: int, dy: int, w: int, h: int) -> None:
    old = [row[:] for row in ref]
    for j in range(h):
        for i in range(w):
            if 0 <= sx + i < W and 0 <= sy + j < H and 0 <= dx + i < W and 0 <= dy + j < H:
                ref[dy + j][dx + i] = old[sy + j][sx + i]


def test_fill_and_copy_pixel_exact() -> None:
    dev, writer = make()
    ref = reference()
    writer.rect_fill(0xFF0000, 3, 2, 5, 4)
    fill_ref(ref, 3, 2, 5, 4, 0xFF0000)
    writer.rect_copy(0, 0, 9, 6, 4, 5)
    copy_ref(ref, 0, 0, 9, 6, 4, 5)
    res = sync(dev, writer)
    assert res.effects == [Fill(Rect(3, 2, 5, 4), 0xFF0000), Copy(0, 0, Rect(9, 6, 4, 5))]
    assert pixels(dev) == ref
    assert outside_intact(dev)
    assert dev.read_framebuffer(Rect(3, 2, 2, 1)) == (Rect(3, 2, 2, 1), (0xFF0000).to_bytes(4, "little") * 2)


@pytest.mark.parametrize("dx,dy", [(1, 0), (-1, 0), (0, 1), (0, -1), (2, 3), (-3, -2), (1, -1), (-2, 2)])
def test_overlapping_copy(dx: int, dy: int) -> None:
    dev, writer = make()
    ref = reference()
    sx, sy, w, h = 4, 4, 6, 5
    writer.rect_copy(sx, sy, sx + dx, sy + dy, w, h)
    copy_ref(ref, sx, sy, sx + dx, sy + dy, w, h)
    assert sync(dev, writer).effects == [Copy(sx, sy, Rect(sx + dx, sy + dy, w, h))]
    assert pixels(dev) == ref and outside_intact(dev)


def test_out_of_range_rects_are_clipped_or_refused() -> None:
    dev, writer = make()
    ref = reference()
    writer.rect_fill(0x1, W - 3, H - 2, 100, 100)  # clipped to 3x2
    fill_ref(ref, W - 3, H - 2, 3, 2, 0x1)
    writer.rect_fill(0x2, W, 0, 5, 5)  # entirely to the right: refused
    writer.rect_fill(0x3, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)  # refused
    writer.rect_fill(0x4, 0, 0, 0xFFFFFFFF, 1)  # clipped to one row
    fill_ref(ref, 0, 0, W, 1, 0x4)
    writer.rect_copy(0, 0, W - 2, 5, 8, 3)  # destination cut to 2 columns
    copy_ref(ref, 0, 0, W - 2, 5, 8, 3)
    writer.rect_copy(W - 1, 0, 0, 8, 4, 2)  # source cut to 1 column
    copy_ref(ref, W - 1, 0, 0, 8, 4, 2)
    writer.rect_copy(0xFFFFFFF0, 0, 0, 0, 0x20, 4)  # source entirely outside: refused
    writer.update(W - 1, H - 1, 0xFFFFFFFF, 0xFFFFFFFF)
    writer.update(W, H, 1, 1)
    writer.rect_fill(0x5, 1, 1, 0, 7)  # empty: nothing, no error
    res = sync(dev, writer)
    assert pixels(dev) == ref
    assert outside_intact(dev)
    assert res.effects == [
        Fill(Rect(W - 3, H - 2, 3, 2), 0x1),
        Fill(Rect(0, 0, W, 1), 0x4),
        Copy(0, 0, Rect(W - 2, 5, 2, 3)),
        Copy(W - 1, 0, Rect(0, 8, 1, 2)),
        Update(Rect(W - 1, H - 1, 1, 1)),
    ]
    assert len(res.errors) == 4 and res.skipped == 4 and res.clipped == 5 and res.commands == 10


def test_16_bpp_fill_uses_two_bytes() -> None:
    vram = bytearray([SENTINEL]) * 4096
    dev = SvgaII(vram=vram, fifo=FIFO_SIZE, width=8, height=4)
    dev.write_register(R.REG_ENABLE, R.ENABLE_ENABLE)
    dev.write_register(R.REG_BITS_PER_PIXEL, 16)
    writer = FifoWriter(dev.fifo, min_offset=FIFO_MIN)
    dev.write_register(R.REG_CONFIG_DONE, 1)
    writer.rect_fill(0xABCD1234, 1, 1, 2, 1)
    assert sync(dev, writer).effects == [Fill(Rect(1, 1, 2, 1), 0x1234)]
    assert vram[16 + 2 : 16 + 6] == b"\x34\x12\x34\x12"
    assert vram[16 + 6] == SENTINEL and vram[16 + 1] == SENTINEL


def test_no_framebuffer_means_refusal() -> None:
    dev, writer = make()
    dev.write_register(R.REG_PITCHLOCK, 4)  # shorter than a row: no valid framebuffer
    vram_before = bytes(dev.vram)
    writer.rect_fill(1, 0, 0, 1, 1)
    writer.rect_copy(0, 0, 1, 1, 1, 1)
    writer.update(0, 0, 1, 1)
    res = sync(dev, writer)
    assert not res.effects and len(res.errors) == 3
    assert bytes(dev.vram) == vram_before


# --------------------------------------------------------------------------------------------- cursor
def test_alpha_cursor_and_bypass_registers() -> None:
    dev, writer = make()
    argb = b"".join(struct.pack("<I", 0x80000000 | i) for i in range(6))
    assert writer.define_alpha_cursor(1, 9, 3, 2, argb)  # hotspot y beyond the image: clamped
    res = sync(dev, writer)
    assert res.effects == [CursorDefined(dev.cursor)]
    assert dev.cursor is not None and dev.cursor.argb == argb
    assert (dev.cursor.width, dev.cursor.height, dev.cursor.hot_x, dev.cursor.hot_y) == (3, 2, 1, 1)
    dev.write_register(R.REG_CURSOR_ID, 1)
    dev.write_register(R.REG_CURSOR_X, 100)
    dev.write_register(R.REG_CURSOR_Y, 0xFFFFFFFE)  # -2: partly above the screen
    assert dev.write_register(R.REG_CURSOR_ON, R.CURSOR_ON_SHOW).effects == [CursorMoved(100, -2, True)]
    assert not dev.write_register(R.REG_CURSOR_ON, R.CURSOR_ON_REMOVE_FROM_FB).effects
    assert dev.cursor_position == CursorMoved(100, -2, True)
    assert dev.write_register(R.REG_CURSOR_ON, R.CURSOR_ON_HIDE).effects == [CursorMoved(100, -2, False)]
    assert dev.read_register(R.REG_CURSOR_Y) == 0xFFFFFFFE


def mono_row(bits: str) -> bytes:
    """One 1-bit scanline, most significant bit first, padded to 32 bits."""
    value = int(bits.ljust(32, "0"), 2)
    return value.to_bytes(4, "big")


def test_monochrome_cursor() -> None:
    dev, writer = make()
    and_mask = mono_row("1100") + mono_row("0011")
    xor_mask = mono_row("1010") + mono_row("1010")
    assert writer.define_cursor(2, 1, 4, 2, 1, 1, and_mask, xor_mask)
    res = sync(dev, writer)
    assert not res.errors and dev.cursor is not None
    got = struct.unpack("<8I", dev.cursor.argb)
    # AND 1 XOR 1: invert (drawn white); AND 1 XOR 0: transparent; AND 0: black or white.
    assert got == (
        0xFFFFFFFF, 0x00000000, 0xFFFFFFFF, 0xFF000000,
        0xFFFFFFFF, 0xFF000000, 0xFFFFFFFF, 0x00000000,
    )  # fmt: skip
    assert (dev.cursor.hot_x, dev.cursor.hot_y) == (2, 1)


def test_color_and_xor_cursor() -> None:
    dev, writer = make()
    and_mask = mono_row("01")
    xor_mask = struct.pack("<2I", 0x00123456, 0x00000000)
    assert writer.define_cursor(0, 0, 2, 1, 1, 32, and_mask, xor_mask)
    sync(dev, writer)
    assert dev.cursor is not None
    assert struct.unpack("<2I", dev.cursor.argb) == (0xFF123456, 0x00000000)


def test_oversized_or_odd_cursor_is_skipped_exactly() -> None:
    dev, writer = make()
    big = R.MAX_CURSOR_SIZE + 1
    assert writer.define_cursor(0, 0, big, 1, 1, 1, bytes(36), bytes(36))  # 257 px: 9 words a row
    assert writer.define_cursor(0, 0, 2, 2, 1, 16, mono_row("") * 2, bytes(8))  # 16-bit XOR mask
    writer.fence(5)
    res = sync(dev, writer)
    assert res.effects == [Fence(5)] and len(res.errors) == 2 and dev.cursor is None


# --------------------------------------------------------------------------------------------- snapshot
def test_snapshot_restore_mirror() -> None:
    dev, writer = make()
    dev.fb_start = 0xF0000000
    dev.write_register(R.REG_GUEST_ID, 0x5007)
    dev.write_register(R.SCRATCH_BASE, 99)
    dev.write_register(R.PALETTE_BASE + 3, 0x80)
    dev.write_register(R.REG_IRQMASK, R.IRQFLAG_ANY_FENCE)
    writer.define_alpha_cursor(0, 0, 2, 2, bytes(range(16)))
    writer.fence(1)
    sync(dev, writer)
    dev.write_register(R.REG_CURSOR_X, 5)
    dev.write_register(R.REG_CURSOR_ON, R.CURSOR_ON_SHOW)
    snap = dev.snapshot()
    mirror = SvgaII(vram=PITCH * H + TAIL, fifo=FIFO_SIZE, width=W, height=H)
    mirror.restore(snap)
    assert mirror.snapshot() == snap
    assert mirror.mode == dev.mode and mirror.cursor == dev.cursor
    assert mirror.cursor_position == dev.cursor_position and mirror.irq_pending == dev.irq_pending
    for reg in range(R.REG_TOP_IMPLEMENTED):
        if reg not in (R.REG_BUSY, R.REG_SYNC):
            assert mirror.read_register(reg) == dev.read_register(reg), reg
    assert registers_from_proto(registers_to_proto(snap)) == snap  # the wire form keeps every field


@pytest.mark.parametrize(
    "change",
    [
        {"width": R.MAX_WIDTH + 1},
        {"width": W + 1},  # beyond this device's maximum (checked by restore)
        {"bpp": 24},
        {"svga_id": 5},
        {"enable": -1},
        {"enable": "1"},
        {"scratch": (0,)},  # not this device's number of scratch registers (checked by restore)
        {"scratch": [0] * R.DEFAULT_SCRATCH_SIZE},
        {"palette": None},
        {"palette": (0,) * 3},
        {"busy": 1},
        {"fb_start": -1},
        {"cursor": Cursor(2, 2, 0, 0, bytes(3))},
        {"cursor": Cursor(1, 1, 1, 0, bytes(4))},
        {"cursor": 3},
    ],
)
def test_bad_state_is_refused_and_changes_nothing(change: dict[str, object]) -> None:
    dev, _ = make(max_width=W)
    before = dev.snapshot()
    with pytest.raises(SnapshotError):
        dev.restore(dataclasses.replace(before, **change))
    assert dev.snapshot() == before


def test_reset() -> None:
    dev, writer = make()
    dev.reset()
    assert dev.read_register(R.REG_ENABLE) == 0 and dev.read_register(R.REG_CONFIG_DONE) == 0
    assert dev.mode.width == W and dev.cursor is None
    writer.update(0, 0, 1, 1)
    assert not dev.write_register(R.REG_SYNC, 1).ran


# --------------------------------------------------------------------------------------------- fuzz
fifo_words = st.one_of(
    st.sampled_from(sorted(R.CMD_WORDS) + [R.CMD_DEFINE_CURSOR, R.CMD_DEFINE_ALPHA_CURSOR, R.CMD_ESCAPE, 1040]),
    st.integers(0, 40),
    st.integers(0, 2**32 - 1),
)
layout_value = st.one_of(
    st.sampled_from([0, 16, FIFO_MIN, FIFO_MIN + 64, FIFO_SIZE - 4, FIFO_SIZE]), st.integers(0, 2**32 - 1)
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(fifo_words, max_size=120),
    st.one_of(st.none(), st.tuples(layout_value, layout_value, layout_value, layout_value)),
    st.integers(0, 1000),
)
def test_fifo_fuzz_never_raises_or_writes_outside(words: list[int], regs: tuple[int, ...] | None, pos: int) -> None:
    dev, writer = make()
    writer.set_registers(FIFO_MIN, FIFO_SIZE, FIFO_MIN + pos * 4, FIFO_MIN + pos * 4)
    writer.write_words(words)
    if regs is not None:
        writer.set_registers(*regs)
    for _ in range(3):
        res = dev.process_fifo(max_commands=50)
        stop = fifo_word(dev, R.FIFO_STOP)
        if res.ran:
            assert FIFO_MIN <= stop < FIFO_SIZE or regs is not None
    assert outside_intact(dev)
    assert len(dev.vram) == PITCH * H + TAIL and len(dev.fifo) == FIFO_SIZE


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([(0, 4), (1, 4), (1, 1), (2, 2), (4, 1), (2, 1), (3, 1), (8, 4), (8, 1), (12, 4), (0, 1)]),
            st.booleans(),
            st.one_of(st.integers(0, 40), st.integers(1024, 1900), st.integers(0, 2**32 - 1)),
        ),
        max_size=60,
    )
)
def test_port_fuzz_never_raises_or_writes_outside(accesses: list[tuple[tuple[int, int], bool, int]]) -> None:
    dev, writer = make()
    writer.rect_fill(0x99, 0, 0, 3, 3)
    for (offset, size), is_write, value in accesses:
        if is_write:
            res = dev.write(offset, size, value & ((1 << (8 * size)) - 1))
            assert isinstance(res, FifoResult)
        else:
            assert 0 <= dev.read(offset, size) < (1 << (8 * size))
    dev.process_fifo()
    dev.take_pending()
    # Whatever state the accesses left is a state a mirror can take over.
    mirror = SvgaII(vram=PITCH * H + TAIL, fifo=FIFO_SIZE, width=W, height=H)
    mirror.restore(dev.snapshot())
    assert mirror.snapshot() == dev.snapshot() and mirror.mode == dev.mode
    assert len(dev.vram) == PITCH * H + TAIL and len(dev.fifo) == FIFO_SIZE


def test_reselecting_the_selected_register_is_known_to_change_nothing() -> None:
    """`reselects`: a whole-word INDEX write of the index already selected, with no split VALUE access open (which
    any other write abandons), is the only write the mirrored link may leave out of the stream."""
    dev, _ = make()
    dev.write(R.INDEX_PORT, 4, R.REG_ID)
    assert dev.reselects(R.INDEX_PORT, 4, R.REG_ID)
    assert not dev.reselects(R.INDEX_PORT, 4, R.REG_WIDTH)  # another register
    assert not dev.reselects(R.INDEX_PORT, 2, R.REG_ID)  # part of the port
    assert not dev.reselects(R.VALUE_PORT, 4, R.REG_ID)  # the value port writes a register
    dev.write(R.VALUE_PORT, 2, 0x1234)  # the first half of a split VALUE write: the INDEX write would drop it
    assert not dev.reselects(R.INDEX_PORT, 4, R.REG_ID)
