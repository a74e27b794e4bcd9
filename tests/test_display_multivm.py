"""Four VMs on one display service with the SDL presenter on a real X server (Xvfb), the input service beside it:
a window per VM titled with its name and state, each window's pixels its own VM's framebuffer (X screenshot cut
per window), the keyboard and mouse only to the focused VM (xdotool clicks and keys, SetFocus, the switcher
key), and a resized or full-screen window still exact (scaled) and still clicking where it shows."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from frontend_shim.commands.processes import ROOT
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common.raster import Rect
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.helpers import run_shim
from tests.test_display_xvfb import SCREEN_H, SCREEN_W, crop, grab, pytestmark, x_env, xserver  # noqa: F401
from tests.test_vfio_user_harness import VfioUserClient
from tests.test_vfio_user_svga import bring_up, mapped

VMS = ("A", "B", "C", "D")
GW, GH = 320, 240  # each guest's desktop: four windows fit the 1280x1024 screen side by side


def wait_for(what: str, check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def xdo(display: str, *args: str) -> str:
    return subprocess.run(["xdotool", *args], env=x_env(display), capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()  # fmt: skip


def windows(display: str, pid: int) -> dict[str, tuple[str, str]]:
    """VM name -> (X window id, title) of the service's windows (titles are `rdv <vm> - <state>...`)."""
    res = subprocess.run(["xdotool", "search", "--pid", str(pid)], env=x_env(display), capture_output=True, text=True)
    out = {}
    for wid in res.stdout.split():
        title = subprocess.run(["xdotool", "getwindowname", wid], env=x_env(display), capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        if title.startswith("rdv "):
            out[title.split()[1]] = (wid, title)
    return out


def geometry(display: str, wid: str) -> Rect:
    v = dict(line.split("=", 1) for line in xdo(display, "getwindowgeometry", "--shell", wid).split())
    return Rect(int(v["X"]), int(v["Y"]), int(v["WIDTH"]), int(v["HEIGHT"]))


def shown(display: str, tmp_path: Path, r: Rect) -> bytes:
    sw, _, root = grab(display, tmp_path)
    return crop(root, sw, r)


def downscale(rgb: bytes, width: int, height: int, factor: int) -> bytes:
    """Every factor-th pixel of every factor-th row: what a nearest-neighbour factor-x scaling came from."""
    row = width * 3
    return b"".join(rgb[y * row + x * 3 : y * row + x * 3 + 3] for y in range(0, height, factor)
                    for x in range(0, width, factor))  # fmt: skip


class Subscribers:
    """One input subscription per VM, as the VMs' shims would hold them; what each received."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = input_pb2_grpc.InputServiceStub(self.channel)
        self.got: dict[str, list[input_pb2.InputEvent]] = {vm: [] for vm in VMS}
        self.calls = []
        for vm in VMS:
            call = self.stub.Subscribe(input_pb2.SubscribeRequest(vm=vm), timeout=300)
            call.initial_metadata()  # registered
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(vm, call), daemon=True).start()

    def _drain(self, vm: str, call: grpc.Call) -> None:
        try:
            for event in call:
                self.got[vm].append(event)
        except grpc.RpcError:
            pass

    def keys(self, vm: str) -> list[tuple[str, bool]]:
        return [(e.key.qcode, e.key.pressed) for e in self.got[vm] if e.WhichOneof("kind") == "key"]

    def clear(self) -> None:
        for events in self.got.values():
            events.clear()

    def close(self) -> None:
        for call in self.calls:
            call.cancel()
        self.channel.close()


@pytest.fixture
def four(services, xserver: str) -> Iterator[tuple]:  # noqa: F811
    inp = services("input")
    subs = Subscribers(inp.address)
    disp = services("display", "--input", inp.address, env={"DISPLAY": xserver})
    guests = {}
    try:
        for i, vm in enumerate(VMS):
            driver, link = start_guest([disp.address], "mirrored", "lz4", width=GW, height=GH, vm=vm, seed=7 + i)
            driver.run(seconds=30, fps=0, max_ticks=2 + 3 * i)  # four different pictures
            driver.move_cursor(0, 0, visible=False)
            driver.sync()
            assert link.flush(10)
            guests[vm] = (driver, link)
        yield inp, disp, subs, guests
    finally:
        for _, link in guests.values():
            link.close()
        subs.close()


def focus_of(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        return input_pb2_grpc.InputServiceStub(ch).GetFocus(input_pb2.GetFocusRequest(), timeout=10).focused


def titled_focus(display: str, pid: int) -> list[str]:
    return [vm for vm, (_, title) in windows(display, pid).items() if title.endswith(" - input")]


def test_four_vms_four_windows_each_its_own_picture_and_input(four, xserver: str, tmp_path: Path) -> None:  # noqa: F811
    inp, disp, subs, guests = four
    pid = disp.proc.pid
    wins = wait_for("four windows", lambda: (w := windows(xserver, pid)) and len(w) == 4 and w)
    for vm, (_, title) in wins.items():
        assert title.startswith(f"rdv {vm} - running {GW}x{GH}"), title
    # ListSessions names every VM; Screenshot by vm is that VM's picture.
    with grpc.insecure_channel(disp.address) as ch:
        listed = display_pb2_grpc.DisplayServiceStub(ch).ListSessions(common_pb2.ListSessionsRequest(), timeout=10)
    assert sorted(s.vm for s in listed.sessions) == list(VMS)
    for vm, (driver, _) in guests.items():
        _, _, rgb, reply = screenshot(disp.address, vm=vm)
        assert rgb == guest_rgb(driver), vm
    assert len({guest_rgb(d) for d, _ in guests.values()}) == 4  # four different pictures: a mix-up would show
    # Every window shows its own VM's framebuffer, pixel for pixel.
    geos = {vm: geometry(xserver, wid) for vm, (wid, _) in wins.items()}
    assert all((g.w, g.h) == (GW, GH) for g in geos.values()), geos
    sw, _, root = grab(xserver, tmp_path)
    for vm, (driver, _) in guests.items():
        got = crop(root, sw, geos[vm])
        assert got == guest_rgb(driver), f"{vm}: {first_difference(got, guest_rgb(driver), GW)}"

    # The input service focuses the newest subscriber (D): the titles agree with GetFocus.
    wait_for("titles to follow the focus", lambda: titled_focus(xserver, pid) == [focus_of(inp.address)])
    # A click in C's window moves the focus there; the click and the keys typed next reach C only.
    subs.clear()
    c = geos["C"]
    xdo(xserver, "mousemove", str(c.x + 40), str(c.y + 30), "click", "1")
    wait_for("focus on C", lambda: focus_of(inp.address) == "C")
    xdo(xserver, "key", "a")
    wait_for("C's key", lambda: ("a", False) in subs.keys("C"))
    wait_for("C's title", lambda: titled_focus(xserver, pid) == ["C"])
    moves = [e.pointer_move for e in subs.got["C"] if e.WhichOneof("kind") == "pointer_move"]
    assert (moves[-1].x, moves[-1].y, moves[-1].width, moves[-1].height) == (40, 30, GW, GH)
    assert [(e.button.button, e.button.pressed) for e in subs.got["C"] if e.WhichOneof("kind") == "button"] == [
        (input_pb2.BUTTON_LEFT, True), (input_pb2.BUTTON_LEFT, False)]  # fmt: skip
    # D lost the focus: at most the releases of what it held (nothing), no pointer, no key.
    for vm in ("A", "B", "D"):
        assert [e for e in subs.got[vm] if e.source != "rdv-input:focus"] == [], vm

    # SetFocus(B) from elsewhere: B's window gets the keyboard and the title; typing reaches B only.
    with grpc.insecure_channel(inp.address) as ch:
        input_pb2_grpc.InputServiceStub(ch).SetFocus(input_pb2.SetFocusRequest(vm="B"), timeout=10)
    wait_for("B's title", lambda: titled_focus(xserver, pid) == ["B"])
    subs.clear()
    xdo(xserver, "key", "b")
    wait_for("B's key", lambda: ("b", False) in subs.keys("B"))
    assert all(subs.keys(vm) == [] for vm in ("A", "C", "D"))

    # The switcher key: Ctrl+Alt+N moves the focus to the next VM (C); the N never reaches a guest.
    xdo(xserver, "key", "ctrl+alt+n")
    wait_for("focus on C after the switcher key", lambda: focus_of(inp.address) == "C")
    wait_for("C's title again", lambda: titled_focus(xserver, pid) == ["C"])
    assert all(q != "n" for vm in VMS for q, _ in subs.keys(vm))
    # B held Ctrl and Alt when it lost the focus: they were released to it.
    assert {("ctrl", False), ("alt", False)} <= set(subs.keys("B")), subs.keys("B")

    # The command line's scripted guest: `draw-demo --vm E` gets a fifth window titled with its name, which keeps
    # its last picture, titled disconnected, once the guest is done.
    drawn = run_shim("draw-demo", "--display", disp.address, "--vm", "E", "--seconds", "0.3", "--width", "200",
                     "--height", "150", "--encoding", "lz4")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    wait_for("E's window", lambda: windows(xserver, pid).get("E", ("", ""))[1].startswith("rdv E - disconnected"))
    _, _, rgb, reply = screenshot(disp.address, vm="E")
    assert (reply.width, reply.height) == (200, 150) and len(windows(xserver, pid)) == 5


def test_resized_and_full_screen_windows_stay_exact_and_click_right(four, xserver: str, tmp_path: Path) -> None:  # noqa: F811
    inp, disp, subs, guests = four
    pid = disp.proc.pid
    wins = wait_for("four windows", lambda: (w := windows(xserver, pid)) and len(w) == 4 and w)
    wid = wins["A"][0]
    expected = guest_rgb(guests["A"][0])
    # Twice the size: every guest pixel a 2x2 block (nearest neighbour, aspect kept).
    xdo(xserver, "windowsize", wid, str(2 * GW), str(2 * GH))
    xdo(xserver, "windowraise", wid)  # over B's and C's windows, which it now overlaps
    geo = wait_for("A's window twice as large", lambda: (g := geometry(xserver, wid)) and g.w == 2 * GW and g)

    def exact_at(r: Rect, factor: int) -> bool:
        return downscale(shown(xserver, tmp_path, r), r.w, r.h, factor) == expected

    wait_for("A's picture scaled 2x", lambda: exact_at(geo, 2))
    # A click at window pixel (101, 61) is guest pixel (50, 30).
    subs.clear()
    xdo(xserver, "mousemove", str(geo.x + 101), str(geo.y + 61), "click", "1")
    wait_for("focus on A", lambda: focus_of(inp.address) == "A")
    moves = wait_for("A's click", lambda: [e.pointer_move for e in subs.got["A"]
                                          if e.WhichOneof("kind") == "pointer_move"])  # fmt: skip
    assert (moves[-1].x, moves[-1].y) == (50, 30)
    # Full screen (Ctrl+Alt+F): the 4:3 picture fills the 1280x1024 screen's width, 4x, black bars above and below.
    xdo(xserver, "key", "ctrl+alt+f")
    scale = SCREEN_W // GW
    bar = (SCREEN_H - GH * scale) // 2
    full = Rect(0, bar, GW * scale, GH * scale)
    wait_for("A's picture full screen", lambda: exact_at(full, scale), timeout=30)
    subs.clear()
    xdo(xserver, "mousemove", str(4 * 50 + 1), str(bar + 4 * 30 + 1), "click", "1")
    moves = wait_for("A's click", lambda: [e.pointer_move for e in subs.got["A"]
                                          if e.WhichOneof("kind") == "pointer_move"])  # fmt: skip
    assert (moves[-1].x, moves[-1].y) == (50, 30)
    xdo(xserver, "key", "ctrl+alt+f")  # and back
    wait_for("A's window back", lambda: geometry(xserver, wid).w < SCREEN_W)
    with grpc.insecure_channel(disp.address) as ch:
        state = display_pb2_grpc.DisplayServiceStub(ch).GetDisplayState(display_pb2.GetDisplayStateRequest(vm="A"),
                                                                        timeout=10)  # fmt: skip
    assert state.vm == "A" and state.focused and state.window_title.endswith(" - input") and state.connected
    # The grab key: the title says the pointer and keyboard are held and how to let go.
    xdo(xserver, "key", "ctrl+alt+g")
    wait_for("A grabbed", lambda: windows(xserver, pid)["A"][1].endswith(" - grabbed (Ctrl+Alt+G releases)"))
    xdo(xserver, "key", "ctrl+alt+g")
    wait_for("A released", lambda: windows(xserver, pid)["A"][1].endswith(" - input"))


def test_switcher_mode_one_full_screen_window_with_the_vm_name(services, xserver: str, tmp_path: Path) -> None:  # noqa: F811
    from services.display.presenters import label

    disp = services("display", "--window-mode", "switcher", env={"DISPLAY": xserver})
    guests = {}
    try:
        for i, vm in enumerate(("A", "B")):
            driver, link = start_guest([disp.address], "mirrored", "lz4", width=GW, height=GH, vm=vm, seed=7 + i)
            driver.run(seconds=30, fps=0, max_ticks=2 + 3 * i)
            driver.move_cursor(0, 0, visible=False)
            driver.sync()
            assert link.flush(10)
            guests[vm] = (driver, link)
        pid = disp.proc.pid
        scale = SCREEN_W // GW
        bar = (SCREEN_H - GH * scale) // 2

        def shows(vm: str) -> bool:
            wins = windows(xserver, pid)
            if list(wins) != [vm]:
                return False
            geo = geometry(xserver, wins[vm][0])
            if (geo.w, geo.h) != (SCREEN_W, SCREEN_H):
                return False
            got = shown(xserver, tmp_path, Rect(0, bar, GW * scale, GH * scale))
            lw, lh, _ = label.render(vm)
            # Below the label: the VM's picture, scaled; the label itself differs from it.
            below = (label.MARGIN + lh - bar) // scale + 1
            want = guest_rgb(guests[vm][0])
            return (downscale(got, GW * scale, GH * scale, scale)[below * GW * 3 :] == want[below * GW * 3 :]
                    and downscale(got, GW * scale, GH * scale, scale)[: GW * 3] != want[: GW * 3])  # fmt: skip

        wait_for("A full screen with its name", lambda: shows("A"), timeout=30)
        xdo(xserver, "key", "ctrl+alt+n")
        wait_for("B full screen with its name", lambda: shows("B"), timeout=30)
    finally:
        for _, link in guests.values():
            link.close()


def test_serve_vfio_user_vm_gets_a_window_titled_with_its_name(services, xserver: str, tmp_path: Path) -> None:  # noqa: F811
    """`serve-vfio-user --vm NAME` (the SVGA device QEMU connects to; here the tests' vfio-user client in QEMU's
    place, bringing the device up as vmwgfx does): the display service shows it in a window titled with NAME."""
    disp = services("display", env={"DISPLAY": xserver})
    sock = str(tmp_path / "svga.sock")
    shim = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "serve-vfio-user", "--socket", sock, "--device", "svga",
         "--display", disp.address, "--vm", "vfio-F"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert shim.stdout is not None and shim.stdout.readline().startswith("listening on")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(sock)
        client = VfioUserClient(conn)
        try:
            client.version()
            with mapped(client, 2) as fifo:
                bring_up(client, fifo)
                title = wait_for("the VM's window", lambda: windows(xserver, disp.proc.pid).get("vfio-F"))
        finally:
            client.close()
        assert title[1].startswith("rdv vfio-F - "), title
    finally:
        shim.terminate()
        shim.wait(10)
