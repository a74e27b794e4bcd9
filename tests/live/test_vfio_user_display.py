"""Live: a real Linux guest's own vmwgfx drives rdv's SVGA II over vfio-user, and its keyboard is rdv's input.

QEMU 10.2.2 (TCG, `-nodefaults -vga none`) attaches `serve-vfio-user --device svga`: BAR0's ports are trapped,
VRAM and FIFO memory are the shim's memfds mapped into the guest. Debian's 6.1 kernel binds vmwgfx to it,
fbcon comes up on /dev/fb0, and then, in both coherence modes:

1. fbcon's text reaches the headless display service (its Screenshot shows the glyphs);
2. with fbcon unbound, the guest writes a generated pattern into a 256x128 rectangle of /dev/fb0 (busybox `dd`,
   one row per call) and the service's Screenshot shows it pixel for pixel;
3. keys injected into the input service (Inject RPC) go through `forward-input` and QMP into QEMU's PS/2
   keyboard and arrive at the guest's evdev as EV_KEY with Linux's key codes (r, d, v = 19, 32, 47).
   The guest and the test take turns through the keyboard too: the guest waits for F1 after printing its text.

How the fb write reaches the service: vmwgfx 6.1 uses DRM's generic fbdev emulation over a shadow buffer;
`write()` on /dev/fb0 (drm_fb_helper_sys_write) damages the written range and the damage worker blits it into
the framebuffer in VRAM and sends UPDATE + SYNC. So the FIFO alone carries it: mirrored mode runs with the
shim's VRAM scan off to prove that; backend mode keeps the scan on (the default) and reports what it found.

Why the `--unaligned-io` QEMU variant (tests/tools/build_qemu_vfio_user.sh): vmwgfx reads and writes the
SVGA VALUE port, BAR0+1, with 32-bit `inl`/`outl`. Under TCG, stock QEMU 10.2.2's vfio region ops refuse
that unaligned access (`Invalid read at addr 0x1, size 4 ... unaligned`) and the driver stops at its first
read. The test-only build sets `.unaligned = true` in those ops (one line in hw/vfio/region.c), so the access
reaches the server as one 4-byte access at offset 1, which this test checks. Under KVM, stock QEMU is expected
to split the access into aligned 1+2+1-byte pieces instead; the device model reassembles those (unit-tested).

Set RDV_RECORD_TRACES=1 to copy each mode's register access log into tests/data/ (see tests/data/README.md).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from frontend_shim.vfio_user.trace import read_access_log
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common.png import bgrx_to_rgb
from services.devices import svga_regs as R
from tests.display_helpers import screenshot
from tests.helpers import ROOT, ServiceProcess, start_service
from tests.live.guest import MEMORY, Shim, build_initrd

pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

DATA = ROOT / "tests" / "data"
BOOT_TIMEOUT = 150.0  # QEMU start to RDV-READY
STEP_TIMEOUT = 60.0  # each later step (the guest waits 90 s for a key at most)
X0, Y0, PW, PH = 256, 256, 256, 128  # the pattern's rectangle in the framebuffer (rows of 1024 bytes)
TEXT_ROWS = 16  # fbcon's first text line (8x16 font)
KEY_F1, KEY_R, KEY_D, KEY_V = 59, 19, 32, 47  # Linux input-event-codes.h

RUN_SH = rf"""#!/bin/sh
# rdv live test: vmwgfx on rdv's SVGA II; fbcon text; a pattern written to /dev/fb0; keys read from evdev.
X0={X0} Y0={Y0} W={PW} H={PH}
fb=/sys/class/graphics/fb0
for d in /sys/bus/pci/drivers/vmwgfx/0000:*; do [ -e "$d" ] && echo "RDV-BOUND vmwgfx ${{d##*/}}"; done
dmesg | grep -e vmwgfx -e fbcon -e 'frame buffer'
echo "RDV-DRM $(ls /sys/class/drm | tr '\n' ' ')"
[ -e /dev/fb0 ] || {{ echo "RDV-ERROR no /dev/fb0"; exit 1; }}
stride=$(cat $fb/stride)
echo "RDV-FB name=$(cat $fb/name) size=$(cat $fb/virtual_size) bpp=$(cat $fb/bits_per_pixel) stride=$stride"

kbd=
for e in /sys/class/input/event*; do
    grep -q "AT Translated Set 2 keyboard" "$e/device/name" 2>/dev/null && kbd=/dev/input/${{e##*/}}
done
[ -n "$kbd" ] || {{ echo "RDV-ERROR no keyboard event device"; exit 1; }}
echo "RDV-KBD $kbd"
cat "$kbd" > /tmp/ev &
catpid=$!
# struct input_event on x86_64: 16 bytes of time, u16 type, u16 code, s32 value -> 12 u16 per event
keys() {{ od -An -tu2 -w24 -v /tmp/ev | awk '$9 == 1 {{ print $10, $11 + 65536 * $12 }}'; }}
wait_release() {{  # key code: until its release arrives (90 s at most)
    i=0
    while [ $i -lt 450 ]; do
        keys | grep -q "^$1 0\$" && return 0
        sleep 0.2; i=$((i + 1))
    done
    echo "RDV-ERROR no release of key $1"; return 1
}}

printf '\033[2J\033[H%s\n' "################################################################" > /dev/tty1
echo "RDV-WAIT-FBCON"
wait_release {KEY_F1} || exit 1

echo 0 > /sys/class/graphics/fbcon/cursor_blink
for v in /sys/class/vtconsole/vtcon*; do
    grep -q "frame buffer" "$v/name" && echo 0 > "$v/bind" && echo "RDV-UNBOUND ${{v##*/}} $(cat $v/name)"
done
[ $((stride % 1024)) -eq 0 ] || {{ echo "RDV-ERROR stride $stride is not a multiple of 1024"; exit 1; }}
r=0
while [ $r -lt $H ]; do
    dd if=/rdv/pattern.bin of=/dev/fb0 bs=1024 skip=$r count=1 conv=notrunc 2>/dev/null \
        seek=$(( ((Y0 + r) * stride + X0 * 4) / 1024 )) || {{ echo "RDV-ERROR dd row $r"; exit 1; }}
    r=$((r + 1))
done
echo "RDV-WAIT-PATTERN"
wait_release {KEY_V} || exit 1
kill $catpid
keys | while read code value; do echo "RDV-KEY code=$code value=$value"; done
"""


def pattern() -> bytes:
    """PW x PH pixels of 32-bit XRGB noise (fixed seed): nothing else on screen can look like it."""
    return random.Random(0x5D6A).randbytes(PW * PH * 4)


# ----------------------------------------------------------------------------------------------- processes
def start_svga_shim(work: Path, displays: list[str], mode: str, access_log: Path, *extra: str) -> Shim:
    sock = str(work / "svga.sock")
    err = work / "shim.log"
    display_args = [a for d in displays for a in ("--display", d)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "serve-vfio-user", "--socket", sock, "--device", "svga",
         *display_args, "--mode", mode, "--access-log", str(access_log), "--json", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=err.open("w"), text=True,
        env={**os.environ, "RDV_LOG_LEVEL": os.environ.get("RDV_LOG_LEVEL", "info")},
    )  # fmt: skip
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"serve-vfio-user did not start: {line!r}\n{err.read_text()}")
    return Shim(proc, sock, err)


@dataclass
class Forwarder:
    proc: subprocess.Popen
    counters: dict = field(default_factory=dict)

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=5)
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        self.counters = json.loads(lines[-1]) if lines else {}
        return self.counters


def start_forwarder(work: Path, input_address: str, qmp: str, vm: str) -> Forwarder:
    proc = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "--log-level", "info", "forward-input",
         "--input", input_address, "--qmp", qmp, "--vm", vm, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=(work / "forward-input.log").open("w"), text=True,
    )  # fmt: skip
    fwd = Forwarder(proc)
    deadline = time.monotonic() + 15
    with grpc.insecure_channel(input_address) as ch:
        stub = input_pb2_grpc.InputServiceStub(ch)
        while vm not in stub.GetFocus(input_pb2.GetFocusRequest(), timeout=2).subscribed:
            if proc.poll() is not None or time.monotonic() > deadline:
                fwd.stop()
                raise RuntimeError(f"forward-input did not subscribe:\n{(work / 'forward-input.log').read_text()}")
            time.sleep(0.05)
    return fwd


class Vm:
    """The QEMU process: SVGA over vfio-user, PS/2 keyboard (i8042, always on `pc`), QMP, serial console."""

    def __init__(self, qemu: str, guest_dir: Path, initrd: Path, sock: str, work: Path) -> None:
        self.work = work
        self.console_path = work / "console.log"
        self.qmp = str(work / "qmp.sock")
        self.cmd = [
            qemu, "-machine", "pc,memory-backend=mem", "-accel", "tcg", "-m", MEMORY,
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY},share=on",
            "-nodefaults", "-vga", "none", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.console_path}", "-qmp", f"unix:{self.qmp},server=on,wait=off",
            "-kernel", str(guest_dir / "vmlinuz"), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-device", json.dumps({"driver": "vfio-user-pci", "socket": {"type": "unix", "path": sock}}),
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.marks: dict[str, float] = {}  # console marker -> seconds since start

    def start(self) -> Vm:
        self.console_path.unlink(missing_ok=True)
        Path(self.qmp).unlink(missing_ok=True)
        with (self.work / "qemu.stderr").open("w") as err:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        return self

    def console(self) -> str:
        text = self.console_path.read_text(errors="replace") if self.console_path.exists() else ""
        return text.replace("\r", "")

    def wait_for(self, marker: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.console():
                self.marks.setdefault(marker, time.monotonic() - self.started)
                return True
            if self.proc is None or self.proc.poll() is not None:
                return marker in self.console()
            time.sleep(0.05)
        return False

    def wait_qmp(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while not Path(self.qmp).exists():
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def qemu_stderr(self) -> str:
        path = self.work / "qemu.stderr"
        return path.read_text(errors="replace") if path.exists() else ""


# ----------------------------------------------------------------------------------------------- checks
def poll(check: Callable[[], object], timeout: float, period: float = 0.2) -> object:
    """`check()` until it returns something true (then that) or the time is up (then its last answer). A
    screenshot refused because nothing is on screen yet counts as a false answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
            got = None
        if got or time.monotonic() > deadline:
            return got
        time.sleep(period)


def region(width: int, rgb: bytes, x: int, y: int, w: int, h: int) -> bytes:
    row = width * 3
    return b"".join(rgb[(y + i) * row + x * 3 : (y + i) * row + (x + w) * 3] for i in range(h))


def lit_pixels(rgb: bytes) -> int:
    return sum(1 for i in range(0, len(rgb), 3) if rgb[i : i + 3] != b"\0\0\0")


def inject(address: str, vm: str, *keys: str) -> int:
    events = [e for k in keys for e in (ev.key(k, True), ev.key(k, False))]
    with grpc.insecure_channel(address) as ch:
        reply = input_pb2_grpc.InputServiceStub(ch).Inject(input_pb2.InjectRequest(vm=vm, events=events), timeout=5)
    return reply.delivered


# ----------------------------------------------------------------------------------------------- one run
@dataclass
class Run:
    mode: str
    attempts: int
    console: str
    boot_s: float
    marks: dict[str, float]
    summary: dict
    forwarder: dict
    access_log: Path
    text_pixels: int
    pattern_s: float  # RDV-WAIT-PATTERN on the console to the screenshot showing the pattern
    screenshot_size: tuple[int, int]
    qemu_rc: int | None


class BootFailed(Exception):
    pass


def _run_once(qemu: str, guest_dir: Path, work: Path, mode: str, scan_ms: float) -> Run:
    pixels = pattern()
    (work / "pattern.bin").write_bytes(pixels)
    (work / "run.sh").write_text(RUN_SH)
    initrd = build_initrd(guest_dir, work, [work / "run.sh", work / "pattern.bin"])
    access = work / "access.tsv.gz"
    vm_name = f"live-{mode}"
    started: list[ServiceProcess] = []
    shim: Shim | None = None
    fwd: Forwarder | None = None
    vm: Vm | None = None
    try:
        display = start_service("display", work, "--presenter", "headless")
        started.append(display)
        inputs = start_service("input", work)
        started.append(inputs)
        shim = start_svga_shim(work, [display.address], mode, access, "--vram-scan-ms", str(scan_ms))
        vm = Vm(qemu, guest_dir, initrd, shim.socket, work).start()
        if not vm.wait_qmp():
            raise BootFailed("QEMU did not open its QMP socket")
        fwd = start_forwarder(work, inputs.address, vm.qmp, vm_name)
        if not vm.wait_for("RDV-READY", BOOT_TIMEOUT):
            raise BootFailed("no RDV-READY")
        boot_s = vm.marks["RDV-READY"]

        # 1. fbcon's text line is on the service's screen.
        assert vm.wait_for("RDV-WAIT-FBCON", STEP_TIMEOUT), vm.console()

        def text_line() -> int:
            sw, _, srgb = _shot(display.address)
            return lit_pixels(region(sw, srgb, 0, 0, 64 * 8, TEXT_ROWS))

        # 64 '#' glyphs light far more than 640 pixels; a cursor alone lights 16.
        text = poll(lambda: text_line() >= 640, STEP_TIMEOUT)
        text_pixels = text_line()
        assert text, f"fbcon's line of '#' never reached the display service ({text_pixels} lit pixels)"
        assert inject(inputs.address, vm_name, "f1") == 2

        # 2. The pattern written to /dev/fb0 is on the service's screen, pixel for pixel.
        assert vm.wait_for("RDV-WAIT-PATTERN", STEP_TIMEOUT), vm.console()
        seen_at = time.monotonic()
        want = bytes(bgrx_to_rgb(pixels))

        def shows_pattern() -> bool:
            sw, _, srgb = _shot(display.address)
            return region(sw, srgb, X0, Y0, PW, PH) == want

        ok = poll(shows_pattern, STEP_TIMEOUT)
        pattern_s = time.monotonic() - seen_at
        w, h, rgb = _shot(display.address)
        if not ok:
            got = region(w, rgb, X0, Y0, PW, PH)
            bad = sum(1 for i in range(0, len(want), 3) if got[i : i + 3] != want[i : i + 3])
            pytest.fail(f"{mode}: the pattern is not on the service's screen: {bad} of {PW * PH} pixels differ")

        # 3. Keys through the input service, forward-input, QMP, PS/2, evdev.
        assert inject(inputs.address, vm_name, "r", "d", "v") == 6
        assert vm.wait_for("RDV-DONE", STEP_TIMEOUT), vm.console()
        qemu_rc = vm.stop()
        return Run(mode, 1, vm.console(), boot_s, dict(vm.marks), {}, {}, access, text_pixels, pattern_s, (w, h),
                   qemu_rc)  # fmt: skip
    finally:
        if vm is not None and vm.proc is not None and vm.proc.poll() is None:
            vm.proc.kill()
            vm.proc.wait(10)
        fwd_counters = fwd.stop() if fwd else {}
        summary = shim.stop() if shim else {}
        for svc in reversed(started):
            svc.stop()
        (work / "summary.json").write_text(json.dumps({"shim": summary, "forwarder": fwd_counters}))


def _shot(address: str) -> tuple[int, int, bytes]:
    w, h, rgb, _ = screenshot(address)
    return w, h, rgb


def run_guest(qemu: str, guest_dir: Path, tmp: Path, mode: str, scan_ms: float) -> Run:
    """One boot: a guest that never reaches RDV-READY fails the test (never retried until green)."""
    for attempt in (1,):
        work = tmp / f"{mode}-{attempt}"
        work.mkdir()
        try:
            run = _run_once(qemu, guest_dir, work, mode, scan_ms)
        except BootFailed as exc:
            console = (work / "console.log").read_text(errors="replace") if (work / "console.log").exists() else ""
            stderr = (work / "qemu.stderr").read_text(errors="replace") if (work / "qemu.stderr").exists() else ""
            print(f"[live] {mode}: boot attempt {attempt} failed ({exc}); console tail:\n{console[-3000:]}\n{stderr}")
            continue
        saved = json.loads((work / "summary.json").read_text())
        run.summary, run.forwarder, run.attempts = saved["shim"], saved["forwarder"], attempt
        return run
    pytest.fail(f"{mode}: the guest did not boot")


# ----------------------------------------------------------------------------------------------- the test
@pytest.mark.parametrize(("mode", "scan_ms"), [("mirrored", 0.0), ("backend", 500.0)], ids=["mirrored", "backend"])
def test_vmwgfx_fbcon_fb_pattern_and_keys(
    qemu_unaligned: str, guest_dir: Path, tmp_path: Path, mode: str, scan_ms: float
) -> None:
    run = run_guest(qemu_unaligned, guest_dir, tmp_path, mode, scan_ms)
    console, s = run.console, run.summary

    # vmwgfx bound to rdv's device; DRM and fbdev came up; fbcon took fb0.
    assert re.search(r"RDV-BOUND vmwgfx 0000:", console), console
    assert "Initialized vmwgfx" in console and "fbcon: vmwgfxdrmfb (fb0) is primary device" in console, console
    fb = re.search(r"RDV-FB name=(\S+) size=(\d+),(\d+) bpp=(\d+) stride=(\d+)", console)
    assert fb, console
    fb_w, fb_h, bpp, stride = (int(g) for g in fb.groups()[1:])
    assert bpp == 32 and stride == fb_w * 4 and run.screenshot_size == (fb_w, fb_h)
    assert "card0" in console.split("RDV-DRM", 1)[1].splitlines()[0]
    assert "RDV-UNBOUND" in console and "RDV-ERROR" not in console, console
    assert "RDV-DONE rc=0" in console, console

    # The keys: F1 (the test's go-ahead), then r, d, v, each pressed and released, in order.
    keys = [(int(c), int(v)) for c, v in re.findall(r"RDV-KEY code=(\d+) value=(\d+)", console)]
    presses = [k for k in keys if k[1] in (0, 1)]  # without autorepeat (value 2), which TCG's pace may cause
    assert presses == [(KEY_F1, 1), (KEY_F1, 0), (KEY_R, 1), (KEY_R, 0), (KEY_D, 1), (KEY_D, 0),
                       (KEY_V, 1), (KEY_V, 0)], keys  # fmt: skip
    assert run.forwarder.get("qmp_errors", 0) == 0 and run.forwarder.get("injected", 0) >= 8, run.forwarder

    # The shim: nothing refused, no read lost, frames went out and were presented.
    link = s["link"]
    assert not s["errors"] and link["read_timeouts"] == 0 and link["fifo_errors"] == 0, s
    assert link["fifo_commands"] > 0 and link["frames"] > 0 and link["frames_acked"] == link["frames"], link
    assert s["resets"] >= 1 and s["memory"]["message_reads"] == 0  # no DMA at all: no GMRs offered
    if scan_ms:
        assert s["vram_scan"]["scans"] > 0
    else:
        assert s["vram_scan"]["scans"] == 0  # the pattern came through the driver's UPDATE commands alone

    # Under the unaligned build every VALUE-port access arrived whole: 4 bytes at offset 1.
    events = read_access_log(str(run.access_log))
    value_port = [e for e in events if e.kind in "RW" and e.offset == R.VALUE_PORT]
    assert value_port and all(e.size == 4 for e in value_port)
    syncs = _register_writes(events, R.REG_SYNC)

    result = {
        "mode": mode,
        "attempts": run.attempts,
        "boot_s": round(run.boot_s, 2),
        "marks_s": {k: round(v, 2) for k, v in run.marks.items()},
        "fb": f"{fb_w}x{fb_h}x{bpp} stride {stride}",
        "fbcon_text_pixels": run.text_pixels,
        "pattern_rect": f"{PW}x{PH} at ({X0},{Y0})",
        "pattern_on_screen_s": round(run.pattern_s, 3),
        "bar_reads": s["bar_reads"],
        "bar_writes": s["bar_writes"],
        "config_accesses": s["config_reads"] + s["config_writes"],
        "sync_writes": syncs,
        "fifo_passes": link["fifo_passes"],
        "fifo_commands": link["fifo_commands"],
        "frames": link["frames"],
        "pixel_rects": link["pixel_rects"],
        "pixel_bytes": link["pixel_bytes"],
        "payload_bytes": link["payload_bytes"],
        "bytes_to_service": link["bytes_to_service"],
        "messages_to_service": link["messages_to_service"],
        "encodings": link["encodings"],
        "vram_scan": s["vram_scan"],
        "keys": presses,
        "forwarder": run.forwarder,
        "qemu_rc": run.qemu_rc,
    }
    print(f"\n[live] {json.dumps(result)}")
    if os.environ.get("RDV_RECORD_TRACES") == "1":
        DATA.mkdir(exist_ok=True)
        shutil.copyfile(run.access_log, DATA / f"svga_vfio_user_{mode}.tsv.gz")


def _register_writes(events: list, index: int) -> int:
    """How many VALUE-port writes went to register `index` (following the INDEX port)."""
    current, n = -1, 0
    for e in events:
        if e.kind == "W" and e.offset == R.INDEX_PORT and e.size == 4:
            current = e.value
        elif e.kind == "W" and e.offset == R.VALUE_PORT and current == index:
            n += 1
    return n
