"""The remote microphone: what the service's capture source records arrives in the scripted guest's ring.

Through the real `record` command, the real shim and the real audio service, in both coherence modes: a WAV
source byte for byte (the ring gets the file from its first frame: no start offset), several formats, a real
ALSA capture PCM (ALSA's `file` plugin reading a raw file over the `null` PCM, through pyalsaaudio), playback
and capture at once on one card, and the faults of a capture (service restart, a source that fails, the guest
stopping with audio in flight).
"""

from __future__ import annotations

import json
import threading
import time
import wave
from pathlib import Path

import pytest

from frontend_shim.guests.pcm import melody, write_wav
from frontend_shim.guests.scripted_audio import (
    BUFFER_ADDR,
    CAPTURE_ADDR,
    Capture,
    GuestError,
    Playback,
    ScriptedEs1370Driver,
    new_guest,
)
from frontend_shim.links.audio import AudioLink
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat
from tests.fault_helpers import free_port, wait_for
from tests.helpers import run_shim

# Scale 2, not the playback tests' 4: a capture period is held for the guest's acknowledgement for at most 50 ms of
# device time, which a busy 2-core machine can exceed at 4x in backend mode (each acknowledgement is a round trip).
SCALE = "2"
FORMATS = [
    PcmFormat(44100, 2, 16),
    PcmFormat(22050, 1, 16),
    PcmFormat(22050, 2, 8),
    PcmFormat(11025, 1, 8),
]


def wav_frames(path: Path) -> tuple[PcmFormat, bytes]:
    with wave.open(str(path)) as w:
        return PcmFormat(w.getframerate(), w.getnchannels(), w.getsampwidth() * 8), w.readframes(w.getnframes())


def record(address: str, out: Path, mode: str, fmt: PcmFormat, seconds: float, *extra: str) -> dict:
    """The `record` command; a backend register read may take up to 2 s here (what is tested is the audio: the
    default 50 ms is exceeded now and then on a busy 2-core machine, and a read that times out reads all ones)."""
    res = run_shim(
        "record", "--out", str(out), "--audio", address, "--mode", mode, "--rate", str(fmt.rate),
        "--channels", str(fmt.channels), "--bits", str(fmt.bits), "--seconds", str(seconds),
        "--period-frames", "512", "--json", "--clock-scale", SCALE, "--access-timeout-ms", "2000", *extra,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
@pytest.mark.parametrize("fmt", FORMATS, ids=[f"{f.rate}-{f.bits}-{f.channels}ch" for f in FORMATS])
def test_wav_source_arrives_byte_exact(services, tmp_path: Path, mode: str, fmt: PcmFormat) -> None:
    source = tmp_path / "mic.wav"
    pcm = melody(fmt, 1.0)
    write_wav(str(source), fmt, pcm)
    svc = services("audio", "--sink", "null", "--source", "wav", "--source-path", str(source), "--clock-scale", SCALE)
    out = tmp_path / "rec.wav"
    summary = record(svc.address, out, mode, fmt, 0.6)
    got_fmt, got = wav_frames(out)
    assert got_fmt == fmt
    periods = -(-int(0.6 * fmt.rate) // 512)
    assert summary["periods"] == periods and summary["spurious"] == 0
    # One handler run per period; a period that completes while the handler of the one before reads the pointer
    # is taken by that handler (as ALSA does), its own interrupt then finds nothing new or comes after the stop.
    assert periods - 2 <= summary["interrupts"] <= periods
    assert len(got) == periods * 512 * fmt.frame_bytes
    assert got == pcm[: len(got)]  # from the first frame on, nothing lost, nothing added
    assert summary["read_timeouts"] == 0


def test_recording_past_the_end_of_the_wav_gives_silence(services, tmp_path: Path) -> None:
    fmt = PcmFormat(11025, 1, 8)
    source = tmp_path / "short.wav"
    pcm = melody(fmt, 0.2)
    write_wav(str(source), fmt, pcm)
    svc = services("audio", "--sink", "null", "--source", "wav", "--source-path", str(source), "--clock-scale", SCALE)
    record(svc.address, tmp_path / "rec.wav", "mirrored", fmt, 0.5)
    _, got = wav_frames(tmp_path / "rec.wav")
    assert got[: len(pcm)] == pcm and got[len(pcm) :] == b"\x80" * (len(got) - len(pcm))


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_real_alsa_capture_pcm(services, tmp_path: Path, mode: str) -> None:
    """--source alsa through pyalsaaudio: ALSA's `file` plugin over `null` records the bytes of a raw file."""
    fmt = PcmFormat(22050, 2, 16)
    raw = tmp_path / "mic.raw"
    pcm = melody(fmt, 1.0)
    raw.write_bytes(pcm)
    conf = tmp_path / "asound.conf"
    conf.write_text(
        "</usr/share/alsa/alsa.conf>\n"
        f'pcm.rdvmic {{ type file slave.pcm "null" file "/dev/null" infile "{raw}" format "raw" }}\n'
    )
    svc = services(
        "audio", "--sink", "null", "--source", "alsa", "--capture-device", "rdvmic", "--pace", "clock",
        "--clock-scale", SCALE, env={"ALSA_CONFIG_PATH": str(conf)},
    )  # fmt: skip
    summary = record(svc.address, tmp_path / "rec.wav", mode, fmt, 0.5)
    _, got = wav_frames(tmp_path / "rec.wav")
    assert summary["source"] == "alsa"
    assert len(got) > 0 and got == pcm[: len(got)]


def test_a_format_the_wav_source_does_not_have_is_refused_clearly(services, tmp_path: Path) -> None:
    source = tmp_path / "mic.wav"
    write_wav(str(source), PcmFormat(44100, 2, 16), b"\0" * 4000)
    svc = services("audio", "--sink", "null", "--source", "wav", "--source-path", str(source))
    res = run_shim(
        "record", "--out", str(tmp_path / "x.wav"), "--audio", svc.address, "--rate", "22050", "--channels", "1",
        "--bits", "8", "--seconds", "0.1",
    )  # fmt: skip
    assert res.returncode == 1
    assert "records a WAV of 44100 Hz 16-bit stereo" in res.stderr and "Traceback" not in res.stderr
    res = run_shim("record", "--out", str(tmp_path / "x.wav"), "--audio", svc.address, "--rate", "48000")
    assert res.returncode == 1 and "nearest: 48662 Hz" in res.stderr


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_full_duplex_on_one_card(services, tmp_path: Path, mode: str) -> None:
    """DAC2 plays a song while the ADC records the WAV source, on one card at one rate: both streams exact,
    every period of each interrupts once, and (mirrored) the shim's and the service's copies stay equal."""
    fmt = PcmFormat(22050, 2, 16)
    mic = melody(PcmFormat(22050, 2, 16), 1.0)[::-1]  # different bytes from the song
    source = tmp_path / "mic.wav"
    write_wav(str(source), fmt, mic)
    out = tmp_path / "played.raw"
    # Real time: playback's DMA holds a period for the guest's acknowledgement for only 50 ms of device time,
    # which a busy machine exceeds at 2x with two streams' handlers to run in backend mode.
    svc = services(
        "audio", "--alsa-device", f"file:FILE={out},FORMAT=raw", "--source", "wav", "--source-path", str(source),
    )  # fmt: skip
    memory, irq = new_guest()
    link = AudioLink(svc.address, mode, memory, irq, access_timeout=2.0)  # see `record`
    link.start()
    song = melody(fmt, 0.5)
    try:
        driver = ScriptedEs1370Driver(link, memory, irq)
        driver.probe()
        played, recorded = driver.run(Playback(song, fmt, R.DAC2, 512), Capture(fmt, 0.5, 512))
        if mode == "mirrored":
            ours, theirs = link.compare_mirror()
            assert theirs is not None and ours == theirs
    finally:
        link.close()
    assert played is not None and recorded is not None
    assert played.spurious == 0
    assert recorded.captured == mic[: len(recorded.captured)]
    assert len(recorded.captured) == recorded.periods * 512 * fmt.frame_bytes
    # One interrupt per period of either stream, or fewer when both completed before one handler ran.
    assert max(played.periods, recorded.periods) <= played.interrupts <= played.periods + recorded.periods
    assert wait_for(lambda: out.exists() and out.stat().st_size >= len(song), 10)
    assert out.read_bytes()[: len(song)] == song


def test_guest_stopping_with_audio_in_flight_then_recording_again(services, tmp_path: Path) -> None:
    """The guest stops its ADC while recorded audio is queued and in flight, in both modes: no write lands
    outside the ring, and a new capture starts again from the source's first frame."""
    fmt = PcmFormat(44100, 2, 16)
    mic = melody(fmt, 1.0)
    source = tmp_path / "mic.wav"
    write_wav(str(source), fmt, mic)
    svc = services("audio", "--sink", "null", "--source", "wav", "--source-path", str(source), "--clock-scale", SCALE)
    for mode in ("mirrored", "backend"):
        memory, irq = new_guest()
        link = AudioLink(svc.address, mode, memory, irq, clock=Clock(float(SCALE)), access_timeout=2.0)
        link.start()
        try:
            driver = ScriptedEs1370Driver(link, memory, irq)
            driver.probe()
            ring = 4 * 256 * fmt.frame_bytes
            for _ in range(3):  # short captures, stopped while the source keeps delivering
                result = driver.record(fmt, 0.05, period_frames=256)
                assert result.captured == mic[: len(result.captured)], mode
            time.sleep(0.2)  # anything still in flight lands now, or never
            before, after = memory.data[:CAPTURE_ADDR], memory.data[CAPTURE_ADDR + ring :]
            assert not before.strip(b"\0") and not after.strip(b"\0"), f"{mode}: a write outside the ring"
            assert memory.data[BUFFER_ADDR : BUFFER_ADDR + 16] == bytes(16)
        finally:
            link.close()


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_service_restarting_mid_capture(services, tmp_path: Path, mode: str) -> None:
    """SIGKILL the service while the guest records; a new one on the same port: the shim reconnects and the
    capture resumes. Mirrored: the guest's capture never stops (it waits out the outage; the new service records
    from the source's start). Backend: the card vanished with the service, the driver's watchdog re-prepares."""
    fmt = PcmFormat(22050, 2, 16)
    mic = melody(fmt, 8.0)
    source = tmp_path / "mic.wav"
    write_wav(str(source), fmt, mic)
    listen = f"127.0.0.1:{free_port()}"
    args = ("--sink", "null", "--source", "wav", "--source-path", str(source))
    first = services("audio", *args, listen=listen)
    memory, irq = new_guest()
    # Reads wait up to 0.3 s: long enough for a busy machine's live service, short enough to find a dead one.
    link = AudioLink(listen, mode, memory, irq, access_timeout=0.3)
    link.start()
    got: dict[str, object] = {"restarts": 0, "captures": []}

    def guest() -> None:
        deadline = time.monotonic() + 40
        driver = ScriptedEs1370Driver(link, memory, irq, irq_timeout=15.0 if mode == "mirrored" else 0.5)
        driver.probe()
        while time.monotonic() < deadline:
            try:
                got["captures"].append(driver.record(fmt, 2.5, period_frames=1024).captured)  # type: ignore[union-attr]
                return
            except GuestError:
                # Backend: the card vanished with the service. Like ALSA after "capture read error", the user
                # tries again: once the card answers again, probe and record anew.
                got["restarts"] = int(got["restarts"]) + 1  # type: ignore[call-overload]
                wait_for(lambda: link.stats.reconnects >= 1 and link.connected, 30)
                driver = ScriptedEs1370Driver(link, memory, irq, irq_timeout=0.5)
                driver.probe()

    thread = threading.Thread(target=guest, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: link.stats.capture_bytes > 8192, 10), "capture did not start"
        first.stop(sig_kill=True)
        time.sleep(0.3)
        services("audio", *args, listen=listen)
        thread.join(60)
        assert not thread.is_alive(), "the guest hung"
    finally:
        link.close()
    assert link.stats.reconnects == 1
    (captured,) = got["captures"]  # type: ignore[misc]
    assert isinstance(captured, bytes) and len(captured) == -(-int(2.5 * fmt.rate) // 1024) * 1024 * 4
    # What the guest recorded: the source from its start, then (after the outage) the source from its start
    # again, never anything else.
    second = captured.rfind(mic[:4096])
    assert second >= 0
    assert captured[second:] == mic[: len(captured) - second]
    if mode == "mirrored":
        assert second > 0 and captured[:second] == mic[:second]
    else:
        assert int(got["restarts"]) >= 1  # type: ignore[call-overload]


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_a_source_that_cannot_record_the_guests_format_records_silence(services, tmp_path: Path, mode: str) -> None:
    """A real guest does not ask before recording: the WAV source refuses its format (like a microphone that is
    gone), the service says so once in its log and records silence, and the guest's capture runs to its end."""
    source = tmp_path / "mic.wav"
    write_wav(str(source), PcmFormat(44100, 2, 16), melody(PcmFormat(44100, 2, 16), 0.5))
    svc = services("audio", "--sink", "null", "--source", "wav", "--source-path", str(source), "--clock-scale", SCALE)
    memory, irq = new_guest()
    link = AudioLink(svc.address, mode, memory, irq, clock=Clock(float(SCALE)), access_timeout=2.0)
    link.start()
    fmt = PcmFormat(22050, 1, 8)
    try:
        driver = ScriptedEs1370Driver(link, memory, irq)
        driver.probe()
        result = driver.record(fmt, 0.3, period_frames=512)
    finally:
        link.close()
    assert result.periods == -(-int(0.3 * fmt.rate) // 512) and result.spurious == 0
    assert result.captured == b"\x80" * len(result.captured)  # U8 silence
    assert wait_for(lambda: "capture source failed: recording silence" in svc.logs(), 5)
    assert "the guest records 22050 Hz 8-bit mono" in svc.logs()
