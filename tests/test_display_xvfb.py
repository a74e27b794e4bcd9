"""A real SDL window on a real X server (Xvfb): what the window shows is the guest's framebuffer, pixel for
pixel, with the hardware cursor drawn on top; mouse input on the window reaches the input service in guest
desktop coordinates through the viewport."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common.png import decode
from services.common.raster import Rect
from tests.display_helpers import H, W, first_difference, guest_rgb, screenshot, start_guest
from tests.xvfb import xvfb

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("Xvfb", "import", "xdotool")), reason="needs Xvfb, imagemagick and xdotool"
)
SCREEN_W, SCREEN_H = 1280, 1024


@pytest.fixture
def xserver(tmp_path: Path) -> Iterator[str]:
    with xvfb(tmp_path / "xvfb.log", SCREEN_W, SCREEN_H) as display:
        yield display


def x_env(display: str) -> dict[str, str]:
    return {**os.environ, "DISPLAY": display}


def window_geometry(display: str, pid: int, timeout: float = 10.0) -> Rect:
    """Where the display service's SDL window is on the X screen (found by its _NET_WM_PID)."""
    deadline = time.monotonic() + timeout
    while True:
        res = subprocess.run(["xdotool", "search", "--pid", str(pid)], env=x_env(display),
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode == 0 and res.stdout.split():
            wid = res.stdout.split()[0]
            geo = subprocess.run(["xdotool", "getwindowgeometry", "--shell", wid], env=x_env(display),
                                 capture_output=True, text=True)  # fmt: skip
            if geo.returncode == 0:  # else the window went away between search and query: look again
                v = dict(line.split("=", 1) for line in geo.stdout.split())
                return Rect(int(v["X"]), int(v["Y"]), int(v["WIDTH"]), int(v["HEIGHT"]))
        assert time.monotonic() < deadline, "no SDL window appeared"
        time.sleep(0.1)


def grab(display: str, tmp_path: Path) -> tuple[int, int, bytes]:
    out = tmp_path / "root.png"
    subprocess.run(["import", "-window", "root", "-depth", "8", f"PNG24:{out}"], env=x_env(display), check=True,
                   timeout=30)  # fmt: skip
    return decode(out.read_bytes())


def crop(rgb: bytes, width: int, r: Rect) -> bytes:
    return b"".join(rgb[(y * width + r.x) * 3 : (y * width + r.right) * 3] for y in range(r.y, r.bottom))


def test_window_shows_guest_pixels_and_cursor_on_top(services, xserver: str, tmp_path: Path) -> None:
    svc = services("display", env={"DISPLAY": xserver})
    driver, link = start_guest([svc.address], "mirrored", "lz4")
    try:
        driver.run(seconds=30, fps=0, max_ticks=20)
        driver.move_cursor(200, 150, visible=True)
        driver.sync()
        assert link.flush(10)
        geo = window_geometry(xserver, svc.proc.pid)
        assert (geo.w, geo.h) == (W, H)
        sw, _, root = grab(xserver, tmp_path)
        shown = crop(root, sw, geo)
        expected = guest_rgb(driver)
        # The cursor is on screen: its 16x16 box differs from VRAM, everything outside it is exact.
        cursor_box = Rect(200, 150, 16, 16)
        outside = [(x, y) for y in range(H) for x in range(0, W, 7) if not cursor_box.contains(Rect(x, y, 1, 1))]
        assert all(shown[(y * W + x) * 3 : (y * W + x) * 3 + 3] == expected[(y * W + x) * 3 : (y * W + x) * 3 + 3]
                   for x, y in outside)  # fmt: skip
        assert crop(shown, W, cursor_box) != crop(expected, W, cursor_box), "the cursor should be drawn"
        # ... and the desktop copy (Screenshot) never has the cursor in it.
        _, _, copy_rgb, _ = screenshot(svc.address, link.slots[0].conn.session_id)
        assert copy_rgb == expected
        # Hide the cursor: now the whole window is the guest's framebuffer, pixel for pixel.
        driver.move_cursor(200, 150, visible=False)
        driver.sync()
        assert link.flush(10)
        for _ in range(20):
            sw, _, root = grab(xserver, tmp_path)
            shown = crop(root, sw, geo)
            if shown == expected:
                break
            time.sleep(0.1)
        assert shown == expected, first_difference(shown, expected, W)
    finally:
        link.close()


def test_window_input_reaches_the_input_service_in_guest_coordinates(services, xserver: str) -> None:
    inp = services("input")
    svc = services("display", "--viewport", f"{W // 2},0,{W // 2},{H}", "--input", inp.address,
                   env={"DISPLAY": xserver})  # fmt: skip
    with grpc.insecure_channel(inp.address) as ch:
        # The window's VM (start_guest's default name): a window's events go to its own VM only.
        sub = input_pb2_grpc.InputServiceStub(ch).Subscribe(input_pb2.SubscribeRequest(vm="vm"), timeout=20)
        sub.initial_metadata()  # registered
        driver, link = start_guest([svc.address], "mirrored", "lz4")
        try:
            geo = window_geometry(xserver, svc.proc.pid)
            assert (geo.w, geo.h) == (W // 2, H)
            subprocess.run(["xdotool", "mousemove", str(geo.x + 10), str(geo.y + 20)], env=x_env(xserver), check=True)
            subprocess.run(["xdotool", "click", "1"], env=x_env(xserver), check=True)
            got = []
            for event in sub:
                got.append(event)
                if event.WhichOneof("kind") == "button" and not event.button.pressed:
                    break
        finally:
            sub.cancel()
            link.close()
    moves = [e.pointer_move for e in got if e.WhichOneof("kind") == "pointer_move"]
    assert moves and (moves[-1].x, moves[-1].y) == (W // 2 + 10, 20)  # the right half of the desktop
    assert (moves[-1].width, moves[-1].height) == (W, H)
    buttons = [(e.button.button, e.button.pressed) for e in got if e.WhichOneof("kind") == "button"]
    assert buttons == [(input_pb2.BUTTON_LEFT, True), (input_pb2.BUTTON_LEFT, False)]
    assert all(e.source == "display" for e in got)
