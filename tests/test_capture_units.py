"""The capture pieces on their own: the jitter buffer, the ADC's pacing rule, the sources, the recorder riding
out a source that fails, and the service's capture settings."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from frontend_shim.guests.pcm import melody, write_wav
from services.audio.capture import Recorder
from services.audio.sources import SourceConfig, SourceError, make_source
from services.audio.sources.tone import ToneSource
from services.audio.sources.wav import WavSource
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.capture_pacing import CaptureQueue, adc_credit, adc_room
from services.devices.es1370 import Es1370, PcmFormat
from tests.helpers import ROOT, FakeClock

FMT = PcmFormat(8000 * 2, 1, 16)  # 32000 B/s: round numbers


def test_queue_holds_the_latency_then_releases_at_the_format_rate() -> None:
    clock = FakeClock()
    q = CaptureQueue(clock, latency=0.04, quantum=0.005)
    q.start(FMT)
    q.push(b"a" * 960, 1)  # 30 ms: below the latency
    assert q.available == 0
    q.push(b"b" * 320, 2)  # 40 ms: the buffer is full, the release clock starts now
    assert q.available == 0
    clock.t = 0.0125  # 12.5 ms later: two whole 5 ms steps are due
    assert q.available == 320
    data, ns = q.take(320)
    assert data == b"a" * 320 and ns == 1
    clock.t = 0.0125 + 0.05  # 50 ms more: 62.5 ms due in all, but only 40 ms were ever queued
    assert q.available == 960
    q.take(960)
    assert q.available == 0 and q.underruns == 1  # ran dry: it fills up again before releasing more
    q.push(b"c" * 640, 3)
    assert q.available == 0


def test_queue_drops_the_oldest_beyond_its_limit_and_restarts_clean() -> None:
    clock = FakeClock()
    q = CaptureQueue(clock, latency=0.0, limit=0.1)
    q.start(FMT)
    q.push(b"x" * 3200, 1)
    q.push(b"y" * 1600, 2)  # 150 ms queued, 100 ms kept
    assert q.overrun_bytes == 1600 and q.available == 3200
    assert q.take(3200)[0] == b"x" * 1600 + b"y" * 1600
    q.push(b"z" * 64, 3)
    q.start(FMT)  # a new capture forgets the old one
    assert q.available == 0 and q.take(100)[0] == b""
    q.stop()
    q.push(b"w" * 64, 4)  # nothing records for a stopped ADC
    assert q.available == 0


def recording_model() -> Es1370:
    m = Es1370()
    m.write(R.MEMPAGE, 4, R.FRAME_PAGE_ADC)
    m.write(R.ADC_FRAMEADR & 0xFF, 4, 0x2000)
    m.write(R.ADC_FRAMECNT & 0xFF, 4, 63)  # 256 bytes
    m.write(R.SERIAL_CONTROL, 4, R.SCTRL_R1INTEN | (R.FMT_BIT_16 << R.SCTRL_SH_R1FMT))
    m.write(R.ADC_SCOUNT, 4, 31)  # 64-byte periods
    m.write(R.CONTROL, 4, R.CTRL_ADC_EN | (R.dac2_divider(16000) << R.CTRL_SH_PCLKDIV))
    return m


def test_adc_room_holds_a_completed_period_and_the_acknowledgement_gap() -> None:
    clock = FakeClock()
    m = recording_model()
    credit, q = adc_credit(clock), CaptureQueue(clock, latency=0.0)
    q.start(m.channel_format(R.ADC))
    q.push(bytes(200), 1)
    room = adc_room(credit, m, q)
    assert room == 200
    _, n = m.dma_window(R.ADC, room)
    assert n == 64 and m.dma_commit(R.ADC, n)
    credit.moved(R.ADC, n)
    q.take(n)
    assert adc_room(credit, m, q) == 0  # the period's interrupt is pending
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control & ~R.SCTRL_R1INTEN)  # the ack, first half
    assert not m.irq and adc_room(credit, m, q) == 0  # still held: a period now would raise no interrupt
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control | R.SCTRL_R1INTEN)
    assert adc_room(credit, m, q) == 136
    m.write(R.SERIAL_CONTROL, 4, m.state.serial_control & ~R.SCTRL_R1INTEN)
    clock.t = 1.5  # a driver that never acknowledges (or records without interrupts) waits the limit, once
    assert adc_room(credit, m, q) == 0
    clock.t = 3.6
    assert adc_room(credit, m, q) == 136


def test_wav_source_offers_its_own_format_from_its_first_frame(tmp_path: Path) -> None:
    fmt = PcmFormat(11025, 2, 8)
    pcm = melody(fmt, 0.1)
    path = tmp_path / "a.wav"
    write_wav(str(path), fmt, pcm)
    src = WavSource(str(path))
    assert src.fixed_format == fmt and not src.paces_itself
    with pytest.raises(SourceError, match="the guest records 22050 Hz"):
        src.open(PcmFormat(22050, 2, 8))
    for _ in range(2):  # each capture starts at the beginning
        src.open(fmt)
        assert src.read(1000) == pcm[:1000]
    tail = src.read(len(pcm))
    assert tail == pcm[1000:] + b"\x80" * 1000  # after the end: silence, in U8
    src.close()
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(SourceError, match="--source-path .*bad.wav"):
        WavSource(str(tmp_path / "bad.wav"))


def test_tone_records_any_format_continuously() -> None:
    src = ToneSource()
    for fmt in (PcmFormat(44100, 2, 16), PcmFormat(8018, 1, 8)):
        src.open(fmt)
        a, b = src.read(400), src.read(400)
        assert len(a) == len(b) == 400 and a != b and len(set(a)) > 10
    with pytest.raises(SourceError, match="unknown capture source"):
        make_source(SourceConfig(kind="mic"))


def test_alsa_source_refuses_a_missing_device_clearly() -> None:
    src = make_source(SourceConfig(kind="alsa", alsa_device="hw:77,0"))
    with pytest.raises(SourceError, match="'hw:77,0'"):
        src.open(PcmFormat(44100, 2, 16))


class _Flaky:
    """A source that works, fails (a microphone unplugged), and works again once reopened."""

    paces_itself = False
    fixed_format = None
    opened = 0
    reads = 0

    def open(self, fmt: PcmFormat) -> None:
        type(self).opened += 1
        if type(self).opened == 2:
            raise SourceError("device gone")

    def read(self, nbytes: int) -> bytes:
        type(self).reads += 1
        if type(self).reads == 3:
            raise SourceError("read failed: device unplugged")
        return b"\x11" * nbytes

    def close(self) -> None:
        pass


def test_recorder_records_silence_while_the_source_is_gone_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.audio.capture as capture

    monkeypatch.setattr(capture, "make_source", lambda config: _Flaky())
    got: list[bytes] = []
    done = threading.Event()

    def on_data(data: bytes, ns: int) -> None:
        got.append(data)
        if len(got) >= 40:
            done.set()

    fmt = PcmFormat(16000, 1, 16)
    rec = Recorder(SourceConfig(), fmt, Clock(10.0), on_data, chunk_seconds=0.01, retry_seconds=0.1).start()
    try:
        assert done.wait(20)
    finally:
        rec.close()
    kinds = "".join("s" if c == bytes(len(c)) else "d" for c in got)
    assert kinds.startswith("dds") and "sd" in kinds  # data, the failure's silence, then data again
    assert all(len(c) == 320 for c in got)  # 10 ms chunks throughout: the guest's clock never stops
    assert rec.stats.source_errors == 2 and rec.stats.silent_bytes > 0  # the read failure, the failed reopen


def run_service(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.audio", "--listen", "127.0.0.1:0", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_bad_capture_settings_are_usage_errors(tmp_path: Path) -> None:
    res = run_service("--source", "wav")
    assert res.returncode != 0 and "--source wav needs --source-path" in res.stderr
    res = run_service("--source", "wav", "--source-path", str(tmp_path / "missing.wav"))
    assert res.returncode != 0 and "--source-path" in res.stderr and "Traceback" not in res.stderr
    res = run_service("--capture-latency-ms", "-5")
    assert res.returncode != 0 and "--capture-latency-ms" in res.stderr


def test_ordered_dma_holds_the_interrupt_behind_a_write_that_must_wait() -> None:
    """Backend mode over vfio-user without shared RAM: a DMA_WRITE QEMU cannot serve now is retried, and the
    interrupt that followed it reaches the guest only after the audio is in memory."""
    from frontend_shim.guests.guest import GuestMemoryError, RamMemory
    from frontend_shim.links.ordered_dma import OrderedDma

    memory, events, errors = RamMemory(4096), [], []
    refusals = iter([True, True, True])

    def write(data: bytes) -> None:
        if next(refusals, False):
            raise GuestMemoryError("the client is waiting for our reply")
        memory.write(0, data)
        events.append(("write", data))

    ordered = OrderedDma(errors.append, retry=0.001)
    try:
        ordered.submit(lambda: write(b"abcd"))
        ordered.submit(lambda: events.append(("irq", None)))  # queued behind the waiting write
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert events == [("write", b"abcd"), ("irq", None)] and memory.read(0, 4) == b"abcd"
        assert ordered.deferred == 2 and ordered.dropped == 0 and len(errors) == 1
        ordered.submit(lambda: events.append(("irq", None)))  # nothing waits: at once
        assert len(events) == 3
    finally:
        ordered.close()


def test_ordered_dma_gives_up_on_memory_that_is_gone() -> None:
    from frontend_shim.guests.guest import GuestMemoryError
    from frontend_shim.links.ordered_dma import OrderedDma

    errors: list[Exception] = []

    def gone() -> None:
        raise GuestMemoryError("no client connected")

    ordered = OrderedDma(errors.append, give_up=0.05, retry=0.001)
    try:
        done = threading.Event()
        ordered.submit(gone)
        ordered.submit(done.set)
        assert done.wait(5) and ordered.dropped == 1
    finally:
        ordered.close()
