"""Two VMware SVGA II adapters with the same guest-facing interface: QEMU's vmware-svga (over qtest) and ours.

A guest drives both the same way: registers through the INDEX/VALUE ports, pixels written straight into
VRAM (BAR1), commands written into FIFO memory (BAR2) with the FIFO registers updated like a driver does,
SYNC written to make the device run them. What the screen shows is QEMU's screendump on one side and our
framebuffer on the other.

QEMU 7.2 facts these harnesses respect (hw/display/vmware_vga.c):
- its FIFO is 64 KiB and needs MAX - MIN >= 10 KiB; one pass runs at most 1023 commands;
- fills and copies are checked against its *display surface*, which is only replaced by the new mode on the
  next display refresh: a mode change is followed by a screendump before any command runs;
- a 640x480x32 mode never replaces its 640x480x32 placeholder surface (the screen stays blank): not used.
"""

from __future__ import annotations

import struct

from frontend_shim.guests.scripted_svga import FifoWriter
from services.devices import svga_regs as R
from services.devices.svga import SvgaII
from tests.qtest import Qtest

IO_BASE = 0xC100
VRAM_BASE = 0xE0000000
FIFO_BASE = 0xE1000000
QEMU_FIFO_SIZE = 64 * 1024
QEMU_VRAM_SIZE = 16 * 1024 * 1024
QEMU_MAX_WIDTH, QEMU_MAX_HEIGHT = 2368, 1770
QEMU_SCRATCH_SIZE = 0x8000
FIFO_MIN = R.FIFO_NUM_REGS * 4  # what Linux vmwgfx uses: room for every FIFO register
FIFO_MAX = FIFO_MIN + 12 * 1024  # a small ring (QEMU needs >= 10 KiB) so that sequences wrap around
_SYNC_PASSES = 64  # SYNCs per flush before we call the device stuck


def bgrx_to_rgb(rows: bytes) -> bytes:
    """32-bit little-endian framebuffer pixels (B, G, R, X) as packed RGB, like a PPM screendump."""
    out = bytearray(len(rows) // 4 * 3)
    out[0::3], out[1::3], out[2::3] = rows[2::4], rows[1::4], rows[0::4]
    return bytes(out)


class _Svga:
    """What both sides share: register helpers and the guest's FIFO bookkeeping."""

    fifo_view: bytearray  # the guest's view of FIFO memory the writer works in

    def __init__(self) -> None:
        self.writer: FifoWriter | None = None

    # Subclasses: port accesses, memory, screen.
    def io_read(self, offset: int) -> int:
        raise NotImplementedError

    def io_write(self, offset: int, value: int) -> None:
        raise NotImplementedError

    def read_reg(self, index: int) -> int:
        self.io_write(R.INDEX_PORT, index)
        return self.io_read(R.VALUE_PORT)

    def write_reg(self, index: int, value: int) -> None:
        self.io_write(R.INDEX_PORT, index)
        self.io_write(R.VALUE_PORT, value)

    def set_mode(self, width: int, height: int) -> None:
        self.write_reg(R.REG_WIDTH, width)
        self.write_reg(R.REG_HEIGHT, height)
        self.write_reg(R.REG_BITS_PER_PIXEL, 32)

    def start(self, width: int, height: int) -> None:
        """Negotiate SVGA_ID_2, set the mode, lay out the FIFO, enable, CONFIG_DONE (vmwgfx's order)."""
        self.write_reg(R.REG_ID, R.ID_2)
        self.set_mode(width, height)
        self.writer = FifoWriter(self.fifo_view, min_offset=FIFO_MIN, max_offset=FIFO_MAX)
        self._push_fifo(with_stop=True)
        self.write_reg(R.REG_ENABLE, 1)
        self.write_reg(R.REG_CONFIG_DONE, 1)
        self.refresh()

    def refresh(self) -> None:
        """QEMU takes a new mode on its next display refresh; ours at once."""

    def command(self, words: tuple[int, ...]) -> None:
        """Queue one command; when the ring is full, let the device drain it first (as a driver waits)."""
        assert self.writer is not None
        for _ in range(2):
            if self.writer.write_words(words):
                return
            self.sync()
        raise AssertionError(f"command of {len(words)} words never fits the FIFO")

    def sync(self, drain: bool = True) -> None:
        """Publish what was queued, then SYNC until the device has consumed everything (BUSY reads 0).

        Without `drain`, one SYNC and no check (for sequences QEMU loses track of).
        """
        self._push_fifo()
        for _ in range(_SYNC_PASSES if drain else 1):
            self.write_reg(R.REG_SYNC, 1)
            while self.read_reg(R.REG_BUSY):
                pass
            self._pull_fifo_registers()
            lo, hi, nxt, stop = self.fifo_registers()
            if nxt == stop or not drain:
                return
        raise AssertionError(f"FIFO not drained after {_SYNC_PASSES} SYNCs: {self.fifo_registers()}")

    def fifo_registers(self) -> tuple[int, int, int, int]:
        return struct.unpack_from("<4I", self.fifo_view, 0)

    def _push_fifo(self, with_stop: bool = False) -> None:
        """Make the writer's work visible to the device (QEMU: copy it into BAR2)."""

    def _pull_fifo_registers(self) -> None:
        """Take the device's STOP back into the guest's view (QEMU: read it from BAR2)."""


class QemuSvga(_Svga):
    """QEMU 7.2's vmware-svga in a qtest machine, with QMP for screendumps."""

    def __init__(self) -> None:
        super().__init__()
        self.q = Qtest(["-device", "vmware-svga"], qmp=True)
        fn = self.q.find_pci(R.PCI_VENDOR_ID, R.PCI_DEVICE_ID)
        self.q.setup_pci(fn, {0: IO_BASE | 1, 1: VRAM_BASE, 2: FIFO_BASE})
        self.fifo_view = bytearray(QEMU_FIFO_SIZE)

    def io_read(self, offset: int) -> int:
        return self.q.inl(IO_BASE + offset)

    def io_write(self, offset: int, value: int) -> None:
        self.q.outl(IO_BASE + offset, value)

    def refresh(self) -> None:
        self.q.screendump()

    def write_vram(self, offset: int, data: bytes) -> None:
        self.q.write(VRAM_BASE + offset, data)

    def read_vram(self, offset: int, length: int) -> bytes:
        return self.q.read(VRAM_BASE + offset, length)

    def screen(self) -> tuple[int, int, bytes]:
        return self.q.screendump()

    def _push_fifo(self, with_stop: bool = False) -> None:
        # The registers (MIN, MAX, NEXT_CMD; STOP belongs to the device once it runs), then the ring.
        self.q.write(FIFO_BASE, bytes(self.fifo_view[: (4 if with_stop else 3) * 4]))
        self.q.write(FIFO_BASE + FIFO_MIN, bytes(self.fifo_view[FIFO_MIN:FIFO_MAX]))

    def _pull_fifo_registers(self) -> None:
        self.fifo_view[12:16] = self.q.read(FIFO_BASE + 12, 4)

    def close(self) -> None:
        self.q.close()


class ModelSvga(_Svga):
    """Ours, sized like QEMU's (16 MiB VRAM, 64 KiB FIFO, its maximum mode and scratch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.dev = SvgaII(
            vram=QEMU_VRAM_SIZE,
            fifo=QEMU_FIFO_SIZE,
            max_width=QEMU_MAX_WIDTH,
            max_height=QEMU_MAX_HEIGHT,
            scratch_size=QEMU_SCRATCH_SIZE,
        )
        self.dev.fb_start, self.dev.mem_start = VRAM_BASE, FIFO_BASE  # what the trap source fills in
        self.fifo_view = self.dev.fifo  # the guest writes the device's FIFO memory directly
        self.errors: list[str] = []

    def io_read(self, offset: int) -> int:
        return self.dev.read(offset, 4)

    def io_write(self, offset: int, value: int) -> None:
        self.errors += self.dev.write(offset, 4, value).errors

    def write_vram(self, offset: int, data: bytes) -> None:
        self.dev.vram[offset : offset + len(data)] = data

    def read_vram(self, offset: int, length: int) -> bytes:
        return bytes(self.dev.vram[offset : offset + length])

    def screen(self) -> tuple[int, int, bytes]:
        rect, rows = self.dev.read_framebuffer()
        return rect.w, rect.h, bgrx_to_rgb(rows)


class ServiceSvga(_Svga):
    """The whole path: our shim's DisplayLink (its own SvgaII over guest buffers) to a display service, whose
    desktop copy is what its Screenshot RPC returns. Only damage reaches the service: pixels a guest writes
    straight into VRAM show there after an UPDATE covering them, as on any SVGA II."""

    def __init__(self, address: str, mode: str = "mirrored") -> None:
        from frontend_shim.links.display import DisplayLink

        super().__init__()
        self.address = address
        self.vram = bytearray(QEMU_VRAM_SIZE)
        self.fifo_view = bytearray(QEMU_FIFO_SIZE)
        self.link = DisplayLink([address], mode, self.vram, self.fifo_view, access_timeout=2.0)  # type: ignore[arg-type]
        self.link.start()

    def io_read(self, offset: int) -> int:
        return self.link.io_read(0, offset, 4)

    def io_write(self, offset: int, value: int) -> None:
        self.link.io_write(0, offset, 4, value)

    def write_vram(self, offset: int, data: bytes) -> None:
        self.vram[offset : offset + len(data)] = data

    def read_vram(self, offset: int, length: int) -> bytes:
        return bytes(self.vram[offset : offset + length])

    def screen(self) -> tuple[int, int, bytes]:
        import grpc

        from rdv.display.v1 import display_pb2, display_pb2_grpc
        from services.common.png import decode

        assert self.link.flush(10.0), "the display service did not take every frame"
        with grpc.insecure_channel(self.address) as ch:
            reply = display_pb2_grpc.DisplayServiceStub(ch).Screenshot(display_pb2.ScreenshotRequest(), timeout=10)
        return decode(reply.png)

    def close(self) -> None:
        self.link.close()
