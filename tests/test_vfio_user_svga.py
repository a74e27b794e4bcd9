"""The SVGA II over vfio-user, driven by the client harness (no QEMU): config space, BARs, the memfd regions the
client maps, the VALUE port whole and in QEMU's 1+2+1 pieces, a FIFO UPDATE + SYNC becoming a frame at a real
display service in both coherence modes, the VRAM scan, device reset, the CLI and the recorded guest traces."""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from frontend_shim.guests.scripted_svga import FifoWriter
from frontend_shim.links.display import CoherenceMode
from frontend_shim.vfio_user import protocol as P
from frontend_shim.vfio_user.devices import svga_over_link
from frontend_shim.vfio_user.svga import SvgaLink, SvgaMemory, changed_tiles
from frontend_shim.vfio_user.trace import read_access_log
from services.common import raster
from services.common.png import bgrx_to_rgb
from services.common.raster import Rect, Surface
from services.devices import svga_regs as R
from tests.display_helpers import screenshot
from tests.helpers import ServiceProcess, run_shim, start_service
from tests.test_vfio_user import Rig, start_rig
from tests.test_vfio_user_harness import CONFIG_REGION, VfioUserClient

W, H = 320, 200
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("display", tmp_path_factory.mktemp("display"), "--presenter", "headless")
    yield svc
    svc.stop()


@contextmanager
def svga_rig(address: str, mode: CoherenceMode = "mirrored", scan: float = 0.0) -> Iterator[tuple[Rig, SvgaLink]]:
    memory = SvgaMemory.create()
    link = SvgaLink([address], mode, memory, vm=f"unit-{mode}", access_timeout=2.0, vram_scan_period=scan)
    link.start()
    rig = start_rig(svga_over_link(link))
    try:
        yield rig, link
    finally:
        rig.close()
        link.close(drain=False)
        memory.close()


# ----------------------------------------------------------------------------------------------- guest side
def set_reg(c: VfioUserClient, index: int, value: int) -> None:
    c.write32(0, R.INDEX_PORT, index)
    c.write(0, R.VALUE_PORT, value.to_bytes(4, "little"))  # one unaligned dword, as the unaligned QEMU sends it


def get_reg(c: VfioUserClient, index: int) -> int:
    c.write32(0, R.INDEX_PORT, index)
    return int.from_bytes(c.read(0, R.VALUE_PORT, 4), "little")


@contextmanager
def mapped(c: VfioUserClient, index: int) -> Iterator[mmap.mmap]:
    """The region's memfd as QEMU maps it into the guest."""
    flags, size, offset, fds = c.region_info(index)
    assert flags & P.REGION_INFO_FLAG_MMAP and len(fds) == 1
    mm = mmap.mmap(fds[0], size, offset=offset)
    os.close(fds[0])
    try:
        yield mm
    finally:
        mm.close()


def bring_up(c: VfioUserClient, fifo: mmap.mmap) -> FifoWriter:
    """What vmwgfx does at probe and mode set (REFERENCE.md): negotiate, FIFO set-up, CONFIG_DONE, a mode."""
    set_reg(c, R.REG_ID, R.ID_2)
    assert get_reg(c, R.REG_ID) == R.ID_2
    assert get_reg(c, R.REG_CAPABILITIES) & R.CAP_PITCHLOCK
    assert get_reg(c, R.REG_NUM_DISPLAYS) >= 1
    assert get_reg(c, R.REG_MEM_SIZE) == len(fifo) and get_reg(c, R.REG_VRAM_SIZE) == 16 << 20
    set_reg(c, R.REG_ENABLE, R.ENABLE_ENABLE | R.ENABLE_HIDE)
    writer = FifoWriter(fifo)  # MIN 4096 .. MAX, NEXT = STOP = MIN, word 290 clear
    set_reg(c, R.REG_CONFIG_DONE, 1)
    set_reg(c, R.REG_ENABLE, R.ENABLE_ENABLE)
    set_reg(c, R.REG_PITCHLOCK, W * 4)
    set_reg(c, R.REG_WIDTH, W)
    set_reg(c, R.REG_HEIGHT, H)
    assert get_reg(c, R.REG_DEPTH) == 24 and get_reg(c, R.REG_BITS_PER_PIXEL) == 32
    return writer


def sync(c: VfioUserClient, fifo: mmap.mmap) -> None:
    """Linux's ping: claim FIFO word 290 (cmpxchg 0 -> 1), then SYNC."""
    struct.pack_into("<I", fifo, R.FIFO_BUSY * 4, 1)
    set_reg(c, R.REG_SYNC, 1)


def gradient(w: int, h: int, seed: int) -> bytes:
    return bytes((x * 7 + y * 3 + seed + k * 50) & 0xFF for y in range(h) for x in range(w) for k in range(4))


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def screen_rect(address: str, rect: Rect) -> bytes | None:
    try:
        w, _, rgb, _ = screenshot(address)
    except grpc.RpcError:
        return None  # nothing on screen yet
    row = w * 3
    return b"".join(rgb[y * row + rect.x * 3 : y * row + rect.right * 3] for y in range(rect.y, rect.bottom))


# ----------------------------------------------------------------------------------------------- PCI face
def test_config_space_bars_and_regions(display: ServiceProcess) -> None:
    with svga_rig(display.address) as (rig, _):
        c = rig.client
        cfg = c.read(CONFIG_REGION, 0, 256)
        assert struct.unpack_from("<HH", cfg, 0) == (0x15AD, 0x0405)
        assert cfg[0x09:0x0C] == b"\x00\x00\x03"  # VGA-compatible display controller
        assert struct.unpack_from("<HH", cfg, 0x2C) == (0x15AD, 0x0405)
        assert cfg[0x0E] == 0 and cfg[0x34] == 0 and not struct.unpack_from("<H", cfg, 6)[0] & 0x10  # no caps
        assert cfg[0x3D] == 1  # INTA
        sizes = {}
        for bar in range(6):
            c.write32(CONFIG_REGION, 0x10 + 4 * bar, 0xFFFFFFFF)
            sizes[bar] = c.read32(CONFIG_REGION, 0x10 + 4 * bar)
        assert sizes == {0: 0xFFFFFFF1, 1: 0xFF000008, 2: 0xFFFC0000, 3: 0, 4: 0, 5: 0}  # I/O 16, 16 MiB pf, 256K
        rw = P.REGION_INFO_FLAG_READ | P.REGION_INFO_FLAG_WRITE
        assert c.region_info(0) == (rw, 16, 0, [])  # trapped
        for index, size in ((1, 16 << 20), (2, 256 << 10)):
            flags, got, _, fds = c.region_info(index)
            assert flags == rw | P.REGION_INFO_FLAG_MMAP and got == size and len(fds) == 1
            os.close(fds[0])
        for index in (3, 4, 5, 6, 8):
            assert c.region_info(index)[:2] == (0, 0)
        assert c.irq_info(0)[1] == 1 and c.irq_info(1)[1] == 0


def test_value_port_whole_and_in_qemus_pieces(display: ServiceProcess) -> None:
    """4 bytes at offset 1 (the unaligned QEMU build) and 1+2+1 pieces (stock QEMU's split) are one access."""
    with svga_rig(display.address) as (rig, _):
        c = rig.client
        c.write32(0, R.INDEX_PORT, R.REG_ID)
        assert c.read(0, 1, 4) == R.ID_2.to_bytes(4, "little")
        assert c.read(0, 1, 1) + c.read(0, 2, 2) + c.read(0, 4, 1) == R.ID_2.to_bytes(4, "little")
        c.write32(0, R.INDEX_PORT, R.REG_WIDTH)
        value = (800).to_bytes(4, "little")
        c.write(0, 1, value[:1])
        c.write(0, 2, value[1:3])
        c.write(0, 4, value[3:])
        assert get_reg(c, R.REG_WIDTH) == 800
        assert [(o, s) for _, _, o, s, _ in rig.accesses[-2:]] == [(0, 4), (1, 4)]  # not split by the server


def test_vram_and_fifo_are_the_clients_memory(display: ServiceProcess) -> None:
    with svga_rig(display.address) as (rig, link), mapped(rig.client, 1) as vram, mapped(rig.client, 2) as fifo:
        vram[0x1234:0x1238] = b"rdv!"
        fifo[0x10:0x14] = b"fifo"
        assert link.model.vram[0x1234:0x1238] == b"rdv!" and link.model.fifo[0x10:0x14] == b"fifo"
        rig.client.write(1, 0x2000, b"trap")  # a REGION_WRITE QEMU could still send lands in the same memory
        assert vram[0x2000:0x2004] == b"trap"


# ----------------------------------------------------------------------------------------------- frames
@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_fifo_update_and_sync_become_a_frame_at_the_display_service(display: ServiceProcess, mode: str) -> None:
    with svga_rig(display.address, mode) as (rig, link), mapped(rig.client, 1) as vram, mapped(rig.client, 2) as fifo:
        c = rig.client
        writer = bring_up(c, fifo)
        assert link.flush(10)  # the first (full) frame is presented: what follows is the UPDATE's doing
        surface = Surface(W, H, W * 4, 4)
        rect = Rect(40, 30, 64, 48)
        pixels = gradient(rect.w, rect.h, 11)
        raster.write_rect(vram, surface, rect, pixels)
        assert writer.update(rect.x, rect.y, rect.w, rect.h)
        sync(c, fifo)
        assert struct.unpack_from("<I", fifo, R.FIFO_BUSY * 4)[0] == 0  # the device cleared the driver's flag
        assert struct.unpack_from("<I", fifo, R.FIFO_STOP * 4)[0] == writer.next_cmd  # consumed
        assert get_reg(c, R.REG_BUSY) == 0  # in backend mode the service's answer, after the shim's fifo_done
        want = bytes(bgrx_to_rgb(pixels))
        assert wait_for(lambda: screen_rect(display.address, rect) == want), f"{mode}: the frame never arrived"
        s = link.stats
        assert s.fifo_commands == 1 and s.reads > 0 and s.read_timeouts == 0


def test_vram_scan_reports_changes_no_command_announced(display: ServiceProcess) -> None:
    with svga_rig(display.address, scan=0.05) as (rig, link), mapped(rig.client, 1) as vram:
        with mapped(rig.client, 2) as fifo:
            bring_up(rig.client, fifo)
        assert wait_for(lambda: link.scan_stats.resyncs >= 1) and link.flush(10)
        rect = Rect(200, 100, 50, 40)
        pixels = gradient(rect.w, rect.h, 99)
        raster.write_rect(vram, Surface(W, H, W * 4, 4), rect, pixels)  # no UPDATE, no SYNC
        want = bytes(bgrx_to_rgb(pixels))
        assert wait_for(lambda: screen_rect(display.address, rect) == want), "the scan never sent the change"
        assert link.scan_stats.damaged_rects >= 1 and link.stats.fifo_commands == 0


def test_fifo_damage_is_not_reported_again_by_the_scan(display: ServiceProcess) -> None:
    with svga_rig(display.address, scan=3600) as (rig, link), mapped(rig.client, 1) as vram:
        with mapped(rig.client, 2) as fifo:
            writer = bring_up(rig.client, fifo)
            assert link.scan_vram() == [Rect(0, 0, W, H)]  # first look: the whole screen is new
            rect = Rect(10, 10, 20, 20)
            raster.write_rect(vram, Surface(W, H, W * 4, 4), rect, gradient(20, 20, 5))
            writer.update(rect.x, rect.y, rect.w, rect.h)
            sync(rig.client, fifo)
        assert link.scan_vram() == [] and link.scan_stats.noted_rects == 1
        vram[0:4] = b"\x01\x02\x03\x04"
        assert link.scan_vram() == [Rect(0, 0, 64, 1)]  # one tile, cut to the row that changed


def test_changed_tiles_finds_runs_and_updates_the_copy() -> None:
    surface = Surface(200, 130, 1024, 4, offset=4096)
    vram = bytearray(4096 + 1024 * 130)
    seen = bytearray(raster.read_rect(vram, surface, surface.bounds))
    assert changed_tiles(vram, surface, seen, 64) == []
    raster.fill(vram, surface, Rect(70, 5, 60, 3), 0xFFFFFF)  # tiles 1 and 2 of band 0
    raster.fill(vram, surface, Rect(199, 129, 1, 1), 0x123456)  # last tile of the last (partial) band
    assert changed_tiles(vram, surface, seen, 64) == [Rect(64, 5, 128, 3), Rect(192, 129, 8, 1)]
    assert seen == raster.read_rect(vram, surface, surface.bounds)
    assert changed_tiles(vram, surface, seen, 64) == []


# ----------------------------------------------------------------------------------------------- reset
@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_device_reset_reaches_the_authoritative_registers(display: ServiceProcess, mode: str) -> None:
    with svga_rig(display.address, mode) as (rig, link), mapped(rig.client, 2) as fifo:
        c = rig.client
        bring_up(c, fifo)
        set_reg(c, R.REG_GUEST_ID, 0x5010)
        c.reset()
        assert get_reg(c, R.REG_ENABLE) == 0 and get_reg(c, R.REG_CONFIG_DONE) == 0
        assert (get_reg(c, R.REG_WIDTH), get_reg(c, R.REG_HEIGHT)) == (R.DEFAULT_WIDTH, R.DEFAULT_HEIGHT)
        assert get_reg(c, R.REG_GUEST_ID) == 0 and get_reg(c, R.REG_PITCHLOCK) == 0
        assert get_reg(c, R.REG_ID) == R.ID_2
        assert not link.model.mode.enabled  # the shim's FIFO engine is reset too: no pass reads the FIFO


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_svga_needs_a_display_service_and_es1370_refuses_display() -> None:
    res = run_shim("serve-vfio-user", "--socket", "/nonexistent/x.sock", "--device", "es1370", "--display", "h:1")
    assert res.returncode == 2 and "--display applies to --device svga" in res.stderr
    res = run_shim("serve-vfio-user", "--socket", "/nonexistent/x.sock", "--device", "svga", "--display", "127.0.0.1:1")
    assert res.returncode == 1 and "services.display" in res.stderr


# ----------------------------------------------------------------------------------------------- recorded
@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_recorded_svga_traces_are_well_formed(mode: str) -> None:
    """The traces the live test recorded (tests/data): vmwgfx's probe as REFERENCE.md describes it, then its
    flushes (pitchlock, width, height, DEPTH read, SYNC), every VALUE-port access one dword at offset 1."""
    path = DATA / f"svga_vfio_user_{mode}.tsv.gz"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded (RDV_RECORD_TRACES=1 make test-live)")
    events = read_access_log(str(path))
    assert events[0].kind == "X"  # QEMU resets the device before the guest runs
    index, regs = -1, []
    for e in events:
        if e.kind == "W" and e.offset == R.INDEX_PORT:
            index = e.value
        elif e.kind in "RW" and e.offset == R.VALUE_PORT:
            assert e.size == 4
            regs.append((e.kind, index, e.value))
    assert regs[:2] == [("W", R.REG_ID, R.ID_2), ("R", R.REG_ID, R.ID_2)]
    assert ("R", R.REG_CAPABILITIES, R.CAP_PITCHLOCK) in [(k, i, (v or 0) & R.CAP_PITCHLOCK) for k, i, v in regs]
    assert ("R", R.REG_NUM_DISPLAYS, 1) in regs and ("W", R.REG_CONFIG_DONE, 1) in regs
    assert ("W", R.REG_WIDTH, 1280) in regs and ("W", R.REG_HEIGHT, 800) in regs
    assert sum(1 for k, i, _ in regs if k == "W" and i == R.REG_SYNC) > 100
    assert all(v == 24 for k, i, v in regs if k == "R" and i == R.REG_DEPTH)
