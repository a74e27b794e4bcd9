"""Sessions survive the service: format changes mid-session, and a mirrored shim resyncing a restarted service."""

from __future__ import annotations

import socket
import threading
import time
import wave
from pathlib import Path

import grpc

from frontend_shim.guests.pcm import melody
from frontend_shim.guests.scripted_audio import ScriptedEs1370Driver, new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat
from tests.audio_helpers import assert_played_as_the_card_took, wait_sessions_closed

SCALE = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_format_changes_mid_session(services, tmp_path: Path) -> None:
    """Two songs in two formats one after the other in one session: the sink reopens in the second format, and
    each file holds what the card took from the ring in that format (the song exactly, unless the guest starved)."""
    svc = services("audio", "--sink", "wav", "--wav-path", str(tmp_path / "out.wav"), "--clock-scale", str(SCALE))
    memory, irq = new_guest(record=True)
    link = AudioLink(svc.address, "mirrored", memory, irq, clock=Clock(SCALE))
    link.start()
    driver = ScriptedEs1370Driver(link, memory, irq, clock=link.clock)
    driver.probe()
    first, second = PcmFormat(44100, 2, 16), PcmFormat(22050, 1, 8)
    pcm1, pcm2 = melody(first, 0.3), melody(second, 0.3)
    summaries, reads = [], []
    for pcm, fmt in ((pcm1, first), (pcm2, second)):
        late_before, reads_before = link.stats.as_dict()["late_dma"], len(memory.reads)
        result = driver.play(pcm, fmt, dac=R.DAC2, period_frames=512)
        assert link.wait_played(10)
        stats = link.stats.as_dict()
        summaries.append({"mode": "mirrored", "xruns": result.xruns, "late_dma": stats["late_dma"] - late_before,
                          "underruns": stats["underruns"]})  # fmt: skip
        reads.append(memory.reads[reads_before:])
    link.close()
    wait_sessions_closed(svc.address)
    with wave.open(str(tmp_path / "out.wav")) as w1, wave.open(str(tmp_path / "out.1.wav")) as w2:
        assert (w1.getframerate(), w1.getnchannels(), w1.getsampwidth()) == (44100, 2, 2)
        assert (w2.getframerate(), w2.getnchannels(), w2.getsampwidth()) == (22050, 1, 1)
        played = [w1.readframes(w1.getnframes()), w2.readframes(w2.getnframes())]
    for i, (pcm, fmt) in enumerate(((pcm1, first), (pcm2, second))):
        assert_played_as_the_card_took(
            played[i], pcm, summaries[i], reads[i], ring_bytes=4 * 512 * fmt.frame_bytes,
            silence=b"\x80" if fmt.bits == 8 else b"\x00", name=f"format-change-{i}",
        )  # fmt: skip


def test_mirrored_shim_resyncs_a_restarted_service(services, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    args = ("--sink", "null", "--clock-scale", str(SCALE))
    first = services("audio", *args, listen=listen)
    memory, irq = new_guest()
    link = AudioLink(listen, "mirrored", memory, irq, clock=Clock(SCALE))
    link.start()
    driver = ScriptedEs1370Driver(link, memory, irq, clock=link.clock)
    driver.probe()
    fmt = PcmFormat(44100, 2, 16)
    pcm = melody(fmt, 20.0)  # 5 s: still playing when a new service is up, even on a loaded host
    result: dict = {}
    guest = threading.Thread(target=lambda: result.update(r=driver.play(pcm, fmt, period_frames=1024)))
    guest.start()
    while link.stats.pcm_bytes < 100_000:  # well into the song
        time.sleep(0.01)
    first.stop(sig_kill=True)
    time.sleep(0.2)
    services("audio", *args, listen=listen)
    deadline = time.monotonic() + 10
    while not link.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert link.connected and link.stats.reconnects == 1
    ours, theirs = link.compare_mirror()
    assert theirs is not None and ours == theirs  # the new service holds exactly the shim's state
    with grpc.insecure_channel(listen) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        while time.monotonic() < deadline + 10:  # playback resumes on the new service
            (session,) = stub.ListSessions(common_pb2.ListSessionsRequest()).sessions
            if session.counters["pcm_bytes"] > 0:
                break
            time.sleep(0.05)
    assert session.counters["pcm_bytes"] > 0
    guest.join(30)
    link.close()
    if result["r"].xruns == 0:  # (a loaded host may starve the guest itself)
        assert result["r"].interrupts == result["r"].periods  # the guest never noticed the outage
