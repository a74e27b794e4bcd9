"""The service's mixer (`--mix service`): several VMs summed into one ALSA `file:` PCM, per-VM volume and mute,
isolation between VMs. In process first (the mixer with its inputs fed like players feed them), then end to end
(four scripted guests through the shim and the audio service)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from frontend_shim.guests.guest import load_reads
from frontend_shim.guests.pcm import melody, write_wav
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.audio.mixer import Mixer, MixerInput
from services.audio.sinks.alsa import AlsaSink
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat
from tests.audio_helpers import wait_sessions_closed
from tests.mix_helpers import assert_mix, check_coverage, read_log, stream

RATE = 44100


def square(fmt: PcmFormat, seconds: float, level: float, hz: float = 200.0) -> bytes:
    """A loud square wave: two of them in phase saturate the sum."""
    n = int(fmt.rate * seconds)
    wave = np.where((np.arange(n) * hz / fmt.rate) % 1 < 0.5, level, -level)
    if fmt.bits == 8:
        s = np.clip(np.rint(wave * 127 + 128), 0, 255).astype(np.uint8)
    else:
        s = np.rint(wave * 32767).astype("<i2")
    return np.repeat(s, fmt.channels).tobytes()


def feed(inp: MixerInput, fmt: PcmFormat, data: bytes, chunk_seconds: float = 0.01, stall: float = 0.0) -> None:
    """What a player does: open, write 10 ms chunks (each blocks while the mixer is full), close."""
    inp.open(fmt)
    step = max(1, int(fmt.rate * chunk_seconds)) * fmt.frame_bytes
    for i in range(0, len(data), step):
        if stall and i == (len(data) // 2) // step * step:
            time.sleep(stall)  # the VM stalls half way
        inp.write(data[i : i + step])
    inp.close()


def test_mixer_sums_four_formats_with_volume_and_saturation(tmp_path: Path) -> None:
    out, log = tmp_path / "mix.raw", tmp_path / "mix.jsonl"
    clock = Clock(4.0)
    mixer = Mixer(AlsaSink(f"file:FILE={out},FORMAT=raw"), RATE, clock, str(log))
    mixer.set_volume("b", volume=0.5)
    mixer.set_volume("e", mute=True)
    inputs = {
        "a": (PcmFormat(44100, 2, 16), square(PcmFormat(44100, 2, 16), 1.0, 0.9)),
        "b": (PcmFormat(44100, 1, 8), square(PcmFormat(44100, 1, 8), 1.0, 0.9)),  # at 0.5
        "c": (PcmFormat(22050, 1, 8), melody(PcmFormat(22050, 1, 8), 1.0)),  # resampled
        "d": (PcmFormat(48662, 1, 16), melody(PcmFormat(48662, 1, 16), 1.0)),  # resampled
        "e": (PcmFormat(44100, 2, 16), np.random.default_rng(7).bytes(44100 * 4)),  # garbage, muted
    }
    threads = []
    for vm, (fmt, data) in inputs.items():
        inp = mixer.input(f"s-{vm}", vm, "DAC2")
        stall = 0.3 if vm == "e" else 0.0  # ~1.2 s of device time: the others must not notice
        threads.append(threading.Thread(target=feed, args=(inp, fmt, data), kwargs={"stall": stall}))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 30
    while len(read_log(log)[1]) < len(inputs):
        assert time.monotonic() < deadline, "the mixer did not play every input out"
        time.sleep(0.05)
    mixer.stop()
    runs, ends = read_log(log)
    streams = {}
    for vm, (fmt, data) in inputs.items():
        s = stream(data, fmt, RATE)
        check_coverage(runs, (vm, f"s-{vm}", 0), len(s.frames), slack=2 if s.resampled else 0)
        if vm != "e":
            streams[(vm, f"s-{vm}", 0)] = s
    figures = assert_mix(out.read_bytes(), runs, streams)
    assert figures["clipped_samples"] > 1000  # a and b in phase: the saturation was exercised
    assert figures["exact_frames"] > RATE // 4  # a and b alone after c and d (1 s each, same length) ended?
    assert all(r["gain"] == 0.5 for r in runs if r["vm"] == "b")
    print("\nFIGURES mixer-in-process:", figures, {e["vm"]: e["underruns"] for e in ends})


# ---------------------------------------------------------------------------------------------- end to end
SCALE = "4"
ACCESS_TIMEOUT_MS = "2000"
VMS = {  # vm: (format, DAC, content)
    "a": (PcmFormat(44100, 2, 16), "dac2", "noise"),  # garbage content at full scale: saturates the sum
    "b": (PcmFormat(44100, 1, 8), "dac1", "melody"),  # volume 0.5 by session id, half way
    "c": (PcmFormat(22050, 1, 8), "dac1", "melody"),  # resampled
    "d": (PcmFormat(48662, 1, 16), "dac2", "melody"),  # resampled, -6 dB
}


def shim(wav: Path, vm: str, dac: str, dma_log: Path | None, address: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "frontend_shim", "play", "--wav", str(wav), "--audio", address,
            "--mode", "mirrored", "--dac", dac, "--vm", vm, "--clock-scale", SCALE, "--json",
            "--access-timeout-ms", ACCESS_TIMEOUT_MS]  # fmt: skip
    if dma_log is not None:
        args += ["--dma-log", str(dma_log)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sessions(stub: audio_pb2_grpc.AudioServiceStub) -> list:
    return list(stub.ListSessions(common_pb2.ListSessionsRequest()).sessions)


def wait_for(what: str, check: Callable[[], object], timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return got


def test_four_vms_mixed_exactly_while_one_crashes_restarts_and_one_sends_garbage(services, tmp_path: Path) -> None:
    out, log = tmp_path / "mix.raw", tmp_path / "mix.jsonl"
    svc = services("audio", "--mix", "service", "--mix-rate", str(RATE), "--alsa-device", f"file:FILE={out},FORMAT=raw",
                   "--clock-scale", SCALE, "--mix-log", str(log))  # fmt: skip
    channel = grpc.insecure_channel(svc.address)
    stub = audio_pb2_grpc.AudioServiceStub(channel)
    # The VM that crashes is muted by name before it ever connects: the name keeps the setting across its restart.
    muted = stub.SetVolume(audio_pb2.SetVolumeRequest(vm="x", mute=True))
    assert muted.mute and muted.volume == 1.0
    pcms, procs = {}, {}
    for vm, (fmt, _, content) in VMS.items():
        pcm = np.random.default_rng(1).bytes(int(fmt.rate * 10) * fmt.frame_bytes) if content == "noise" else None
        pcms[vm] = pcm or melody(fmt, 10.0)
        write_wav(str(tmp_path / f"{vm}.wav"), fmt, pcms[vm])
    x_fmt = PcmFormat(44100, 2, 16)
    write_wav(str(tmp_path / "x-long.wav"), x_fmt, melody(x_fmt, 30.0))
    write_wav(str(tmp_path / "x.wav"), x_fmt, melody(x_fmt, 2.0))
    crashing = shim(tmp_path / "x-long.wav", "x", "dac2", None, svc.address)
    for vm, (_, dac, _) in VMS.items():
        procs[vm] = shim(tmp_path / f"{vm}.wav", vm, dac, tmp_path / f"{vm}.dma", svc.address)

    def playing(vm: str) -> str | None:
        """The VM's session once some of its audio went into the mix (playback starts a target latency after
        the first bytes arrive)."""
        return next((s.session_id for s in sessions(stub) if s.vm == vm and s.counters["bytes_played"]), None)

    wait_for("vm x did not start playing", lambda: playing("x"))
    crashing.kill()  # a VM crashes mid-song (its shim dies without a word) ...
    crashing.communicate(timeout=30)
    b_session = wait_for("vm b did not start playing", lambda: playing("b"))
    stub.SetVolume(audio_pb2.SetVolumeRequest(session_id=b_session, volume=0.5))
    assert stub.SetVolume(audio_pb2.SetVolumeRequest(vm="d", volume_db=-6.0)).volume == pytest.approx(0.501, abs=1e-3)
    wait_for("vm x's first session did not end", lambda: not any(s.vm == "x" for s in sessions(stub)))
    restarted = shim(tmp_path / "x.wav", "x", "dac2", None, svc.address)  # ... and comes back
    # Another VM sends garbage: PCM without a running DAC. Its session ends; nobody else notices.
    garbage = [audio_pb2.FrontendMessage(open=audio_pb2.Open(vm="g", mode=common_pb2.COHERENCE_MODE_MIRRORED)),
               audio_pb2.FrontendMessage(pcm=audio_pb2.PcmChunk(channel=1, data=b"\x7f" * 4096))]  # fmt: skip
    with pytest.raises(grpc.RpcError) as refused:
        for _ in stub.Session(iter(garbage), timeout=30):
            pass
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    counters = {s.vm: dict(s.counters) for s in sessions(stub)}
    assert all("underruns" in c for c in counters.values())  # each VM's own count
    summaries = {}
    for vm, p in [*procs.items(), ("x", restarted)]:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, f"{vm}: {stderr}"
        summaries[vm] = json.loads(stdout)
    wait_sessions_closed(svc.address, timeout=30)
    wait_for("the mixer did not play every input out", lambda: len(read_log(log)[1]) >= 6, timeout=30)
    channel.close()
    svc.stop()  # the file: PCM is complete once the mixer closed it

    runs, ends = read_log(log)
    assert sorted(e["vm"] for e in ends) == ["a", "b", "c", "d", "x", "x"]
    assert all(r["gain"] == 0 for r in runs if r["vm"] == "x")
    assert {r["gain"] for r in runs if r["vm"] == "b"} == {1.0, 0.5}
    streams = {}
    for vm, (fmt, _, _) in VMS.items():
        (session,) = {r["session"] for r in runs if r["vm"] == vm}
        took = b"".join(data for _, data in load_reads(str(tmp_path / f"{vm}.dma")))  # what the card took
        if summaries[vm]["xruns"] == 0:
            assert took[: len(pcms[vm])] == pcms[vm]
        s = stream(took, fmt, RATE)
        check_coverage(runs, (vm, session, 0), len(s.frames), slack=2 if s.resampled else 0)
        streams[(vm, session, 0)] = s
    starts = [min(r["out"] for r in runs if r["vm"] == vm) for vm in VMS]
    ends_at = [max(r["out"] + r["frames"] for r in runs if r["vm"] == vm) for vm in VMS]
    together = min(ends_at) - max(starts)
    assert together > 0, "the four VMs never played at the same time: nothing was mixed"
    figures = assert_mix(out.read_bytes(), runs, streams)
    assert figures["clipped_samples"] > 0
    xruns = {vm: s["xruns"] for vm, s in summaries.items()}
    underruns = {e["vm"]: e["underruns"] for e in ends}
    print("\nFIGURES mixer-e2e:", {**figures, "all_four_frames": together}, "underruns", underruns, "xruns", xruns)


def test_mix_settings_and_set_volume_refusals(services) -> None:
    """A bad --mix value or a per-stream device with one mixed output is a usage error naming the setting;
    SetVolume refuses what it cannot do with the right status."""
    for args, words in [
        (["--mix", "both"], "--mix"),
        (["--mix", "service", "--alsa-device", "file:FILE=/tmp/{session}.raw"], "--alsa-device"),
        (["--mix", "service", "--mix-rate", "4000"], "--mix-rate"),
    ]:
        res = subprocess.run([sys.executable, "-m", "services.audio", "--listen", "127.0.0.1:0", *args],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 2 or res.returncode == 1, res.stderr
        assert words in res.stderr and "Traceback" not in res.stderr, res.stderr
    plain = services("audio", "--sink", "null")
    mixing = services("audio", "--sink", "null", "--mix", "service")
    cases = [
        (plain, audio_pb2.SetVolumeRequest(vm="a", volume=0.5), grpc.StatusCode.FAILED_PRECONDITION),
        (mixing, audio_pb2.SetVolumeRequest(vm="a", volume=1.5), grpc.StatusCode.INVALID_ARGUMENT),
        (mixing, audio_pb2.SetVolumeRequest(vm="a", volume=float("nan")), grpc.StatusCode.INVALID_ARGUMENT),
        (mixing, audio_pb2.SetVolumeRequest(vm="a", volume_db=3.0), grpc.StatusCode.INVALID_ARGUMENT),
        (mixing, audio_pb2.SetVolumeRequest(vm="a b", mute=True), grpc.StatusCode.INVALID_ARGUMENT),
        (mixing, audio_pb2.SetVolumeRequest(mute=True), grpc.StatusCode.INVALID_ARGUMENT),
        (mixing, audio_pb2.SetVolumeRequest(session_id="s99", mute=True), grpc.StatusCode.NOT_FOUND),
    ]
    for svc, request, code in cases:
        with grpc.insecure_channel(svc.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                audio_pb2_grpc.AudioServiceStub(ch).SetVolume(request, timeout=30)
            assert err.value.code() == code, (request, err.value.details())
    with grpc.insecure_channel(mixing.address) as ch:
        got = audio_pb2_grpc.AudioServiceStub(ch).SetVolume(audio_pb2.SetVolumeRequest(vm="a", volume_db=-120))
        assert got.volume == 0.0 and got.volume_db == -120.0 and not got.mute
