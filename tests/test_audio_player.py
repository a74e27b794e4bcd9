"""The player's jitter buffer on a clock that stands still until the test moves it: playback starts a target
latency after the stream's first bytes arrived, not as soon as a first burst holds that much."""

from __future__ import annotations

import threading
import time

from services.audio.player import ChannelPlayer, PlayerStats
from services.devices.es1370 import PcmFormat
from tests.helpers import FakeClock

FMT = PcmFormat(44100, 2, 16)
BYTE_RATE = FMT.rate * FMT.frame_bytes
TARGET = 0.06


class RecordingSink:
    """A device that takes every write at once and notes the device time of each."""

    paces_itself = True
    underruns = 0

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.writes: list[tuple[float, int]] = []
        self.wrote = threading.Event()

    def open(self, fmt: PcmFormat) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append((self.clock.now(), len(data)))
        self.wrote.set()

    def close(self) -> None:
        pass


def audio(seconds: float) -> bytes:
    return bytes(int(seconds * FMT.rate) * FMT.frame_bytes)


def player(clock: FakeClock, sink: RecordingSink) -> ChannelPlayer:
    def progress(_: PlayerStats) -> None:
        pass

    return ChannelPlayer("dac2", sink, clock, TARGET, progress)


def still_silent(sink: RecordingSink, real_seconds: float = 0.3) -> bool:
    return not sink.wrote.wait(real_seconds)


def test_a_burst_that_already_holds_the_target_waits_for_the_target_latency() -> None:
    # the DMA reads a 93 ms ring at once, then moves at the card's rate: starting now would keep ~1 period
    clock = FakeClock()
    sink = RecordingSink(clock)
    p = player(clock, sink)
    try:
        clock.t = 1.0
        p.push(FMT, audio(0.093), depth_limit=len(audio(0.093)))
        assert still_silent(sink), "played before the stream had arrived for the target latency"
        clock.t = 1.0 + TARGET / 2
        p.push(FMT, audio(0.01), depth_limit=len(audio(0.093)))
        assert still_silent(sink), "a later chunk restarted nothing: the wait counts from the first bytes"
        clock.t = 1.0 + TARGET + 0.001
        assert sink.wrote.wait(5.0), "did not start once the target latency had passed"
        assert sink.writes[0][0] >= 1.0 + TARGET
    finally:
        p.close(drain=False)


def test_the_wait_is_capped_by_what_the_guests_ring_can_hold() -> None:
    # a ring shorter than the target: waiting the whole target would stall the card for nothing
    clock = FakeClock()
    sink = RecordingSink(clock)
    p = player(clock, sink)
    ring = audio(0.04)
    try:
        p.push(FMT, ring, depth_limit=len(ring))
        assert still_silent(sink)
        clock.t = len(ring) / BYTE_RATE + 0.001
        assert sink.wrote.wait(5.0), "waited for more than the ring can hold"
    finally:
        p.close(drain=False)


def test_after_running_dry_playback_restarts_a_target_latency_after_the_data_returns() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock)
    p = player(clock, sink)
    try:
        p.push(FMT, audio(TARGET), depth_limit=len(audio(0.5)))
        clock.t = TARGET
        deadline = time.monotonic() + 5.0
        while p.buffered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.buffered == 0, "the first burst did not play"
        time.sleep(0.1)  # the player finds its queue empty: the stream ran dry
        played = len(sink.writes)
        sink.wrote.clear()
        clock.t = 0.5
        p.push(FMT, audio(0.1), depth_limit=len(audio(0.5)))
        assert still_silent(sink), "restarted before the returning stream had arrived for the target latency"
        clock.t = 0.5 + TARGET
        assert sink.wrote.wait(5.0)
        assert len(sink.writes) > played
        assert p.stats.underruns == 1, "data back within a second of running dry is an underrun"
    finally:
        p.close(drain=False)
