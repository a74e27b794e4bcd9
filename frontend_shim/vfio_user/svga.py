"""The SVGA II served over vfio-user: VRAM and FIFO in memfds QEMU maps into the guest, and the display link.

Pixels never cross the vfio-user socket: BAR1 (VRAM) and BAR2 (FIFO) are memfds that the server hands to QEMU
as mmap-able regions, so the guest's stores land in memory this process maps too. The `DisplayLink` runs the
FIFO over those maps (on SYNC writes, BUSY reads and its refresh timer) and sends the damage to the display
services; only BAR0's port accesses are trapped.

VRAM scan (the fallback for damage nobody announced): the SVGA II contract is that the guest says what changed
(UPDATE, or a FILL/COPY the device does); QEMU and VMware both rely on it. Linux 6.1's vmwgfx keeps it for
everything we know of: its fbdev emulation (drm_fbdev_generic over a shadow buffer) turns fbcon drawing,
write() to /dev/fb0 and stores through an mmap of /dev/fb0 (deferred I/O page tracking) into damage that its
worker blits into the VRAM framebuffer and reports as UPDATE + SYNC; KMS clients report with DIRTYFB. A guest
that stores into VRAM and never says so would show a stale screen forever, so `SvgaLink` can also compare the
visible framebuffer with what it last accounted for, every `vram_scan_period` seconds, tile by tile, and
report the tiles that differ as damage. Whatever the FIFO already reported is copied into the comparison copy
when it is reported, so the scan finds only unannounced changes (and at worst a change a racing UPDATE is
about to report: sent twice, never lost).
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from frontend_shim.links.display import CoherenceMode, DisplayLink
from frontend_shim.vfio_user.pci import FdBacking, memfd_backing
from services.common import logs, raster
from services.common.raster import Rect, Surface
from services.devices import svga_regs as R
from services.devices.svga import Copy, FifoResult, Fill, ModeChanged, Update

log = logs.get("shim.vfio_user.svga")
VRAM_SIZE = 16 << 20  # what QEMU's model and Linux vmwgfx were tested with
FIFO_SIZE = 256 << 10  # vmwgfx maps all of BAR2; 256 KiB leaves room for large cursor definitions
SCAN_TILE = 64


@dataclass
class SvgaMemory:
    """VRAM and FIFO memory: one memfd each (handed to QEMU as BAR1/BAR2) and our own shared mapping of it."""

    vram_backing: FdBacking
    fifo_backing: FdBacking
    vram: mmap.mmap
    fifo: mmap.mmap

    @classmethod
    def create(cls, vram_size: int = VRAM_SIZE, fifo_size: int = FIFO_SIZE) -> SvgaMemory:
        vram = memfd_backing("rdv-svga-vram", vram_size)
        fifo = memfd_backing("rdv-svga-fifo", fifo_size)
        return cls(vram, fifo, mmap.mmap(vram.fd, vram_size), mmap.mmap(fifo.fd, fifo_size))

    def close(self) -> None:
        for mm in (self.vram, self.fifo):
            if not mm.closed:
                mm.close()
        for backing in (self.vram_backing, self.fifo_backing):
            try:
                os.close(backing.fd)
            except OSError:
                pass


@dataclass
class ScanStats:
    scans: int = 0
    resyncs: int = 0  # the framebuffer's geometry changed: the comparison copy was taken afresh
    damaged_rects: int = 0  # rectangles the scan reported (changes no FIFO command had announced by then)
    damaged_pixels: int = 0
    seconds: float = 0.0  # time spent scanning
    noted_rects: int = 0  # FIFO damage copied into the comparison copy

    def as_dict(self) -> dict[str, object]:
        return {**vars(self), "seconds": round(self.seconds, 4)}


class SvgaLink(DisplayLink):
    """A DisplayLink over memfd-backed VRAM/FIFO, with the optional VRAM scan described above."""

    def __init__(
        self,
        targets: Sequence[str],
        mode: CoherenceMode,
        memory: SvgaMemory,
        *,
        vram_scan_period: float = 0.0,
        **kwargs: object,
    ) -> None:
        super().__init__(targets, mode, memory.vram, memory.fifo, **kwargs)  # type: ignore[arg-type]
        self.memory = memory
        self.vram_scan_period = vram_scan_period
        self.scan_stats = ScanStats()
        self._seen = bytearray()  # the visible framebuffer as last accounted for, packed rows
        self._seen_surface: Surface | None = None

    def start(self, connect_timeout: float = 5.0, required: bool = True) -> None:
        super().start(connect_timeout, required)
        if self.vram_scan_period > 0:
            self._spawn(self._scan_loop, "svga-vram-scan")

    # ------------------------------------------------------------------ FIFO damage is already accounted for
    def _after_pass(self, res: FifoResult) -> None:
        super()._after_pass(res)
        if self.vram_scan_period > 0 and res.effects:
            self._note(res.effects)

    def _note(self, effects: Sequence[object]) -> None:
        """(lock held) Copy what the FIFO reported into the comparison copy: the scan must not report it again."""
        surface = self.model.surface
        if surface is None or surface != self._seen_surface:
            return  # the next scan takes a fresh copy anyway
        packed = _packed(surface)
        for e in effects:
            if isinstance(e, (Update, Fill, Copy)):
                rect = raster.clip(e.rect, surface.width, surface.height)
                if not rect.empty:
                    raster.write_rect(self._seen, packed, rect, raster.read_rect(self.model.vram, surface, rect))
                    self.scan_stats.noted_rects += 1
            elif isinstance(e, ModeChanged):
                self._seen_surface = None
                return

    # ------------------------------------------------------------------ the scan
    def _scan_loop(self) -> None:
        while not self.stopping.wait(self.vram_scan_period):
            self.scan_vram()

    def scan_vram(self) -> list[Rect]:
        """One comparison of the visible framebuffer with the copy; reports and returns the damage it found."""
        started = time.perf_counter()
        with self.lock:
            mode, surface = self.model.mode, self.model.surface
            if surface is None or not mode.enabled:
                self._seen_surface = None
                return []
            if surface != self._seen_surface:
                # New geometry: everything is new to the services. Taking the copy and reporting the whole
                # screen at once closes the window between the builders' full frame and this copy.
                self._seen = bytearray(raster.read_rect(self.model.vram, surface, surface.bounds))
                self._seen_surface = surface
                self.scan_stats.resyncs += 1
                rects = [surface.bounds]
            else:
                rects = changed_tiles(self.model.vram, surface, self._seen, SCAN_TILE)
                if rects:
                    self.scan_stats.damaged_rects += len(rects)
                    self.scan_stats.damaged_pixels += sum(r.area for r in rects)
                    log.debug("VRAM changes no FIFO command announced", extra={"rects": [str(r) for r in rects]})
            if rects:
                # DisplayLink's own handling, not ours: these pixels are in the copy already.
                DisplayLink._after_pass(self, FifoResult(effects=[Update(r) for r in rects]))
        self.scan_stats.scans += 1
        self.scan_stats.seconds += time.perf_counter() - started
        return rects


def _packed(surface: Surface) -> Surface:
    return Surface(surface.width, surface.height, surface.row_bytes, surface.bytes_per_pixel)


def changed_tiles(vram: raster.Buffer, surface: Surface, seen: bytearray, tile: int) -> list[Rect]:
    """Tiles of `surface` in `vram` that differ from `seen` (packed rows), as `raster.changed_tiles` finds them;
    `seen` is brought up to date."""
    packed = _packed(surface)
    rects = raster.changed_tiles(vram, surface, seen, packed, tile)
    for rect in rects:
        raster.write_rect(seen, packed, rect, raster.read_rect(vram, surface, rect))
    return rects


SVGA_RESET_REGISTERS = (
    (R.REG_ENABLE, 0),
    (R.REG_CONFIG_DONE, 0),
    (R.REG_IRQMASK, 0),
    (R.REG_CURSOR_ON, R.CURSOR_ON_HIDE),
    (R.REG_CURSOR_ID, 0),
    (R.REG_CURSOR_X, 0),
    (R.REG_CURSOR_Y, 0),
    (R.REG_PITCHLOCK, 0),
    (R.REG_GUEST_ID, 0),
    (R.REG_WIDTH, R.DEFAULT_WIDTH),
    (R.REG_HEIGHT, R.DEFAULT_HEIGHT),
    (R.REG_BITS_PER_PIXEL, R.DEFAULT_BPP),
    (R.REG_ID, R.ID_2),
)


def reset_svga(device: DisplayLink) -> None:
    """Power-on register state through ordinary port writes, so that in both coherence modes the reset reaches
    the authoritative register file (and every replica) in stream order. VRAM and FIFO memory keep their
    contents, as on the real card; with CONFIG_DONE clear the FIFO is not read until the guest sets it up."""
    for index, value in SVGA_RESET_REGISTERS:
        device.io_write(0, R.INDEX_PORT, 4, index)
        device.io_write(0, R.VALUE_PORT, 4, value)
    device.io_write(0, R.IRQSTATUS_PORT, 4, R.IRQFLAG_MASK)  # write 1 to clear every pending flag
    device.io_write(0, R.INDEX_PORT, 4, 0)
