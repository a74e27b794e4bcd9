"""A scripted guest's PCM, through the real shim and the real audio service, out of ALSA's `file:` PCM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from frontend_shim.guests.guest import load_reads
from frontend_shim.guests.pcm import melody, write_wav
from frontend_shim.guests.scripted_audio import ScriptedEs1370Driver, new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat
from tests.audio_helpers import assert_played_as_the_card_took, plays_the_reads, wait_sessions_closed
from tests.helpers import run_shim

SCALE = "4"  # both ends run their clocks 4x faster than real time
ACCESS_TIMEOUT_MS = "2000"  # a register read on a loaded machine may take long; it must not read as a dead card
FORMATS = [
    (PcmFormat(44100, 2, 16), "dac2"),
    (PcmFormat(48662, 1, 16), "dac2"),  # the rate ALSA picks on this chip when asked for 48 kHz
    (PcmFormat(22050, 1, 8), "dac1"),
    (PcmFormat(11025, 2, 8), "dac1"),
]


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
@pytest.mark.parametrize(("fmt", "dac"), FORMATS, ids=[f"{f.rate}-{f.bits}-{f.channels}ch-{d}" for f, d in FORMATS])
def test_pcm_arrives_byte_exact(services, tmp_path: Path, mode: str, fmt: PcmFormat, dac: str) -> None:
    """Exactly the song when nobody saw an xrun; exactly what the card took from the ring in any case."""
    out = tmp_path / "out.raw"
    svc = services("audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--clock-scale", SCALE)
    pcm = melody(fmt, 0.6)
    wav = tmp_path / "in.wav"
    write_wav(str(wav), fmt, pcm)
    period_frames, periods = 512, 4
    dma_log = tmp_path / "dma.log"
    res = run_shim(
        "play", "--wav", str(wav), "--audio", svc.address, "--mode", mode, "--dac", dac,
        "--period-frames", str(period_frames), "--periods", str(periods), "--json", "--clock-scale", SCALE,
        "--access-timeout-ms", ACCESS_TIMEOUT_MS, "--dma-log", str(dma_log),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    period_bytes = period_frames * fmt.frame_bytes
    assert summary["periods"] == -(-len(pcm) // period_bytes)
    if summary["xruns"] == 0:
        assert summary["interrupts"] == summary["periods"]  # one interrupt per period, none lost or merged
    assert summary["read_timeouts"] == 0
    wait_sessions_closed(svc.address)
    assert_played_as_the_card_took(
        out.read_bytes(),
        pcm,
        summary,
        load_reads(str(dma_log)),
        ring_bytes=periods * period_bytes,
        silence=b"\x80" if fmt.bits == 8 else b"\x00",
        name=f"{mode}-{fmt}",
    )


def test_mirror_equals_service_after_every_write(services, tmp_path: Path) -> None:
    """Mirrored mode: the shim's copy and the service's copy are equal at every point of the stream."""
    svc = services("audio", "--sink", "null", "--clock-scale", SCALE)
    memory, irq = new_guest()
    link = AudioLink(svc.address, "mirrored", memory, irq, clock=Clock(float(SCALE)), access_timeout=1.0)
    link.start()
    checks: list[bool] = []

    class CheckingDevice:
        def io_read(self, bar: int, offset: int, size: int) -> int:
            return link.io_read(bar, offset, size)

        def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
            link.io_write(bar, offset, size, value)
            ours, theirs = link.compare_mirror()
            checks.append(theirs is not None and ours == theirs)

    fmt = PcmFormat(44100, 2, 16)
    driver = ScriptedEs1370Driver(CheckingDevice(), memory, irq, clock=link.clock)
    driver.probe()
    result = driver.play(melody(fmt, 0.3), fmt, period_frames=256)
    link.close()
    if result.xruns == 0:
        assert result.interrupts == result.periods
    assert len(checks) > 100 and all(checks), f"{checks.count(False)} of {len(checks)} checks differed"


def wait_playing(address: str, timeout: float = 30.0) -> None:
    """Until the service has a session that took PCM."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        while not any(s.counters["pcm_bytes"] for s in stub.ListSessions(common_pb2.ListSessionsRequest()).sessions):
            assert time.monotonic() < deadline, "no session started playing"
            time.sleep(0.02)


def test_killing_the_service_never_hangs_the_guest(services, tmp_path: Path) -> None:
    fmt = PcmFormat(44100, 2, 16)
    wav = tmp_path / "long.wav"
    write_wav(str(wav), fmt, melody(fmt, 3.0))
    for mode in ("backend", "mirrored"):
        svc = services("audio", "--sink", "null")

        shim = subprocess.Popen(
            [sys.executable, "-m", "frontend_shim", "play", "--wav", str(wav), "--audio", svc.address,
             "--mode", mode, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_playing(svc.address)  # once the guest's session plays: a slow shim start-up never beats the kill
        svc.stop(sig_kill=True)
        killed = time.monotonic()
        stdout, stderr = shim.communicate(timeout=60)
        # Bounded: what is left of the audio plus the guest's interrupt timeout (and a margin for a busy host).
        assert time.monotonic() - killed < 3.0 + 5.0
        if mode == "mirrored":
            # The shim holds the state and keeps the sample clock: the guest plays to the end.
            assert shim.returncode == 0, stderr
            summary = json.loads(stdout)
            if summary["xruns"] == 0:
                assert summary["interrupts"] == summary["periods"]
        else:
            # The card lived only in the service: like a card pulled out, it stops interrupting and the
            # guest's driver times out (ALSA's "DMA or IRQ trouble"); register reads meanwhile fail fast.
            assert shim.returncode == 1
            assert "no interrupt" in stderr
        assert stderr.count("audio session lost") == 1


def test_two_sessions_play_side_by_side(services, tmp_path: Path) -> None:
    out = tmp_path / "out-{session}.raw"
    svc = services("audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--clock-scale", SCALE)
    procs = []
    for i, fmt in enumerate([PcmFormat(44100, 2, 16), PcmFormat(22050, 1, 8)]):
        wav = tmp_path / f"in{i}.wav"
        write_wav(str(wav), fmt, melody(fmt, 0.5))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "frontend_shim", "play", "--wav", str(wav), "--audio", svc.address,
                 "--mode", ["mirrored", "backend"][i], "--clock-scale", SCALE, "--json",
                 "--access-timeout-ms", ACCESS_TIMEOUT_MS, "--dma-log", str(tmp_path / f"dma{i}.log")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        )
    summaries = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr
        summaries.append(json.loads(stdout))
    wait_sessions_closed(svc.address)
    outputs = sorted(tmp_path.glob("out-s*.raw"))
    assert len(outputs) == 2
    played = [o.read_bytes() for o in outputs]
    # Each session's sink got exactly what its own guest's card took from its ring: no cross-talk.
    for i, summary in enumerate(summaries):
        reads = load_reads(str(tmp_path / f"dma{i}.log"))
        limit = summary["xruns"] + 1 if summary["mode"] == "backend" else 0
        assert sum(plays_the_reads(out, reads, limit) for out in played) == 1


def test_a_starved_guest_is_seen_at_both_ends(services, tmp_path: Path) -> None:
    """A guest that stalls in its interrupt handler for many rings: the card plays on (what the ring holds), the
    service counts late DMA and logs it once, the shim hears the count, the guest restarts if ALSA's arithmetic
    sees the xrun, and the sink still played exactly what the card took from the ring."""
    out = tmp_path / "out.raw"
    svc = services("audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--clock-scale", SCALE)
    memory, irq = new_guest(record=True)
    link = AudioLink(svc.address, "backend", memory, irq, clock=Clock(float(SCALE)), access_timeout=2.0)
    link.start()
    status_reads = 0

    class StallingDevice:
        def io_read(self, bar: int, offset: int, size: int) -> int:
            nonlocal status_reads
            if offset == R.STATUS and link.stats.interrupts >= 10 and status_reads == 0:
                status_reads += 1
                time.sleep(0.3)  # ~50 rings of 256 frames at 4x: the guest is starved
            return link.io_read(bar, offset, size)

        def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
            link.io_write(bar, offset, size, value)

    fmt = PcmFormat(44100, 2, 16)
    pcm = melody(fmt, 0.4)
    driver = ScriptedEs1370Driver(StallingDevice(), memory, irq, clock=link.clock)
    driver.probe()
    result = driver.play(pcm, fmt, period_frames=256)
    with grpc.insecure_channel(svc.address) as ch:
        (session,) = audio_pb2_grpc.AudioServiceStub(ch).ListSessions(common_pb2.ListSessionsRequest()).sessions
        state = audio_pb2_grpc.AudioServiceStub(ch).GetDeviceState(audio_pb2.GetDeviceStateRequest())
    link.close()
    wait_sessions_closed(svc.address)
    assert status_reads == 1
    # The guest's own view is ALSA's pointer arithmetic, which sees a stall of many rings only where the position
    # it reads back lands behind the last one (snd_pcm_update_hw_ptr0 adds at most one ring): it may report the
    # xrun or not. The card's ends count every late DMA, whatever the guest saw.
    assert session.counters["late_dma"] >= 1 and state.late_dma == session.counters["late_dma"]
    assert link.stats.as_dict()["late_dma"] == session.counters["late_dma"]  # the shim heard it too
    assert svc.logs().count("late DMA") == 1  # one warning line for the burst, not one per period
    summary = {"mode": "backend", "xruns": result.xruns, **link.stats.as_dict()}
    silence = b"\x00"
    assert_played_as_the_card_took(
        out.read_bytes(), pcm, summary, memory.reads, ring_bytes=4 * 256 * 4, silence=silence, name="starved"
    )


def test_device_state_debug_rpc(services) -> None:
    svc = services("audio", "--sink", "null")
    with grpc.insecure_channel(svc.address) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetDeviceState(audio_pb2.GetDeviceStateRequest(session_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        memory, irq = new_guest()
        link = AudioLink(svc.address, "backend", memory, irq)
        link.start()
        link.io_write(0, R.MEMPAGE, 4, R.FRAME_PAGE_DAC)
        link.io_write(0, R.DAC2_FRAMEADR & 0xFF, 4, 0x123400)
        assert link.barrier() is not None
        state = stub.GetDeviceState(audio_pb2.GetDeviceStateRequest())
        link.close()
    assert state.raw.mempage == R.FRAME_PAGE_DAC
    assert state.underruns == 0 and state.late_dma == 0  # nothing played yet
    assert state.channels[1].name == "dac2" and state.channels[1].frame_addr == 0x123400
