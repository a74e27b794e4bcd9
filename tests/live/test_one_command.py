"""Live: one config file and one command attach sound, screen and input to a real guest.

`rdv-shim run --config vm.toml -- qemu-system-x86_64 <the test's own args>` alone starts the ES1370 and the
SVGA II (vfio-user) and the input forwarder (QMP) in one process, starts QEMU 10.2.2 with rdv's arguments
added, and when the guest powers off tears everything down and exits with QEMU's status. The guest (Debian's
6.1 kernel, its own snd-ens1370, vmwgfx and evdev) then, in mirrored mode:

1. plays a WAV with `aplay -D hw:0,0`: the audio service's ALSA `file:` output starts with its PCM, byte for byte;
2. writes a generated pattern into /dev/fb0: the display service's Screenshot shows it pixel for pixel;
3. reads r, d, v from its keyboard's evdev, injected at the input service (Inject RPC) and forwarded through
   rdv's QMP socket.

QEMU is the `--unaligned-io` build, as in test_vfio_user_display.py (its docstring says why, under TCG).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from frontend_shim.guests.pcm import melody, write_wav
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2_grpc
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common.png import bgrx_to_rgb
from services.devices.es1370 import PcmFormat
from tests.display_helpers import screenshot
from tests.helpers import ROOT, ServiceProcess, start_service
from tests.live.guest import build_initrd, played_as_the_card_took, start_audio, wait_sessions_closed
from tests.live.test_vfio_user_display import KEY_D, KEY_R, KEY_V, PH, PW, X0, Y0, inject, pattern, poll, region

pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

FMT = PcmFormat(44100, 2, 16)
BOOT_TIMEOUT = 180.0  # QEMU start to RDV-READY
STEP_TIMEOUT = 90.0
VM = "one-command"

RUN_SH = rf"""#!/bin/sh
# rdv live test, one command: aplay on the ES1370, a pattern on vmwgfx's fb0, keys from evdev.
X0={X0} Y0={Y0} W={PW} H={PH}
for d in /sys/bus/pci/drivers/snd_ens1370/0000:* /sys/bus/pci/drivers/vmwgfx/0000:*; do
    [ -e "$d" ] && echo "RDV-BOUND ${{d%/*}} ${{d##*/}}"
done
aplay -D hw:0,0 /rdv/tone.wav
echo "RDV-APLAY rc=$?"

kbd=
for e in /sys/class/input/event*; do
    grep -q "AT Translated Set 2 keyboard" "$e/device/name" 2>/dev/null && kbd=/dev/input/${{e##*/}}
done
[ -n "$kbd" ] || {{ echo "RDV-ERROR no keyboard event device"; exit 1; }}
cat "$kbd" > /tmp/ev &
catpid=$!
keys() {{ od -An -tu2 -w24 -v /tmp/ev | awk '$9 == 1 {{ print $10, $11 + 65536 * $12 }}'; }}

[ -e /dev/fb0 ] || {{ echo "RDV-ERROR no /dev/fb0"; exit 1; }}
stride=$(cat /sys/class/graphics/fb0/stride)
echo 0 > /sys/class/graphics/fbcon/cursor_blink
for v in /sys/class/vtconsole/vtcon*; do
    grep -q "frame buffer" "$v/name" && echo 0 > "$v/bind"
done
r=0
while [ $r -lt $H ]; do
    dd if=/rdv/pattern.bin of=/dev/fb0 bs=1024 skip=$r count=1 conv=notrunc 2>/dev/null \
        seek=$(( ((Y0 + r) * stride + X0 * 4) / 1024 )) || {{ echo "RDV-ERROR dd row $r"; exit 1; }}
    r=$((r + 1))
done
echo "RDV-WAIT-KEYS"
i=0
while [ $i -lt 450 ]; do
    keys | grep -q "^{KEY_V} 0\$" && break
    sleep 0.2; i=$((i + 1))
done
kill $catpid
keys | while read code value; do echo "RDV-KEY code=$code value=$value"; done
"""


def _console(path: Path) -> str:
    return path.read_text(errors="replace").replace("\r", "") if path.exists() else ""


def _wait_console(path: Path, marker: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker in _console(path):
            return True
        if proc.poll() is not None:
            return marker in _console(path)
        time.sleep(0.1)
    return False


def _qemu_pid(runner: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{runner.pid}/task/{runner.pid}/children")
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        assert runner.poll() is None, "rdv-shim run ended before starting QEMU"
        time.sleep(0.05)
    raise AssertionError("rdv-shim run did not start QEMU")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _subscribed(address: str) -> list[str]:
    with grpc.insecure_channel(address) as ch:
        return list(input_pb2_grpc.InputServiceStub(ch).GetFocus(input_pb2.GetFocusRequest(), timeout=5).subscribed)


def _display_sessions(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        stub = display_pb2_grpc.DisplayServiceStub(ch)
        return len(stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5).sessions)


def _shot(address: str) -> tuple[int, int, bytes]:
    w, h, rgb, _ = screenshot(address)
    return w, h, rgb


class BootFailed(Exception):
    pass


def _attempt(qemu: str, guest_dir: Path, work: Path, pcm: bytes) -> dict:
    write_wav(str(work / "tone.wav"), FMT, pcm)
    pixels = pattern()
    (work / "pattern.bin").write_bytes(pixels)
    (work / "run.sh").write_text(RUN_SH)
    initrd = build_initrd(guest_dir, work, [work / "run.sh", work / "tone.wav", work / "pattern.bin"])
    out = work / "out.raw"
    runtime = work / "run"
    console = work / "console.log"
    services: list[ServiceProcess] = []
    runner: subprocess.Popen | None = None
    try:
        audio = start_audio(work, out)
        services.append(audio)
        display = start_service("display", work, "--presenter", "headless")
        services.append(display)
        inputs = start_service("input", work)
        services.append(inputs)
        cfg = work / "vm.toml"
        cfg.write_text(
            f'name = "{VM}"\nmode = "mirrored"\ninsecure = true\nruntime_dir = "{runtime}"\nlog_level = "info"\n'
            f'[qemu]\nmemory = "512M"\n'
            f'[audio]\nendpoint = "{audio.address}"\n'
            f'[display]\nendpoints = ["{display.address}"]\n'
            f'[input]\nendpoint = "{inputs.address}"\n'
        )
        qemu_args = [
            qemu, "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-monitor", "none",
            "-no-reboot", "-serial", f"file:{console}",
            "-kernel", str(guest_dir / "vmlinuz"), "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1",
        ]  # fmt: skip
        started = time.monotonic()
        runner = subprocess.Popen(
            [sys.executable, "-m", "frontend_shim", "run", "--config", str(cfg), "--json",
             "--dma-log", str(work / "dma.log"), "--", *qemu_args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=(work / "run.log").open("w"), text=True,
        )  # fmt: skip
        qemu_pid = _qemu_pid(runner)
        if not _wait_console(console, "RDV-READY", runner, BOOT_TIMEOUT):
            raise BootFailed("no RDV-READY")
        boot_s = time.monotonic() - started
        assert _wait_console(console, "RDV-APLAY", runner, STEP_TIMEOUT), _console(console)

        # 2. the pattern on the display service's screen
        assert _wait_console(console, "RDV-WAIT-KEYS", runner, STEP_TIMEOUT), _console(console)
        want = bytes(bgrx_to_rgb(pixels))
        seen = time.monotonic()

        def shows_pattern() -> bool:
            sw, _, srgb = _shot(display.address)
            return region(sw, srgb, X0, Y0, PW, PH) == want

        shown = poll(shows_pattern, STEP_TIMEOUT)
        pattern_s = time.monotonic() - seen
        w, h, rgb = _shot(display.address)
        got = region(w, rgb, X0, Y0, PW, PH)
        bad = sum(1 for i in range(0, len(want), 3) if got[i : i + 3] != want[i : i + 3])

        # 3. keys through the input service, rdv's forwarder and QMP
        assert VM in _subscribed(inputs.address)
        delivered = inject(inputs.address, VM, "r", "d", "v")
        assert _wait_console(console, "RDV-DONE", runner, STEP_TIMEOUT), _console(console)

        # the guest powers off: QEMU exits, and so does rdv-shim run, with QEMU's status
        stdout, _ = runner.communicate(timeout=60)
        rc = runner.returncode
        summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
        wait_sessions_closed(audio.address)
        return {
            "rc": rc,
            "console": _console(console),
            "played": out.read_bytes() if out.exists() else b"",
            "shown": bool(shown),
            "bad_pixels": bad,
            "pattern_s": pattern_s,
            "boot_s": boot_s,
            "delivered": delivered,
            "qemu_alive": _alive(qemu_pid),
            "leftovers": sorted(p.name for p in runtime.iterdir()) if runtime.exists() else [],
            "display_sessions": _display_sessions(display.address),
            "subscribed": _subscribed(inputs.address),
            "summary": summary,
            "dma_log": work / "dma.log",
            "log": (work / "run.log").read_text(errors="replace"),
        }
    finally:
        if runner is not None and runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            try:
                runner.wait(30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait(10)
        for svc in reversed(services):
            svc.stop()


def test_one_command_attaches_audio_display_and_input(qemu_unaligned: str, guest_dir: Path, tmp_path: Path) -> None:
    pcm = melody(FMT, 1.0)
    for attempt in (1,):  # one boot: a guest that does not boot fails the test, never retried
        work = tmp_path / f"attempt{attempt}"
        work.mkdir()
        try:
            r = _attempt(qemu_unaligned, guest_dir, work, pcm)
            break
        except BootFailed as exc:
            print(
                f"[live] one command: boot attempt {attempt} failed ({exc}):\n{_console(work / 'console.log')[-3000:]}"
            )
    else:
        pytest.fail("the guest did not boot")
    console = r["console"]
    assert re.search(r"RDV-BOUND \S+/snd_ens1370 0000:", console) and re.search(r"RDV-BOUND \S+/vmwgfx", console), (
        console
    )
    assert "RDV-APLAY rc=0" in console and "RDV-ERROR" not in console and "RDV-DONE rc=0" in console, console

    # 1. sound: the WAV's PCM, byte for byte, at the start of what the audio service's ALSA file: sink wrote
    es1370 = r["summary"]["es1370"]
    if played_as_the_card_took(r["played"], r["dma_log"], console, es1370["link"], backend=False, name="one-command"):
        assert r["played"][: len(pcm)] == pcm, "the PCM the guest played differs from the WAV"
    # 2. screen: the pattern, pixel for pixel
    assert r["shown"], f"the pattern is not on the service's screen: {r['bad_pixels']} of {PW * PH} pixels differ"
    # 3. input: r, d, v pressed and released, in order, at the guest's evdev
    keys = [(int(c), int(v)) for c, v in re.findall(r"RDV-KEY code=(\d+) value=(\d+)", console)]
    presses = [k for k in keys if k[1] in (0, 1)]
    assert r["delivered"] == 6
    assert presses == [(KEY_R, 1), (KEY_R, 0), (KEY_D, 1), (KEY_D, 0), (KEY_V, 1), (KEY_V, 0)], keys

    # teardown: QEMU's status (a clean poweroff), no QEMU left, no socket left, every session closed
    assert r["rc"] == 0, r["log"][-3000:]
    assert not r["qemu_alive"] and r["leftovers"] == [], r["leftovers"]
    assert r["display_sessions"] == 0 and VM not in r["subscribed"]
    s = r["summary"]
    assert set(s) == {"es1370", "svga", "input"}, s
    assert s["es1370"]["memory"]["fd_maps"] > 0 and not s["es1370"]["errors"] and not s["svga"]["errors"]
    assert s["svga"]["link"]["frames"] > 0 and s["input"]["injected"] >= 6 and s["input"].get("qmp_errors", 0) == 0
    print(
        "\n[live] "
        + json.dumps(
            {
                "boot_s": round(r["boot_s"], 2),
                "pcm_bytes_compared": len(pcm),
                "output_bytes": len(r["played"]),
                "pattern_on_screen_s": round(r["pattern_s"], 3),
                "keys": presses,
                "qemu_rc": r["rc"],
                "es1370_bar_accesses": s["es1370"]["bar_reads"] + s["es1370"]["bar_writes"],
                "svga_frames": s["svga"]["link"]["frames"],
                "input": s["input"],
            }
        )
    )
