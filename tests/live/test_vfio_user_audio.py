"""Live: an unmodified QEMU 10.2 attaches rdv's ES1370 over vfio-user and a real Linux guest plays through it.

The guest's own snd-ens1370 driver binds to the card, `aplay -D hw:0,0` plays a generated WAV, and the PCM
comes out of the real audio service's ALSA `file:` sink byte for byte, in both coherence modes.

What follows the WAV's PCM in the output, and why it is not an error:
- silence up to the end of the last period: aplay pads its last chunk (one period) with silence;
- then possibly a few hundred bytes that replay the ring buffer one buffer-length earlier. Between the last
  period interrupt and the driver's stop trigger (the ISR acks, reads the position twice, then ALSA stops the
  stream) the chip keeps fetching the next period from its loop buffer, as the real ES1370 and QEMU's model
  do. Those bytes are exactly what the guest left in its buffer, which the test checks.

Set RDV_RECORD_TRACES=1 to copy each mode's register access log into tests/data/ (see tests/data/README.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from frontend_shim.guests.pcm import melody, write_wav
from frontend_shim.vfio_user.trace import Event, read_access_log
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat
from tests.helpers import ROOT
from tests.live.guest import (
    RUN_SH,
    Boot,
    boot,
    build_initrd,
    played_as_the_card_took,
    start_audio,
    start_shim,
    wait_sessions_closed,
)

pytestmark = [pytest.mark.live, pytest.mark.timeout(3600)]

FMT = PcmFormat(44100, 2, 16)
DATA = ROOT / "tests" / "data"


@dataclass
class Run:
    boot: Boot
    summary: dict
    played: bytes
    access_log: Path
    shim_log: str
    attempts: int
    dma_log: Path  # every DMA read of guest memory the shim made for the card


def _play(qemu: str, guest_dir: Path, tmp: Path, mode: str, pcm: bytes, boots: int = 1, shared_ram: bool = True) -> Run:
    """Boot (and, with boots=2, reboot with a second QEMU on the same server) and collect everything. One boot: a
    guest that never reaches RDV-DONE fails the test (never retried until green)."""
    for attempt in (1,):
        work = tmp / f"{mode}-{'shared' if shared_ram else 'messages'}-attempt{attempt}"
        work.mkdir()
        write_wav(str(work / "tone.wav"), FMT, pcm)
        (work / "run.sh").write_text(RUN_SH)
        initrd = build_initrd(guest_dir, work, [work / "run.sh", work / "tone.wav"])
        out, access = work / "out.raw", work / "access.tsv.gz"
        audio = start_audio(work, out)
        shim = None
        results: list[Boot] = []
        try:
            shim = start_shim(work, audio.address, mode, access)
            for n in range(boots):
                results.append(boot(qemu, guest_dir, initrd, shim.socket, work / f"boot{n}" if n else work, shared_ram))
                if not results[-1].booted:
                    break
        finally:
            summary = shim.stop() if shim else {}
            try:
                wait_sessions_closed(audio.address)
            finally:
                audio.stop()
        if all(b.booted for b in results) and len(results) == boots:
            b = results[-1]
            if boots > 1:
                b.console = "\n".join(r.console for r in results)
            played = out.read_bytes() if out.exists() else b""
            return Run(b, summary, played, access, shim.log() if shim else "", attempt, work / "dma.log")
        failed = results[-1]
        print(f"[live] {mode}: boot attempt {attempt} failed (qemu rc {failed.rc}); console tail:")
        print(failed.console[-3000:], failed.qemu_stderr[-2000:], sep="\n")
    pytest.fail(f"{mode}: the guest did not finish its script")


def _ring(events: list[Event]) -> tuple[int, int]:
    """(DAC2 buffer bytes, period bytes) as the driver programmed them, from the register writes."""
    mempage, buffer_bytes, period_bytes = 0, 0, 0
    for e in events:
        if e.kind != "W" or e.value is None:
            continue
        if e.offset == R.MEMPAGE and e.size == 4:
            mempage = e.value & 0xF
        elif e.offset == R.DAC2_FRAMECNT & 0xFF and mempage == R.FRAME_PAGE_DAC and e.value & 0xFFFF:
            buffer_bytes = ((e.value & 0xFFFF) + 1) * 4
        elif e.offset == R.DAC2_SCOUNT and e.value & 0xFFFF:
            period_bytes = ((e.value & 0xFFFF) + 1) * FMT.frame_bytes
    return buffer_bytes, period_bytes


def _playback_window(events: list[Event]) -> tuple[int, int]:
    """Time (µs) from the DAC2 start to its stop, from CONTROL writes."""
    controls = [(e.t_us, bool((e.value or 0) & R.CTRL_DAC2_EN)) for e in events if e.kind == "W" and e.offset == 0]
    starts = [t for t, on in controls if on]
    stops = [t for t, on in controls if not on and starts and t > starts[0]]
    return (starts[0], stops[-1]) if starts and stops else (0, 0)


@pytest.mark.parametrize(
    ("mode", "shared_ram"),
    [("mirrored", True), ("backend", True), ("mirrored", False), ("backend", False)],
    ids=["mirrored", "backend", "mirrored-dma-messages", "backend-dma-messages"],
)
def test_guest_aplay_through_vfio_user(qemu: str, guest_dir: Path, tmp_path: Path, mode: str, shared_ram: bool) -> None:
    """Shared guest RAM (a memfd the server maps) is how rdv should run; without it every DMA is a DMA_READ
    message in QEMU 10.2.2's own layout, which this proves against the real QEMU."""
    pcm = melody(FMT, 1.5)
    run = _play(qemu, guest_dir, tmp_path, mode, pcm, shared_ram=shared_ram)
    b, s = run.boot, run.summary
    console = b.console
    # The guest's own driver bound to the card rdv serves (snd-ens1370 prints nothing at probe: the card list
    # and sysfs say it), and aplay finished without error.
    assert "snd_ens1370 bound to 0000:" in console, console
    assert "Ensoniq AudioPCI ENS1370 at 0x" in console and ", irq " in console, console
    assert "RDV-APLAY rc=0" in console and b.done_rc == 0, console

    events = read_access_log(str(run.access_log))
    buffer_bytes, period_bytes = _ring(events)
    assert buffer_bytes and period_bytes, "the driver never programmed DAC2"
    periods = math.ceil(len(pcm) / period_bytes)
    padded = pcm + bytes(periods * period_bytes - len(pcm))

    played = run.played
    # A loaded host may starve the guest: then aplay reports an xrun ("underrun!!!") and restarts, and the card
    # played what its ring held. Either way the sink played exactly what the card took from guest memory.
    extra = played[len(padded) :]
    if played_as_the_card_took(played, run.dma_log, console, s["link"], backend=mode == "backend", name=mode):
        assert played[: len(pcm)] == pcm, "the PCM the guest played differs from the WAV"
        assert len(played) >= len(padded) and played[len(pcm) : len(padded)] == bytes(len(padded) - len(pcm))
        stale = bytes(padded[i - buffer_bytes] for i in range(len(padded), len(padded) + len(extra)))
        assert len(extra) < period_bytes and extra in (stale, bytes(len(extra))), "bytes after the padded end"
        # One guest interrupt per period (counted by the guest's /proc/interrupts), none lost, none extra.
        assert b.irq_delta() == periods, console
    assert s["irq"]["raised"] >= periods and s["irq"]["signals"] >= periods
    assert not s["errors"], s["errors"]  # no request of QEMU's was refused
    assert s["link"]["read_timeouts"] == 0
    if shared_ram:
        assert s["memory"]["fd_maps"] > 0 and s["memory"]["message_reads"] == 0  # RAM came as a shared memfd
        assert s["link"]["dma_errors"] == 0
    else:
        assert s["memory"]["fd_maps"] == 0 and s["memory"]["message_reads"] > 0
        # No DMA failed: some waited while QEMU waited for a reply of ours (then were retried), and each such
        # wait is one the server saw abandoned or refused.
        assert s["link"]["dma_errors"] == 0 and s["link"]["dma_deferred"] <= s["dma_aborted"]

    start, stop = _playback_window(events)
    during = [e for e in events if e.kind in "RW" and start <= e.t_us <= stop]
    result = {
        "mode": mode,
        "shared_ram": shared_ram,
        "attempts": run.attempts,
        "boot_s": round(b.boot_seconds or 0, 2),
        "script_s": round(b.run_seconds or 0, 2),
        "bar_reads": s["bar_reads"],
        "bar_writes": s["bar_writes"],
        "config_reads": s["config_reads"],
        "config_writes": s["config_writes"],
        "accesses_before_playback": sum(1 for e in events if e.kind in "RW" and e.t_us < start),
        "accesses_during_playback": len(during),
        "playback_s": round((stop - start) / 1e6, 3),
        "periods": periods,
        "period_bytes": period_bytes,
        "buffer_bytes": buffer_bytes,
        "guest_interrupts": b.irq_delta(),
        "irq_signals": s["irq"]["signals"],
        "irq_unmasks": s["irq"]["unmasks"],
        "irq_lost": s["irq"]["lost"],
        "pcm_bytes_compared": len(pcm),
        "output_bytes": len(played),
        "stale_tail_bytes": len(extra),
        "dma_maps": s["memory"]["maps"],
        "fd_maps": s["memory"]["fd_maps"],
        "dma_read_messages": s["memory"]["message_reads"],
        "dma_aborted": s["dma_aborted"],
        "link": {k: s["link"][k] for k in ("reads", "writes", "interrupts", "pcm_bytes", "dma_requests")},
    }
    print(f"\n[live] {json.dumps(result)}")
    if _record() and shared_ram:
        DATA.mkdir(exist_ok=True)
        shutil.copyfile(run.access_log, DATA / f"es1370_vfio_user_{mode}.tsv.gz")


def test_a_second_qemu_finds_the_card_where_the_first_left_it(qemu: str, guest_dir: Path, tmp_path: Path) -> None:
    """One server, two QEMUs in a row (backend mode): the second boots, resets and plays like the first."""
    pcm = melody(FMT, 0.5)
    run = _play(qemu, guest_dir, tmp_path, "backend", pcm, boots=2)
    s = run.summary
    assert run.boot.console.count("RDV-APLAY rc=0") == 2, run.boot.console
    assert s["connections"] == 2 and s["resets"] >= 2 and not s["errors"]
    clean = played_as_the_card_took(run.played, run.dma_log, run.boot.console, s["link"], backend=True, name="reboot",
                                    stops=2)  # fmt: skip
    if clean:
        first = run.played.find(pcm)
        assert first == 0 and run.played.find(pcm, len(pcm)) > 0, "both boots' PCM in the output"
    assert s["memory"]["maps"] == s["memory"]["unmaps"]  # every DMA map dropped at each disconnect
    print(f"\n[live] reconnect: {json.dumps({'connections': s['connections'], 'resets': s['resets']})}")


def _record() -> bool:
    return os.environ.get("RDV_RECORD_TRACES") == "1"
