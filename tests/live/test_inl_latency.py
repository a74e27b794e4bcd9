"""Live: what a guest feels of rdv, timed inside a real Linux guest — 1,000 `inl` of the ES1370 STATUS port.

One VM (QEMU 10.2.2, TCG, the same guest image as the other live tests) holds three ES1370s: QEMU's built-in
model and two of rdv's over vfio-user (one shim in mirrored mode, one in backend mode, one audio service). No
driver is bound (rdv.modules=); a static tool (tests/live/tools/inl_loop.c, built here with gcc -static) turns
on each card's I/O decoding and times every `inl` with CLOCK_MONOTONIC. The paper reports the same guest-visible
ratio: its remote card 2 (mirrored) read took 17× the local card's. Figures go to build/bench/live-inl.json.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from services.devices import es1370_regs as R
from tests.helpers import ROOT, start_service
from tests.live.guest import boot, build_initrd, start_shim

pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

N = 1000
SLOTS = {"builtin": 0x10, "mirrored": 0x11, "backend": 0x12}  # PCI device numbers on bus 0
TOOL = ROOT / "tests" / "live" / "tools" / "inl_loop.c"


def test_guest_inl_of_the_status_port_rdv_vs_qemus_es1370(qemu: str, guest_dir: Path, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the guest's timing tool (make setup installs it)")
    exe = tmp_path / "inl_loop"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(exe), str(TOOL)], check=True, capture_output=True)
    run_sh = tmp_path / "run.sh"
    run_sh.write_text(f"#!/bin/sh\n/rdv/inl_loop {R.PCI_VENDOR_ID:#x} {R.PCI_DEVICE_ID:#x} {R.STATUS:#x} {N}\n")
    run_sh.chmod(0o755)
    initrd = build_initrd(guest_dir, tmp_path, [run_sh, exe])
    audio = start_service("audio", tmp_path / "logs", "--sink", "null")
    shims = {}
    try:
        for mode in ("mirrored", "backend"):
            work = tmp_path / mode
            work.mkdir()
            shims[mode] = start_shim(work, audio.address, mode, work / "access.log")
        devices = [{"driver": "ES1370", "audiodev": "a0", "addr": f"{SLOTS['builtin']:#x}"}] + [
            {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": shims[m].socket}, "addr": f"{SLOTS[m]:#x}"}
            for m in ("mirrored", "backend")
        ]
        result = boot(qemu, guest_dir, initrd, "", tmp_path / "vm", devices=devices, append="rdv.modules=")
    finally:
        summaries = {mode: shim.stop() for mode, shim in shims.items()}
        audio.stop()
    assert result.booted, f"guest did not finish:\n{result.console[-3000:]}\n{result.qemu_stderr[-2000:]}"
    lines = re.findall(r"RDV-INL slot=\S+:00:([0-9a-f]{2})\.0 (.*)", result.console)
    cards = {}
    for slot, fields in lines:
        name = next(k for k, v in SLOTS.items() if v == int(slot, 16))
        cards[name] = {k: int(v, 0) for k, v in (f.split("=") for f in fields.split())}
    assert set(cards) == set(SLOTS), f"not every card was timed:\n{result.console[-3000:]}"
    for name, card in cards.items():
        assert card["n"] == N and card["same"] == 1, f"{name}: STATUS changed between reads: {card}"
        assert card["value"] != 0xFFFFFFFF, f"{name}: reads as a vanished device"
    # Both models start from the same power-on STATUS, so the guest reads the same value from all three.
    assert cards["mirrored"]["value"] == cards["backend"]["value"] == cards["builtin"]["value"]
    for mode in ("mirrored", "backend"):
        assert summaries[mode]["bar_reads"] >= N, f"{mode}: the reads did not reach rdv's shim"
    figures = {
        "n": N,
        **{name: {k: card[k] for k in ("p50_ns", "p99_ns", "mean_ns", "min_ns")} for name, card in cards.items()},
        "ratio_p50": {m: round(cards[m]["p50_ns"] / cards["builtin"]["p50_ns"], 1) for m in ("mirrored", "backend")},
    }
    out = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "live-inl.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
