"""Running a real Linux guest under QEMU 10.2 with rdv's ES1370 attached over vfio-user (live tests only).

The QEMU binary, the guest kernel/initramfs and the overlay come from the tests/tools scripts (cached under
~/.cache/rdv); this module starts the real audio service and `serve-vfio-user`, boots the guest under TCG and
collects what the console, the shim and the audio service report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from frontend_shim.guests.guest import load_reads
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from tests.audio_helpers import dropped_reads
from tests.helpers import ROOT, ServiceProcess, start_service

TOOLS = ROOT / "tests" / "tools"
MEMORY = "512M"
BOOT_TIMEOUT = 120.0  # QEMU start to RDV-READY (about 5 s here when the host is idle)
RUN_TIMEOUT = 120.0  # RDV-READY to RDV-DONE

RUN_SH = r"""#!/bin/sh
# rdv live test: show the card, play the WAV on the hardware device, count the card's interrupts.
echo "RDV-CARDS"; cat /proc/asound/cards
for d in /sys/bus/pci/drivers/snd_ens1370/0000:*; do [ -e "$d" ] && echo "snd_ens1370 bound to ${d##*/}"; done
dmesg | grep -i -e ens1370 -e audiopci
irqs() { grep -i ens1370 /proc/interrupts | awk '{print $2}'; }
echo "RDV-IRQ-BEFORE $(irqs)"
aplay -D hw:0,0 /rdv/tone.wav
rc=$?
echo "RDV-IRQ-AFTER $(irqs)"
echo "RDV-APLAY rc=$rc"
exit $rc
"""


class ToolError(RuntimeError):
    pass


def tool(script: str, *args: str, timeout: float) -> str:
    """Run a tests/tools script; its result is the last line of stdout."""
    res = subprocess.run(
        ["bash", str(TOOLS / script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    if res.returncode != 0:
        raise ToolError(f"{script} failed (rc {res.returncode}):\n{res.stderr[-4000:]}")
    lines = res.stdout.strip().splitlines()
    if not lines:
        raise ToolError(f"{script} printed nothing on stdout:\n{res.stderr[-2000:]}")
    return lines[-1].strip()


def build_initrd(guest_dir: Path, work: Path, files: list[Path]) -> Path:
    overlay = Path(tool("make_overlay.sh", str(work / "overlay.cpio.gz"), *map(str, files), timeout=120))
    initrd = work / "initrd.cpio.gz"
    initrd.write_bytes((guest_dir / "initramfs.cpio.gz").read_bytes() + overlay.read_bytes())
    return initrd


@dataclass
class Shim:
    proc: subprocess.Popen
    socket: str
    stderr_path: Path
    summary: dict = field(default_factory=dict)

    def stop(self, timeout: float = 20.0) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=5)
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                self.summary = json.loads(line)
                break
        return self.summary

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


def start_shim(work: Path, audio: str, mode: str, access_log: Path) -> Shim:
    sock = str(work / "es1370.sock")
    err = work / "shim.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "frontend_shim",
            "serve-vfio-user",
            "--socket",
            sock,
            "--device",
            "es1370",
            "--audio",
            audio,
            "--mode",
            mode,
            "--access-log",
            str(access_log),
            "--json",
            "--dma-log",
            str(work / "dma.log"),
        ],  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=err.open("w"),
        text=True,
        env={**os.environ, "RDV_LOG_LEVEL": "info"},
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"serve-vfio-user did not start: {line!r}\n{err.read_text()}")
    return Shim(proc, sock, err)


@dataclass
class Boot:
    rc: int | None  # QEMU's exit status (None: killed at a timeout)
    console: str
    qemu_stderr: str
    boot_seconds: float | None  # QEMU start to RDV-READY
    run_seconds: float | None  # RDV-READY to RDV-DONE
    done_rc: int | None  # the guest script's status from "RDV-DONE rc=N"

    @property
    def booted(self) -> bool:
        return self.boot_seconds is not None and self.done_rc is not None

    def irq_delta(self) -> int | None:
        before = re.search(r"RDV-IRQ-BEFORE (\d+)", self.console)
        after = re.search(r"RDV-IRQ-AFTER (\d+)", self.console)
        return int(after.group(1)) - int(before.group(1)) if before and after else None


def boot(
    qemu: str,
    guest_dir: Path,
    initrd: Path,
    sock: str,
    work: Path,
    shared_ram: bool = True,
    devices: list[dict] | None = None,
    append: str = "",
) -> Boot:
    """Boot the guest under TCG with the vfio-user ES1370 and wait for its script to finish. With shared_ram
    guest RAM is a shared memfd the server maps; without, the server reaches it with DMA_READ/DMA_WRITE.
    `devices` (QEMU -device JSON objects) replaces the one vfio-user device at `sock`; `append` goes on the
    kernel command line."""
    work.mkdir(parents=True, exist_ok=True)
    console = work / "console.log"
    console.unlink(missing_ok=True)
    memory = ["-machine", "pc,memory-backend=mem", "-object", f"memory-backend-memfd,id=mem,size={MEMORY},share=on"]
    cmd = [
        qemu, *(memory if shared_ram else ["-machine", "pc"]), "-accel", "tcg", "-m", MEMORY,
        "-display", "none", "-monitor", "none", "-serial", f"file:{console}", "-nic", "none", "-no-reboot",
        "-kernel", str(guest_dir / "vmlinuz"), "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet panic=-1 {append}".strip(),
    ]  # fmt: skip
    for device in devices or [{"driver": "vfio-user-pci", "socket": {"type": "unix", "path": sock}}]:
        cmd += ["-device", json.dumps(device)]
        if device["driver"] == "ES1370" and "audiodev" in device:
            cmd += ["-audiodev", f"none,id={device['audiodev']}"]
    started = time.monotonic()
    qerr = work / "qemu.stderr"
    with qerr.open("w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
    ready_at = done_at = None
    deadline = started + BOOT_TIMEOUT
    text = ""
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        text = console.read_text(errors="replace") if console.exists() else ""
        if ready_at is None and "RDV-READY" in text:
            ready_at = time.monotonic()
            deadline = ready_at + RUN_TIMEOUT
        if done_at is None and "RDV-DONE" in text:
            done_at = time.monotonic()
            deadline = done_at + 20.0  # it powers off right after
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait(10)
    text = (console.read_text(errors="replace") if console.exists() else "").replace("\r", "")
    done = re.search(r"RDV-DONE rc=(\d+)", text)
    return Boot(
        rc=rc,
        console=text,
        qemu_stderr=qerr.read_text(errors="replace"),
        boot_seconds=None if ready_at is None else ready_at - started,
        run_seconds=None if ready_at is None or done_at is None else done_at - ready_at,
        done_rc=int(done.group(1)) if done else None,
    )


def wait_sessions_closed(address: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        while stub.ListSessions(common_pb2.ListSessionsRequest()).sessions:
            if time.monotonic() > deadline:
                raise TimeoutError("the audio session did not close")
            time.sleep(0.05)


def start_audio(work: Path, out: Path) -> ServiceProcess:
    return start_service("audio", work, "--alsa-device", f"file:FILE={out},FORMAT=raw")


def played_as_the_card_took(
    played: bytes, dma_log: Path, console: str, link: dict, *, backend: bool, name: str, stops: int = 1
) -> bool:
    """Hold what the audio service played against every DMA read the card made (the shim's `--dma-log`): the
    sink must have played exactly those bytes, in order (backend mode may leave out the transfer under way at
    each stop or restart). That holds under any load. Returns True when neither the guest (ALSA's "underrun!!!")
    nor the card (late DMA) saw an xrun: only then must the caller also find the WAV's PCM byte for byte."""
    xruns = console.count("underrun!!!")
    dropped = dropped_reads(played, load_reads(str(dma_log)), xruns + stops if backend else 0)
    assert dropped is not None, f"{name}: the sink did not play what the card took from guest memory"
    figures = {"xruns": xruns, "late_dma": link["late_dma"], "underruns": link["underruns"], "dropped_reads": dropped}
    print(f"\nFIGURES audio-xruns live-{name}: {json.dumps(figures)}")
    return not (xruns or link["late_dma"])
