"""Pixel-exact: after a workload, each display service's desktop copy equals the guest's VRAM.

A real display service (headless SDL) and the real shim link; the scripted guest drives a small FIFO (8 KiB:
it laps the ring many times) and optionally splits every 7th command around a SYNC, so the device sees
partial commands. Every encoding, tile diff on and off, both coherence modes.
"""

from __future__ import annotations

import grpc
import pytest

from frontend_shim.guests.scripted_svga import new_memory
from frontend_shim.links.display import DisplayLink
from frontend_shim.links.display_frames import add_damage
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common.raster import Rect
from services.devices import svga_regs as SR
from services.devices.svga_convert import registers_to_proto
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.helpers import start_service

TICKS = 40


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory):
    svc = start_service("display", tmp_path_factory.mktemp("display"), "--headless")
    yield svc
    svc.stop()


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
@pytest.mark.parametrize("tile_diff", [False, True], ids=["rects", "tiles"])
@pytest.mark.parametrize("encoding", ["raw", "lzo", "lz4", "zstd", "image", "auto"])
def test_service_copy_equals_guest_vram(display, mode: str, tile_diff: bool, encoding: str) -> None:
    driver, link = start_guest([display.address], mode, encoding, tile_diff, partial_every=7)
    try:
        driver.run(seconds=30, fps=0, max_ticks=TICKS)
        driver.sync()
        assert link.flush(10), "frames were not all presented"
        w, h, rgb, reply = screenshot(display.address, link.slots[0].conn.session_id)
        assert (w, h) == (driver.width, driver.height)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
        s = link.stats
        assert driver.laps >= 2, "the FIFO ring should have wrapped"
        assert s.fifo_errors == 0 and s.read_timeouts == 0
        assert s.copies > 0 and s.fills > 0, "RECT_COPY / RECT_FILL travel as commands"
        if encoding != "auto":  # a payload that would not be smaller than the pixels goes raw
            assert encoding in s.encodings and set(s.encodings) <= {encoding, "raw"}
        if tile_diff:
            assert s.tiles_skipped > 0
        if mode == "backend":
            assert s.reads > 0  # every read was a round trip
    finally:
        link.close()


def test_mirrored_registers_equal_the_service_replica(display) -> None:
    driver, link = start_guest([display.address], "mirrored", "lz4")
    try:
        driver.run(seconds=30, fps=0, max_ticks=5)
        driver.sync()
        assert link.flush(10)
        with link.lock:
            ours = registers_to_proto(link.model.snapshot())
            ack = link.barrier()
        assert ack is not None
        assert ack.registers == ours
    finally:
        link.close()


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_selecting_the_selected_register_again_sends_nothing_in_mirrored_mode(display, mode: str) -> None:
    """A driver polling BUSY writes the same INDEX before every VALUE read: in mirrored mode nothing changes at
    either end, so no message goes; in backend mode the service holds the index, and every write goes."""

    vram, fifo = new_memory()
    link = DisplayLink([display.address], mode, vram, fifo, encoding="lz4", access_timeout=2.0)
    link.start()
    try:
        link.io_write(0, SR.INDEX_PORT, 4, SR.REG_BUSY)
        assert link.barrier() is not None
        sent = link.stats.messages_to_service
        for _ in range(20):
            link.io_write(0, SR.INDEX_PORT, 4, SR.REG_BUSY)
            link.io_read(0, SR.VALUE_PORT, 4)
        assert link.barrier() is not None
        extra = link.stats.messages_to_service - sent - 1  # (the barrier itself)
        if mode == "mirrored":
            assert extra == 0
            ours, theirs = link.compare_mirror()
            assert theirs is not None and ours == theirs
        else:
            assert extra >= 20  # 20 writes (batched or not) and 20 reads at least
    finally:
        link.close(drain=False)


def test_backend_mode_reads_come_from_the_service(display) -> None:
    driver, link = start_guest([display.address], "backend", "raw")
    try:
        # The service's register file answers: its BYTES_PER_LINE follows the mode the guest set there.
        assert driver.read_reg(12) == driver.width * 4
        with grpc.insecure_channel(display.address) as ch:
            state = display_pb2_grpc.DisplayServiceStub(ch).GetDisplayState(
                display_pb2.GetDisplayStateRequest(session_id=link.slots[0].conn.session_id)
            )
        assert state.registers.width == driver.width and state.registers.config_done == 1
        assert state.stats.register_reads > 0
        assert not state.registers.busy  # the shim ran the FIFO and said so
    finally:
        link.close()


def test_damage_coalescing() -> None:
    rects: list[Rect] = []
    add_damage(rects, Rect(0, 0, 10, 10))
    add_damage(rects, Rect(2, 2, 3, 3))  # inside: nothing new
    assert rects == [Rect(0, 0, 10, 10)]
    add_damage(rects, Rect(10, 0, 10, 10))  # adjacent: merged without waste
    assert rects == [Rect(0, 0, 20, 10)]
    add_damage(rects, Rect(500, 500, 4, 4))  # far away: kept apart
    assert len(rects) == 2
    for i in range(100):
        add_damage(rects, Rect(i * 37 % 600, i * 53 % 400, 3, 3))
    assert len(rects) <= 32
    covered = Rect(0, 0, 20, 10)
    assert any(r.contains(covered) for r in rects)
