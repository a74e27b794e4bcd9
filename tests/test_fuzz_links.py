"""Fuzzing trap sequences through the shim's links into real services: random port accesses (and, for the
SVGA II, random FIFO contents) go through AudioLink / DisplayLink exactly as a guest's would.

Invariants per example: an access raises nothing but AccessError, and that only when no card could receive it;
the session survives (no reconnect: the shim never sent anything its service refused); mirrored mode: after
the sequence the service's copy of the registers equals the shim's (through a barrier), and the same holds for
the display's register file in backend mode (the shim restores it from there); the service's picture equals
the guest's VRAM; the link never writes guest memory that the device may not touch.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from frontend_shim.guests.guest import EventLine, RamMemory
from frontend_shim.guests.scripted_svga import FifoWriter, ScriptedSvgaDriver, new_memory
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.display import DisplayLink
from services.common.clock import Clock
from services.common.raster import Rect
from services.devices import es1370_regs as AR
from services.devices import svga_regs as SR
from services.devices.es1370 import AccessError, check_access
from services.devices.svga import AccessError as SvgaAccessError
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.fault_helpers import TimedDevice
from tests.fuzz_strategies import es1370_access, fuzz_settings, svga_fifo_words, svga_port_ops
from tests.helpers import ServiceProcess, start_service

GUEST_RAM = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("audio", tmp_path_factory.mktemp("fuzz-links"), "--sink", "null", "--clock-scale", "20")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("display", tmp_path_factory.mktemp("fuzz-links"), "--presenter", "headless")
    yield svc
    svc.stop()


# A guest that points the DMA into its RAM and starts a DAC now and then: the DMA path runs, not only registers.
_dma_setup = st.lists(
    st.sampled_from([
        (AR.MEMPAGE, AR.FRAME_PAGE_DAC), (AR.DAC2_FRAMEADR & 0xFF, 0x100000), (AR.DAC1_FRAMEADR & 0xFF, 0x1FFF00),
        (AR.DAC2_FRAMECNT & 0xFF, 0x3FF), (AR.DAC1_FRAMECNT & 0xFF, 0x3F), (AR.DAC2_SCOUNT, 0xFF),
        (AR.SERIAL_CONTROL, 0x3F0F00), (AR.CONTROL, AR.CTRL_DAC1_EN | AR.CTRL_DAC2_EN),
    ]),
    max_size=8,
)  # fmt: skip
_audio_ops = st.lists(
    st.one_of(
        es1370_access().map(lambda a: ("io", *a)),
        st.tuples(st.just("run"), st.integers(1, 20)),  # let the DMA move for a few ms
    ),
    max_size=40,
)


@fuzz_settings(ci=40, weight=0.01)
@given(mode=st.sampled_from(["mirrored", "backend"]), setup=_dma_setup, ops=_audio_ops)
def test_audio_link_under_random_accesses(audio: ServiceProcess, mode: str, setup: list, ops: list) -> None:
    memory = RamMemory(GUEST_RAM)
    memory.data[:] = bytes(range(256)) * (GUEST_RAM // 256)
    before = bytes(memory.data)
    link = AudioLink(audio.address, mode, memory, EventLine(), clock=Clock(20), access_timeout=2.0)
    link.start()
    try:
        for offset, value in setup:
            link.io_write(0, offset, 4, value)
        for op in ops:
            if op[0] == "run":
                time.sleep(op[1] / 1000)
                continue
            _, write, offset, size, value = op
            legal = _legal(offset, size)
            try:
                if write:
                    link.io_write(0, offset, size, value)
                else:
                    assert 0 <= link.io_read(0, offset, size) < (1 << (8 * size))
            except AccessError:
                assert not legal, (offset, size)
            else:
                assert legal, (offset, size)
        if mode == "mirrored":
            ours, theirs = link.compare_mirror()
            assert theirs is not None and ours == theirs
        else:
            assert link.barrier() is not None
        assert link.stats.reconnects == 0 and link.stats.read_timeouts == 0 and link.connected
    finally:
        link.close(drain=False)
    assert bytes(memory.data) == before  # playback only reads guest memory


def _legal(offset: int, size: int) -> bool:
    try:
        check_access(offset, size)
    except AccessError:
        return False
    return True


_display_ops = st.lists(
    st.one_of(
        svga_port_ops().map(lambda ops: ("ports", ops)),
        svga_fifo_words().map(lambda words: ("fifo", words)),
        st.just(("sync",)),
    ),
    min_size=1,
    max_size=10,
)


@fuzz_settings(ci=30, weight=0.01)
@given(
    mode=st.sampled_from(["mirrored", "backend"]),
    encoding=st.sampled_from(["raw", "lz4", "zstd", "lzo", "auto"]),
    tile_diff=st.booleans(),
    ops=_display_ops,
)
def test_display_link_under_random_ports_and_fifo(
    display: ServiceProcess, mode: str, encoding: str, tile_diff: bool, ops: list
) -> None:
    vram, fifo = new_memory(vram_size=1 << 20, fifo_size=16384)
    link = DisplayLink([display.address], mode, vram, fifo, encoding=encoding, tile_diff=tile_diff,
                       access_timeout=2.0)  # fmt: skip
    link.start()
    try:
        driver = ScriptedSvgaDriver(link, vram, fifo)
        driver.probe()
        driver.set_mode(80, 60)
        driver.init_fifo(fifo_min=1024)
        for op in ops:
            if op[0] == "fifo":  # the guest's commands, published with NEXT_CMD as a driver does
                writer = FifoWriter(fifo, min_offset=1024, init=False)
                words = op[1][: writer.free_bytes // 4]
                if struct.unpack_from("<4I", fifo, 0)[:2] == (1024, len(fifo)):
                    writer.write_words(words)
            elif op[0] == "sync":
                link.io_write(0, SR.INDEX_PORT, 4, SR.REG_SYNC)
                link.io_write(0, SR.VALUE_PORT, 4, 1)
            else:
                for rw, offset, size, value in op[1]:
                    legal = size in (1, 2, 4) and offset + size <= SR.IO_BAR_SIZE
                    try:
                        if rw == "w":
                            link.io_write(0, offset, size, value)
                        else:
                            link.io_read(0, offset, size)
                    except SvgaAccessError:
                        assert not legal, (offset, size)
        link.process_fifo()
        assert link.flush(10)
        ours, theirs = link.compare_mirror()
        model = link.model
        showing = model.surface is not None and model.mode.enabled
        if not showing and theirs is not None:  # the cursor image travels in frames: none while nothing shows
            ours.ClearField("cursor")
            theirs.ClearField("cursor")
        assert theirs is not None and ours == theirs, _differences(ours, theirs)
        assert link.stats.reconnects == 0 and link.connected, "the service refused what the shim sent"
        if showing and model.mode.bpp == 32:
            driver.width, driver.height, driver.pitch, driver.bpp = (
                model.mode.width, model.mode.height, model.mode.pitch, 32)  # fmt: skip
            w, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)  # type: ignore[union-attr]
            assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
    finally:
        link.close(drain=False)


def _differences(ours: Message, theirs: Message | None) -> str:
    if theirs is None:
        return "no barrier answer"
    return ", ".join(
        f"{f.name}: ours {getattr(ours, f.name)!r:.60} theirs {getattr(theirs, f.name)!r:.60}"
        for f in ours.DESCRIPTOR.fields
        if getattr(ours, f.name) != getattr(theirs, f.name)
    )


def test_a_tiny_ring_at_a_high_rate_does_not_flood_the_link(audio: ServiceProcess) -> None:
    """Found by the fuzzer: DAC2 at its reset rate (705.6 kHz, 8-bit mono) over a 4-byte ring without period
    interrupts is 176,000 DMA windows a second. One message per window flooded the stream (and the service's
    event loop, shared by every session) so that a barrier behind them took longer than 5 s. Windows are now
    coalesced into one chunk per pass and the pass is bounded: the guest sees a slower card, nothing floods."""
    memory = RamMemory(GUEST_RAM)
    timed = TimedDevice(link := AudioLink(audio.address, "mirrored", memory, EventLine(), clock=Clock(20)))
    link.start()
    try:
        timed.io_write(0, AR.CONTROL, 4, AR.CTRL_DAC1_EN | AR.CTRL_DAC2_EN)  # rings at address 0, 4 bytes each
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            timed.io_read(0, AR.STATUS, 4)
            time.sleep(0.001)
        sent = link.stats.messages_to_service
        ours, theirs = link.compare_mirror(timeout=2.0)
        assert theirs is not None and ours == theirs
        assert link.stats.pcm_bytes > 4 * 4  # the DMA did run (round its 4-byte ring: a jitter buffer of 4 bytes)
        assert sent < 2000, f"{sent} messages in 0.5 s"  # one per pacer pass and channel at most (~400)
        assert timed.max_block_s < 0.05, timed.worst()  # the DMA never holds the device lock for long
    finally:
        link.close(drain=False)


def test_flush_returns_while_the_guest_shows_nothing(display: ServiceProcess) -> None:
    """Found by the fuzzer: with the display disabled (or a mode that does not fit VRAM) damage cannot be sent,
    and `flush` (hence `close`) waited out its whole timeout for it. Now such damage counts as nothing to send;
    it goes out as a full redraw once the guest shows a mode again."""
    driver, link = start_guest([display.address], "backend", "lz4", width=160, height=120)
    try:
        driver.write_reg(SR.REG_ENABLE, 0)
        driver.fill(Rect(0, 0, 40, 40), 0x00FF00)
        driver.update(Rect(0, 0, 160, 120))
        driver.sync()
        started = time.monotonic()
        assert link.flush(5) and time.monotonic() - started < 1.0
        driver.write_reg(SR.REG_ENABLE, SR.ENABLE_ENABLE)
        driver.sync()
        assert link.flush(5)
        w, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)  # type: ignore[union-attr]
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
    finally:
        link.close()


@pytest.mark.parametrize("how", ["display off", "FIFO registers out of bounds"])
def test_a_backend_guest_whose_sync_cannot_run_sees_busy_clear(display: ServiceProcess, how: str) -> None:
    """Found by the fuzzer: the service sets BUSY on SYNC and waits for the shim's `fifo_done`, which the shim
    sent only after a pass that ran. A pass that cannot run (display disabled, FIFO registers out of bounds)
    never cleared it: a backend guest polling BUSY waited forever (mirrored guests read the shim's own copy)."""
    driver, link = start_guest([display.address], "backend", "lz4", width=160, height=120)
    try:
        if how == "display off":
            driver.write_reg(SR.REG_ENABLE, 0)
        else:
            struct.pack_into("<I", driver.fifo, 0, 3)  # MIN: not aligned, inside the FIFO registers
        driver.sync()  # raises GuestError after 2 s of BUSY
        ours, theirs = link.compare_mirror()
        assert theirs is not None and ours == theirs, _differences(ours, theirs)
    finally:
        link.close(drain=False)
