"""An idle sound card costs no wake-ups: a guest that has not started a DMA channel leaves the shim's DMA engine
(mirrored mode's pacer) and the service's session asleep. Besides the CPU an idle VM should not burn, every
periodic wake-up on a 2-core node can move the vfio-user thread off the guest's CPU, which tripled the trapped
read's round trip in the rounds it happened (README, hot path)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from frontend_shim.guests.scripted_audio import BUFFER_ADDR, new_guest
from frontend_shim.links.audio import AudioLink
from services.devices import es1370_regs as R
from tests.audio_helpers import start_dac2

WINDOW = 0.5  # seconds of watching


def _switches(pid: int, tid: int) -> int:
    """The voluntary context switches of one thread so far: each is one wait it went into."""
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def _wakes(pid: int, tid: int) -> int:
    before = _switches(pid, tid)
    time.sleep(WINDOW)
    return _switches(pid, tid) - before


def test_an_idle_card_wakes_neither_the_shim_nor_the_service(services, tmp_path: Path) -> None:
    svc = services("audio", "--sink", "null")
    memory, irq = new_guest()
    link = AudioLink(svc.address, "mirrored", memory, irq, access_timeout=1.0)
    link.start()
    try:
        pacer = next(t for t in threading.enumerate() if t.name == "audio-link-pacer")
        assert pacer.native_id is not None
        time.sleep(0.2)  # the session's opening settles
        pid = svc.proc.pid
        idle_pacer, idle_service = _wakes(os.getpid(), pacer.native_id), _wakes(pid, pid)
        # The pacer used to tick every 5 ms (~100 wakes in the window), the session's pump every 10 ms (~50).
        assert idle_pacer <= 2, f"the idle pacer woke {idle_pacer} times in {WINDOW} s"
        assert idle_service <= 10, f"the service's loop woke {idle_service} times in {WINDOW} s with a mirrored session"

        # The guest starts DAC2: the write kicks the pacer, which then paces the ring as before.
        start_dac2(lambda _bar, off, v: link.io_write(0, off, 4, v), BUFFER_ADDR, 4096, 256, 44100)
        assert link.model is not None and link.model.channel_running(R.DAC2)
        running = _wakes(os.getpid(), pacer.native_id)
        assert running >= 20, f"the pacer of a playing card woke only {running} times in {WINDOW} s"
        assert link.stats.pcm_bytes > 0
    finally:
        link.close(drain=False)
