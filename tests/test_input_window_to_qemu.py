"""The whole input path, real parts only: xdotool moves and clicks on the display service's SDL window (Xvfb),
the display maps the window position through its viewport to guest coordinates, the input service routes it,
the shim's forward-input injects it over QMP, and QEMU's own trace shows the tablet event."""

from __future__ import annotations

import subprocess

from tests.display_helpers import H, W, start_guest
from tests.test_display_xvfb import window_geometry, x_env, xserver  # noqa: F401  (xserver is a fixture)
from tests.test_input_qemu import axis, forwarder, qemu  # noqa: F401  (fixtures)


def test_click_on_the_tv_window_reaches_the_guest(services, xserver, qemu, forwarder) -> None:  # noqa: F811
    inp = services("input")
    # This screen is the TV: it shows the right half of the guest desktop (screen extension).
    tv = services("display", "--viewport", f"{W // 2},0,{W // 2},{H}", "--input", inp.address,
                  env={"DISPLAY": xserver})  # fmt: skip
    q = qemu()
    forwarder(inp.address, q.qmp(), "vm")  # the VM the window shows (start_guest's default name)
    driver, link = start_guest([tv.address], "mirrored", "lz4")
    try:
        geo = window_geometry(xserver, tv.proc.pid)
        subprocess.run(["xdotool", "mousemove", str(geo.x + 10), str(geo.y + 20)], env=x_env(xserver), check=True)
        subprocess.run(["xdotool", "click", "1"], env=x_env(xserver), check=True)
        got = q.wait_events(4, timeout=15)
    finally:
        link.close()
    pointer = [d for e, _, d in got if e in ("abs", "btn")]
    # Pixel (10, 20) of the TV window is guest pixel (W/2 + 10, 20) of the W x H desktop.
    assert f"axis x, {axis(W // 2 + 10, W)}" in pointer and f"axis y, {axis(20, H)}" in pointer
    assert [d for d in pointer if d.startswith("button")] == ["button left, down 1", "button left, down 0"]
    assert [d for d in pointer if d.startswith("axis x")][-1] == f"axis x, {axis(W // 2 + 10, W)}"
