"""A scripted guest's PCM, through the real shim and the real audio service, out of ALSA's `file:` PCM."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from frontend_shim.guests.pcm import melody, write_wav
from frontend_shim.guests.scripted_audio import ScriptedEs1370Driver, new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat
from tests.fault_helpers import list_sessions, wait_for
from tests.helpers import run_shim

SCALE = "4"  # both ends run their clocks 4x faster than real time
FORMATS = [
    (PcmFormat(44100, 2, 16), "dac2"),
    (PcmFormat(48662, 1, 16), "dac2"),  # the rate ALSA picks on this chip when asked for 48 kHz
    (PcmFormat(22050, 1, 8), "dac1"),
    (PcmFormat(11025, 2, 8), "dac1"),
]


def wait_sessions_closed(address: str, timeout: float = 10.0) -> None:
    """The service closes a session (and its sink) after the shim's stream ends."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        while stub.ListSessions(common_pb2.ListSessionsRequest()).sessions:
            assert time.monotonic() < deadline, "session did not close"
            time.sleep(0.02)


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
@pytest.mark.parametrize(("fmt", "dac"), FORMATS, ids=[f"{f.rate}-{f.bits}-{f.channels}ch-{d}" for f, d in FORMATS])
def test_pcm_arrives_byte_exact(services, tmp_path: Path, mode: str, fmt: PcmFormat, dac: str) -> None:
    out = tmp_path / "out.raw"
    svc = services("audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--clock-scale", SCALE)
    pcm = melody(fmt, 0.6)
    wav = tmp_path / "in.wav"
    write_wav(str(wav), fmt, pcm)
    period_frames = 512
    res = run_shim(
        "play", "--wav", str(wav), "--audio", svc.address, "--mode", mode, "--dac", dac,
        "--period-frames", str(period_frames), "--json", "--clock-scale", SCALE,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    period_bytes = period_frames * fmt.frame_bytes
    periods = -(-len(pcm) // period_bytes)
    assert summary["periods"] == periods
    assert summary["interrupts"] == periods  # one interrupt per period, none lost or merged
    assert summary["read_timeouts"] == 0
    wait_sessions_closed(svc.address)

    played = out.read_bytes()
    assert played[: len(pcm)] == pcm
    # After the last sample: the silence the guest padded its last period with, plus (backend mode) what the
    # DMA fetched of the silent ring before the guest's stop arrived. Never anything else.
    tail = played[len(pcm) :]
    silence = b"\x80" if fmt.bits == 8 else b"\x00"
    assert tail == silence * len(tail)
    assert len(played) >= periods * period_bytes
    assert len(tail) < 2 * period_bytes + int(0.1 * fmt.rate) * fmt.frame_bytes


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
    driver = ScriptedEs1370Driver(CheckingDevice(), memory, irq)
    driver.probe()
    result = driver.play(melody(fmt, 0.3), fmt, period_frames=256)
    link.close()
    assert result.interrupts == result.periods
    assert len(checks) > 100 and all(checks), f"{checks.count(False)} of {len(checks)} checks differed"


def test_killing_the_service_never_hangs_the_guest(services, tmp_path: Path) -> None:
    fmt = PcmFormat(44100, 2, 16)
    wav = tmp_path / "long.wav"
    write_wav(str(wav), fmt, melody(fmt, 3.0))
    for mode in ("backend", "mirrored"):
        svc = services("audio", "--sink", "null")

        def kill_while_playing(svc=svc) -> None:  # noqa: ANN001
            # Once the guest's session is open and playing (a shim's start-up time varies with the host's load),
            # never on a fixed timer that may fire before the session exists.
            assert wait_for(lambda: bool(list_sessions("audio", svc.address)), 20, 0.02) is not None
            time.sleep(0.5)
            svc.stop(sig_kill=True)

        killer = threading.Thread(target=kill_while_playing)
        killer.start()
        started = time.monotonic()
        res = run_shim("play", "--wav", str(wav), "--audio", svc.address, "--mode", mode, "--json", timeout=30)
        elapsed = time.monotonic() - started
        killer.join()
        assert svc.proc.returncode is not None
        assert elapsed < 3.0 + 5.0  # bounded: the audio's length plus the guest's interrupt timeout
        if mode == "mirrored":
            # The shim holds the state and keeps the sample clock: the guest plays to the end.
            assert res.returncode == 0, res.stderr
            summary = json.loads(res.stdout)
            assert summary["interrupts"] == summary["periods"]
        else:
            # The card lived only in the service: like a card pulled out, it stops interrupting and the
            # guest's driver times out (ALSA's "DMA or IRQ trouble"); register reads meanwhile fail fast.
            assert res.returncode == 1
            assert "no interrupt" in res.stderr
        assert res.stderr.count("audio session lost") == 1


def test_two_sessions_play_side_by_side(services, tmp_path: Path) -> None:
    out = tmp_path / "out-{session}.raw"
    svc = services("audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--clock-scale", SCALE)
    pcms, procs = [], []

    for i, fmt in enumerate([PcmFormat(44100, 2, 16), PcmFormat(22050, 1, 8)]):
        pcm = melody(fmt, 0.5)
        wav = tmp_path / f"in{i}.wav"
        write_wav(str(wav), fmt, pcm)
        pcms.append(pcm)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "frontend_shim",
                    "play",
                    "--wav",
                    str(wav),
                    "--audio",
                    svc.address,
                    "--mode",
                    ["mirrored", "backend"][i],
                    "--clock-scale",
                    SCALE,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        )
    for p in procs:
        assert p.wait(60) == 0, p.stderr.read()
    wait_sessions_closed(svc.address)
    outputs = sorted(tmp_path.glob("out-s*.raw"))
    assert len(outputs) == 2
    played = [o.read_bytes() for o in outputs]
    # Each session's sink got exactly its own guest's PCM (then padding): no cross-talk.
    for pcm in pcms:
        assert sum(out.startswith(pcm) for out in played) == 1


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
    assert state.channels[1].name == "dac2" and state.channels[1].frame_addr == 0x123400
