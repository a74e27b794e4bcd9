"""Screen extension, viewports, reconnects and the draw-demo command, against real display services."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common.png import decode
from services.common.raster import Rect
from services.display.viewport import Viewport
from tests.display_helpers import H, W, first_difference, guest_rgb, screenshot, start_guest
from tests.helpers import run_shim


@pytest.mark.parametrize("encoding", ["lz4", "auto"])
@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_two_screens_side_by_side_show_the_desktop(services, mode: str, encoding: str) -> None:
    half = W // 2
    left = services("display", "--headless", "--viewport", f"0,0,{half},{H}")
    right = services("display", "--headless", "--viewport", f"{half},0,{W - half},{H}")
    driver, link = start_guest([left.address, right.address], mode, encoding, tile_diff=encoding == "auto")
    try:
        driver.run(seconds=30, fps=0, max_ticks=60)  # windows slide across the seam
        driver.sync()
        assert link.flush(10)
        shots = [screenshot(s.address, slot.conn.session_id) for s, slot in zip((left, right), link.slots, strict=True)]
    finally:
        link.close()
    (lw, lh, lrgb, lrep), (rw, rh, rrgb, rrep) = shots
    assert (lw, lh, rw, rh) == (half, H, W - half, H)
    assert (lrep.viewport.x, rrep.viewport.x) == (0, half)
    side_by_side = b"".join(lrgb[y * lw * 3 : (y + 1) * lw * 3] + rrgb[y * rw * 3 : (y + 1) * rw * 3] for y in range(H))
    assert side_by_side == guest_rgb(driver), first_difference(side_by_side, guest_rgb(driver), W)
    # Each service got only its half: less than the whole desktop's pixels each, and copies whose source lay on
    # the other screen went as pixels.
    assert link.stats.copies_as_pixels > 0


def test_viewport_maps_window_positions_back_to_the_guest() -> None:
    v = Viewport.parse("1024,0,1024,768")
    assert v.to_guest(0, 0, 1024, 768, 2048, 768) == (1024, 0)
    assert v.to_guest(100, 50, 1024, 768, 2048, 768) == (1124, 50)
    assert v.to_guest(100, 50, 512, 384, 2048, 768) == (1224, 100)  # a window scaled to half size
    assert v.to_guest(-5, 10, 1024, 768, 2048, 768) == (1019, 10)  # left of the window: the other screen
    whole = Viewport.parse("")
    assert whole.whole and whole.rect(800, 600) == Rect(0, 0, 800, 600)
    assert whole.to_guest(799, 599, 800, 600, 800, 600) == (799, 599)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,10", "-1,0,10,10"):
        with pytest.raises(ValueError):
            Viewport.parse(bad)


def test_reconnect_gets_a_full_redraw(services, tmp_path: Path) -> None:
    svc = services("display", "--headless")
    port = svc.address.rsplit(":", 1)[1]
    driver, link = start_guest([svc.address], "mirrored", "lz4")
    try:
        driver.run(seconds=30, fps=0, max_ticks=10)
        driver.sync()
        assert link.flush(10)
        svc.stop(sig_kill=True)
        driver.run(seconds=30, fps=0, max_ticks=10)  # the guest keeps drawing while the screen is gone
        again = services("display", "--headless", listen=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 15
        while not link.connected:
            assert time.monotonic() < deadline, "the link did not reconnect"
            time.sleep(0.05)
        driver.run(seconds=30, fps=0, max_ticks=3)
        driver.sync()
        assert link.flush(10)
        w, h, rgb, _ = screenshot(again.address, link.slots[0].conn.session_id)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
        assert link.stats.reconnects == 1
    finally:
        link.close()


def test_draw_demo_command_saves_what_the_service_shows(services, tmp_path: Path) -> None:
    svc = services("display", "--headless")
    png = tmp_path / "guest.png"
    res = run_shim(
        "draw-demo", "--display", svc.address, "--seconds", "1", "--encoding", "zstd", "--tile-diff",
        "--mode", "backend", "--width", "800", "--height", "600", "--save-guest-png", str(png), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["flushed"] and summary["frames"] > 10 and summary["compression_ratio"] > 2
    assert summary["encodings"] == {"zstd": summary["pixel_rects"]}
    _, _, guest = decode(png.read_bytes())
    w, h, shown, _ = screenshot(svc.address)  # the closed session's last picture stays on screen
    assert (w, h) == (800, 600)
    assert shown == guest, first_difference(shown, guest, w)
    with grpc.insecure_channel(svc.address) as ch:
        sessions = display_pb2_grpc.DisplayServiceStub(ch).ListSessions(common_pb2.ListSessionsRequest())
    assert not sessions.sessions


def test_presents_are_paced_and_damage_coalesced(services) -> None:
    """At 10 presents a second, a guest drawing as fast as it can is shown at most ~10 times a second: the
    frames in between coalesce (at the shim while the in-flight window is full, at the stage between presents)."""
    svc = services("display", "--presenter", "headless", "--refresh-hz", "10")
    driver, link = start_guest([svc.address], "mirrored", "lz4")
    try:
        started = time.monotonic()
        ticks = driver.run(seconds=1.0, fps=0)
        driver.sync()
        assert link.flush(10)
        elapsed = time.monotonic() - started
        with grpc.insecure_channel(svc.address) as ch:
            state = display_pb2_grpc.DisplayServiceStub(ch).GetDisplayState(
                display_pb2.GetDisplayStateRequest(session_id=link.slots[0].conn.session_id)
            )
        w, _, rgb, _ = screenshot(svc.address, link.slots[0].conn.session_id)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
    finally:
        link.close()
    assert state.presenter == "headless"
    assert state.stats.presents <= 10 * elapsed + 3
    assert ticks > 2 * state.stats.presents  # many guest frames per present
    assert state.stats.frames < ticks  # and fewer frames on the wire than the guest drew
