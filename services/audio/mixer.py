"""The service's own mixer (`--mix service`): every VM's playback summed into one output PCM.

Each session channel's player writes into a `MixerInput` (through `sinks/mixed.py`, an ordinary sink to the
player). The input converts the guest's format to the mixer's (16-bit stereo at `--mix-rate`): 8-bit and mono
exactly, another sample rate with soxr (libsoxr, resampling as a stream, so chunk boundaries leave no trace). One
mixer thread takes one period from every input, applies the VM's volume and mute, sums with saturation and writes
the result to one sink, paced by that sink (a sound card) or by the clock (`file:`, WAV, null).

The mixer's clock drives everything behind it: a write into an input blocks while the input holds
`buffer_seconds` of audio (`--mix-buffer-ms`), like a write into a full ALSA buffer, so each player's
`bytes_played` (and with it each guest's DMA credit) advances at the output device's rate. An input that has
nothing when its period is due contributes silence for what is missing and never holds the mix back; if its data
comes back within a second, that was an underrun, counted for that input's session only (a longer pause is the
guest stopping).

`log_path` (tests, debugging) writes one JSON line per run of frames an input contributed without a break:
`out`/`in` frame offsets (the output stream, the input's converted stream in its `segment`), `frames`, `gain`.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr

from services.audio.sinks.base import AudioSink, SinkError
from services.common import logs
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat

log = logs.get("audio.mixer")
PERIOD_SECONDS = 0.01
BUFFER_SECONDS = 0.04  # how much an input may hold ahead of the mix (its "device buffer"); 80 ms measured no
# fewer underruns in the 4-VM bench (20 against 21 in 300 s), so the lower latency stays the default
_UNDERRUN_GAP = 1.0  # seconds: an input dry for longer than this had paused (the guest stopped), not starved
SILENCE_DB = -120.0  # at or below: gain 0
RESAMPLE_QUALITY = "HQ"


def to_stereo16(data: bytes, fmt: PcmFormat) -> np.ndarray:
    """Whole frames of `fmt` as 16-bit stereo samples, shape (frames, 2); exact (8-bit: (x - 128) << 8)."""
    if fmt.bits == 8:
        samples = (np.frombuffer(data, np.uint8).astype(np.int16) - 128) << 8
    else:
        samples = np.frombuffer(data, "<i2").astype(np.int16)
    frames = samples.reshape(-1, fmt.channels)
    return np.repeat(frames, 2, axis=1) if fmt.channels == 1 else frames


def apply_gain(frames: np.ndarray, gain: float) -> np.ndarray:
    """int32 samples of `frames` at `gain` (exact at 1 and 0; otherwise rounded to the nearest integer)."""
    if gain == 1.0:
        return frames.astype(np.int32)
    return np.rint(frames.astype(np.float64) * gain).astype(np.int32)


def db_to_gain(db: float) -> float:
    return 0.0 if db <= SILENCE_DB else 10 ** (db / 20)


def gain_to_db(gain: float) -> float:
    return -math.inf if gain <= 0 else 20 * math.log10(gain)


@dataclass
class Volume:
    volume: float = 1.0
    mute: bool = False

    @property
    def gain(self) -> float:
        return 0.0 if self.mute else self.volume


class MixerInput:
    """One session channel's stream into the mix: converted on the writer's thread, taken by the mixer's."""

    def __init__(self, mixer: Mixer, session: str, vm: str, channel: str) -> None:
        self.mixer, self.session, self.vm, self.channel = mixer, session, vm, channel
        self.underruns = 0
        self.segment = -1  # one per format the input was opened with
        self.taken = 0  # frames of this segment the mixer took
        self._fmt: PcmFormat | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._partial = b""  # bytes of a frame split between two writes
        self._chunks: deque[np.ndarray] = deque()
        self._frames = 0
        self._started = False
        self._dry_at: float | None = None
        self._new_segment = False
        self.ending = False

    # ------------------------------------------------------------------ the writer's side (a player thread)
    def open(self, fmt: PcmFormat) -> None:
        self._finish_segment()
        with self.mixer.cond:
            self._fmt, self._partial, self._started = fmt, b"", False
            rate = self.mixer.rate
            self._resampler = (
                None
                if fmt.rate == rate
                else soxr.ResampleStream(fmt.rate, rate, 2, dtype="int16", quality=RESAMPLE_QUALITY)
            )
            self._new_segment = True

    def write(self, data: bytes) -> None:
        """Blocks while the input is full: the mixer's clock paces the writer."""
        fmt = self._fmt
        if fmt is None:
            raise SinkError("mixer input written before open")
        data = self._partial + data
        whole = len(data) - len(data) % fmt.frame_bytes
        self._partial = data[whole:]
        frames = to_stereo16(data[:whole], fmt)
        if self._resampler is not None:
            frames = self._resampler.resample_chunk(frames)
        self._put(frames)

    def close(self) -> None:
        """The writer is done: what the input holds still plays, then the mixer drops it."""
        self._finish_segment()
        with self.mixer.cond:
            self.ending = True
            self.mixer.cond.notify_all()

    def _finish_segment(self) -> None:
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros((0, 2), np.int16), last=True)
            self._resampler = None
            self._put(tail)

    def _put(self, frames: np.ndarray) -> None:
        mixer = self.mixer
        with mixer.cond:
            if self._new_segment:
                # the mixer takes the new format's frames from offset 0 of a new segment once the old ones are out
                self._chunks.append(_SEGMENT_MARK)
                self._new_segment = False
            while len(frames):
                # as much as there is room for, as soon as there is room: a chunk longer than the room (a guest
                # period of 93 ms at 11025 Hz against 40 ms) must not wait for the input to run dry first
                while self._frames >= mixer.capacity and not mixer.stopped:
                    mixer.cond.wait(0.5)
                room = max(1, mixer.capacity - self._frames)
                if self._dry_at is not None:
                    if mixer.clock.now() - self._dry_at < _UNDERRUN_GAP:
                        self.underruns += 1
                    self._dry_at = None
                chunk, frames = frames[:room], frames[room:]
                self._chunks.append(chunk)
                self._frames += len(chunk)
                self._started = True
                mixer.cond.notify_all()

    # ------------------------------------------------------------------ the mixer's side (caller holds the lock)
    def take(self, count: int) -> np.ndarray:
        """Up to `count` frames of the current segment (fewer when it runs dry or a new segment starts next)."""
        out: list[np.ndarray] = []
        want = count
        while want and self._chunks:
            head = self._chunks[0]
            if head is _SEGMENT_MARK:
                if out:
                    break  # the new segment starts with the next period
                self._chunks.popleft()
                self.segment += 1
                self.taken = 0
                continue
            part = head[:want]
            if len(part) == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[want:]
            out.append(part)
            want -= len(part)
            self._frames -= len(part)
        if want and self._started and not self.ending and self._dry_at is None:
            self._dry_at = self.mixer.clock.now()
        return np.concatenate(out) if out else _EMPTY

    @property
    def pending(self) -> int:
        """Frames the input holds for the mix."""
        return self._frames

    @property
    def done(self) -> bool:
        return self.ending and not self._chunks


_EMPTY = np.zeros((0, 2), np.int16)
_SEGMENT_MARK = np.zeros((0, 2), np.int16)


@dataclass
class _Run:
    segment: int
    out: int
    src: int
    frames: int
    gain: float


class Mixer:
    """Sums every input into `sink` (opened once, 16-bit stereo at `rate`) on its own thread."""

    def __init__(
        self,
        sink: AudioSink,
        rate: int,
        clock: Clock,
        log_path: str | None = None,
        buffer_seconds: float = BUFFER_SECONDS,
    ) -> None:
        self.sink = sink
        self.rate = rate
        self.clock = clock
        self.period = max(1, int(rate * PERIOD_SECONDS))
        self.capacity = max(2, round(buffer_seconds / PERIOD_SECONDS)) * self.period
        self.cond = threading.Condition()
        self.stopped = False
        self.frames_out = 0
        self.device_underruns = 0
        self.sink_errors = 0
        self._inputs: list[MixerInput] = []
        self._volumes: dict[str, Volume] = {}
        self._runs: dict[int, _Run] = {}
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 (closed in stop)
        self._sink_ok = self._open_sink()
        self._thread = threading.Thread(target=self._run, name="mixer", daemon=True)
        self._thread.start()

    @property
    def format(self) -> PcmFormat:
        return PcmFormat(self.rate, 2, 16)

    def input(self, session: str, vm: str, channel: str) -> MixerInput:
        inp = MixerInput(self, session, vm, channel)
        with self.cond:
            self._inputs.append(inp)
            self.cond.notify_all()
        return inp

    # ------------------------------------------------------------------ volume (any thread)
    def volume(self, vm: str) -> Volume:
        return self._volumes.get(vm, Volume())

    def set_volume(self, vm: str, volume: float | None = None, mute: bool | None = None) -> Volume:
        old = self.volume(vm)
        new = Volume(old.volume if volume is None else volume, old.mute if mute is None else mute)
        self._volumes[vm] = new  # one assignment: the mixer sees the old or the new, never half of it
        log.info("volume", extra={"vm": vm, "volume": new.volume, "mute": new.mute})
        return new

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self._thread.join(5.0)

    # ------------------------------------------------------------------ the mixer thread
    def _open_sink(self) -> bool:
        try:
            self.sink.open(self.format)
        except SinkError as exc:
            self.sink_errors += 1
            log.warning("mixer output refused its format", extra={"format": str(self.format), "error": str(exc)})
            return False
        log.info("mixer output opened", extra={"format": str(self.format)})
        return True

    def _run(self) -> None:
        try:
            while self._wait_for_inputs():
                start, mixed = self.clock.now(), 0
                while True:
                    with self.cond:
                        if self.stopped or not self._inputs:
                            break
                        parts = self._take()
                    self._write(self._sum(parts))
                    mixed += self.period
                    if not (self._sink_ok and self.sink.paces_itself):
                        self.clock.sleep(start + mixed / self.rate - self.clock.now())
        finally:
            with self.cond:
                for inp in self._inputs:
                    self._end_run(inp)
            self.sink.close()
            if self._log:
                self._log.close()

    def _wait_for_inputs(self) -> bool:
        with self.cond:
            while not self._inputs and not self.stopped:
                self.cond.wait()
            return not self.stopped

    def _take(self) -> list[tuple[np.ndarray, float]]:
        """One period from every input (caller holds the lock); inputs that ended and are empty leave."""
        parts = []
        for inp in list(self._inputs):
            frames = inp.take(self.period)
            gain = self.volume(inp.vm).gain
            if len(frames):
                self._note_run(inp, inp.taken, len(frames), gain)
                parts.append((frames, gain))
                inp.taken += len(frames)
            elif inp.done:
                self._end_run(inp)
                self._inputs.remove(inp)
                self._log_line({"vm": inp.vm, "session": inp.session, "channel": inp.channel, "end": True,
                                "underruns": inp.underruns})  # fmt: skip
            if len(frames) < self.period:
                self._end_run(inp)
        self.cond.notify_all()  # writers waiting for room
        return parts

    def _sum(self, parts: list[tuple[np.ndarray, float]]) -> bytes:
        acc = np.zeros((self.period, 2), np.int32)
        for frames, gain in parts:
            if gain:
                acc[: len(frames)] += apply_gain(frames, gain)
        return np.clip(acc, -32768, 32767).astype("<i2").tobytes()

    def _write(self, data: bytes) -> None:
        if self._sink_ok:
            before = self.sink.underruns
            try:
                self.sink.write(data)
            except SinkError as exc:
                self.sink_errors += 1
                log.warning("mixer output write failed", extra={"error": str(exc)})
            self.device_underruns += self.sink.underruns - before
        self.frames_out += self.period

    # ------------------------------------------------------------------ the mix log
    def _note_run(self, inp: MixerInput, first: int, frames: int, gain: float) -> None:
        if self._log is None:
            return
        run = self._runs.get(id(inp))
        out = self.frames_out
        if (
            run
            and run.segment == inp.segment
            and run.gain == gain
            and (run.out + run.frames, run.src + run.frames)
            == (
                out,
                first,
            )
        ):
            run.frames += frames
            return
        self._end_run(inp)
        self._runs[id(inp)] = _Run(inp.segment, out, first, frames, gain)

    def _end_run(self, inp: MixerInput) -> None:
        run = self._runs.pop(id(inp), None)
        if run is not None:
            self._log_line({"vm": inp.vm, "session": inp.session, "channel": inp.channel, "segment": run.segment,
                            "out": run.out, "in": run.src, "frames": run.frames, "gain": run.gain})  # fmt: skip

    def _log_line(self, record: dict) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
