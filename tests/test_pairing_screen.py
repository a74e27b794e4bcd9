"""The node's screen during pairing, on a real X server: the display's SDL window shows the PIN it logs, digit
segment for digit segment, and Ctrl+Alt+P typed into the window opens pairing again with a fresh PIN."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from services.display.presenters import notice
from tests import test_display_xvfb
from tests.test_display_xvfb import crop, grab, window_geometry, x_env
from tests.test_display_xvfb import xserver as xserver  # noqa: F401 (the fixture)
from tests.test_pairing import PIN_LINE, _pin

pytestmark = test_display_xvfb.pytestmark
BOX = (16, 16, 48)
WHITE = (255, 255, 255)


def _pixel(rgb: bytes, width: int, x: int, y: int) -> tuple[int, int, int]:
    i = (y * width + x) * 3
    return rgb[i], rgb[i + 1], rgb[i + 2]


def test_pin_is_shown_in_the_window_and_ctrl_alt_p_opens_again(services, xserver: str, tmp_path: Path) -> None:
    svc = services("display", "--tls-dir", str(tmp_path / "node"), "--pairing", env={"DISPLAY": xserver})
    pin = _pin(svc)
    geo = window_geometry(xserver, svc.proc.pid)
    wid = subprocess.run(["xdotool", "search", "--pid", str(svc.proc.pid)], env=x_env(xserver),
                         capture_output=True, text=True, check=True).stdout.split()[0]  # fmt: skip
    name = subprocess.run(["xdotool", "getwindowname", wid], env=x_env(xserver), capture_output=True, text=True)
    assert f"pairing PIN {pin}" in name.stdout
    deadline = time.monotonic() + 10
    while True:  # the window maps, then SDL draws: wait for the box to be there
        width, _, rgb = grab(xserver, tmp_path)
        shot = crop(rgb, width, geo)
        box, digits = notice.layout(pin, geo.w, geo.h)
        if _pixel(shot, geo.w, box.x + 1, box.y + 1) == BOX or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _pixel(shot, geo.w, box.x + 1, box.y + 1) == BOX
    lit = {(r.x + r.w // 2, r.y + r.h // 2) for r in digits}
    for x, y in lit:
        assert _pixel(shot, geo.w, x, y) == WHITE, (x, y)
    # Every segment cell that is not lit stays the box's colour: the digits are the PIN's, not 8s.
    unit = notice.unit_for(pin, geo.w, geo.h)
    for i, ch in enumerate(pin):
        left = box.x + 2 * unit + i * (notice.CELL_W + notice.GAP) * unit
        for seg, (sx, sy, sw, sh) in notice._SEGMENTS.items():
            centre = (left + (sx + sw / 2) * unit, box.y + 2 * unit + (sy + sh / 2) * unit)
            on = seg in notice._DIGITS[ch]
            middle = (int(centre[0]), int(centre[1]))
            assert (_pixel(shot, geo.w, *middle) == WHITE) == on, (ch, seg)
    # Ctrl+Alt+P in the window: pairing opens again, with a new PIN in the log (and the title).
    subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=x_env(xserver), check=True)
    subprocess.run(["xdotool", "key", "--window", wid, "ctrl+alt+p"], env=x_env(xserver), check=True)
    deadline = time.monotonic() + 10
    while len(PIN_LINE.findall(svc.logs())) < 2:
        assert time.monotonic() < deadline, svc.logs()
        time.sleep(0.1)
    fresh = PIN_LINE.findall(svc.logs())[-1]
    while f"pairing PIN {fresh}" not in subprocess.run(
        ["xdotool", "getwindowname", wid], env=x_env(xserver), capture_output=True, text=True
    ).stdout:
        assert time.monotonic() < deadline, "the window's title does not show the new PIN"
        time.sleep(0.1)
