"""An idle card costs no wake-ups: a guest that has not started a DMA channel leaves the shim's DMA engine
(mirrored mode's pacer) and the audio service's session asleep; an SVGA II whose FIFO is off, with no video
playing, leaves the shim's refresh and video timers asleep, and a headless display service's stage too.
Besides the CPU an idle VM should not burn, every periodic wake-up on a 2-core node can move the vfio-user
thread off the guest's CPU, which tripled the trapped read's round trip in the rounds it happened (README, hot
path)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from frontend_shim.guests.scripted_audio import BUFFER_ADDR, new_guest
from frontend_shim.guests.scripted_svga import ScriptedSvgaDriver, new_memory
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.display import DisplayLink
from frontend_shim.links.video_streams import VideoSettings
from services.devices import es1370_regs as R
from tests.audio_helpers import start_dac2
from tests.bench.vfio import serve_vfio_user

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


def _process_wakes(pid: int) -> int:
    """All threads of a process (gRPC's own timers included: a few per second)."""
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    before = {t: _switches(pid, t) for t in tids}
    time.sleep(WINDOW)
    return sum(_switches(pid, t) - n for t, n in before.items())


def _thread(name: str) -> int:
    tid = next(t for t in threading.enumerate() if t.name == name).native_id
    assert tid is not None
    return tid


def test_an_idle_card_wakes_neither_the_shim_nor_the_service(services, tmp_path: Path) -> None:
    svc = services("audio", "--sink", "null")
    memory, irq = new_guest()
    link = AudioLink(svc.address, "mirrored", memory, irq, access_timeout=1.0)
    link.start()
    try:
        pacer = _thread("audio-link-pacer")
        time.sleep(0.2)  # the session's opening settles
        pid = svc.proc.pid
        idle_pacer, idle_service = _wakes(os.getpid(), pacer), _wakes(pid, pid)
        # The pacer used to tick every 5 ms (~100 wakes in the window), the session's pump every 10 ms (~50).
        assert idle_pacer <= 2, f"the idle pacer woke {idle_pacer} times in {WINDOW} s"
        assert idle_service <= 10, f"the service's loop woke {idle_service} times in {WINDOW} s with a mirrored session"

        # The guest starts DAC2: the write kicks the pacer, which then paces the ring as before.
        start_dac2(lambda _bar, off, v: link.io_write(0, off, 4, v), BUFFER_ADDR, 4096, 256, 44100)
        assert link.model is not None and link.model.channel_running(R.DAC2)
        running = _wakes(os.getpid(), pacer)
        assert running >= 20, f"the pacer of a playing card woke only {running} times in {WINDOW} s"
        assert link.stats.pcm_bytes > 0
    finally:
        link.close(drain=False)


def test_an_idle_display_wakes_neither_the_shim_nor_the_service(services) -> None:
    svc = services("display", "--presenter", "headless")
    vram, fifo = new_memory()
    link = DisplayLink([svc.address], "mirrored", vram, fifo, encoding="lz4", video=VideoSettings(mode="jpeg"))
    link.start()
    try:
        driver = ScriptedSvgaDriver(link, vram, fifo)
        driver.probe()
        driver.set_mode(640, 480)  # enabled, but no FIFO yet (CONFIG_DONE is 0)
        refresh, video = _thread("display-refresh"), _thread("display-video")
        time.sleep(0.2)
        me = os.getpid()
        idle = {"refresh": _wakes(me, refresh), "video": _wakes(me, video), "service": _process_wakes(svc.proc.pid)}
        # Before: the refresh ticked every 16 ms (~30 in the window), the video timer every 50 ms (~10), the
        # headless stage polled for window events every 10 ms (~50).
        assert idle["refresh"] <= 2 and idle["video"] <= 2 and idle["service"] <= 15, idle

        driver.init_fifo()  # CONFIG_DONE: the FIFO runs, and the refresh passes over it again
        assert link.model.fifo_enabled
        ticking = _wakes(me, refresh)
        assert ticking >= 10, f"the refresh of a running FIFO woke only {ticking} times in {WINDOW} s"
    finally:
        link.close(drain=False)


def test_an_idle_shim_process_main_thread_sleeps(tmp_path: Path) -> None:
    """`serve-vfio-user` as QEMU starts it: its main thread waits for a signal or the server's end, without
    looking every 0.5 s (a shim per device of every VM on the host)."""
    with serve_vfio_user("es1370", "mirrored", tmp_path) as shim:
        time.sleep(0.3)  # started
        before = _switches(shim.proc.pid, shim.proc.pid)
        time.sleep(2 * WINDOW)
        woke = _switches(shim.proc.pid, shim.proc.pid) - before
    assert woke == 0, f"the shim's main thread woke {woke} times in {2 * WINDOW} s"
    assert "bar_reads" in str(shim.summary), "the shim did not stop cleanly on SIGTERM"
