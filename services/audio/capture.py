"""Capture pacing: the capture clock and the capture jitter buffer.

The remote microphone drives the guest's ADC the way the remote speaker drives its DACs: a `Recorder` thread reads
the source at the source's own rate (a sound card blocks; WAV, tone and ALSA's `null`/`file:` PCMs are paced with
the clock), and each chunk it delivers is what lets the ADC's DMA move. Nothing is invented while the source
works: when it fails (device unplugged, format refused) the recorder delivers silence at the clock's rate, so the
guest keeps its interrupts, and retries the source every `retry_seconds`.

Where the ADC's DMA engine runs (the shim in mirrored mode, the service in backend mode), a `CaptureQueue` is the
capture jitter buffer: it releases nothing until `latency` seconds of audio are in, then releases audio at the
format's rate, so chunks that arrive late or bunched (network, scheduling, a sound card's large periods) still
reach the ring steadily, `latency` behind the source. When the data runs out (an outage longer than the buffer)
it counts an underrun and fills up again before releasing more; it keeps at most `limit` seconds (older audio
is dropped and counted, like an ALSA capture overrun). With latency 0, audio is released as it arrives.
`adc_room` applies DMA pacing's one rule on top: a completed period holds the ADC until the guest acknowledged
its interrupt (for at most CAPTURE_HOLD_LIMIT), so capture interrupts are never coalesced either.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.audio.dma import DmaCredit
from services.audio.sources import SourceConfig, SourceError, make_source
from services.audio.sources.base import CaptureSource, silence
from services.common import logs
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370, PcmFormat

log = logs.get("audio.capture")


@dataclass
class RecorderStats:
    bytes_captured: int = 0  # delivered to the session, silence included
    silent_bytes: int = 0  # silence delivered because the source failed
    source_errors: int = 0


class Recorder:
    """One capture in one format: a thread reading the source, each chunk handed to `on_data(data, captured_ns)`."""

    def __init__(
        self,
        config: SourceConfig,
        fmt: PcmFormat,
        clock: Clock,
        on_data: Callable[[bytes, int], None],
        *,
        chunk_seconds: float = 0.01,
        retry_seconds: float = 1.0,
    ) -> None:
        self.config = config
        self.fmt = fmt
        self.stats = RecorderStats()
        self._clock = clock
        self._on_data = on_data
        self._chunk = max(1, int(chunk_seconds * fmt.rate)) * fmt.frame_bytes
        self._retry = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ recorder thread
    def _open(self) -> CaptureSource | None:
        source: CaptureSource | None = None
        try:
            source = make_source(self.config)
            source.open(self.fmt)
        except SourceError as exc:
            self._failed(exc)
            if source is not None:
                source.close()
            return None
        log.info("capture source open", extra={"source": self.config.kind, "format": str(self.fmt)})
        return source

    def _failed(self, exc: SourceError) -> None:
        self.stats.source_errors += 1
        if self.stats.source_errors == 1:
            log.warning("capture source failed: recording silence (repeats at debug level)", extra={"error": str(exc)})
        else:
            log.debug("capture source still failing", extra={"error": str(exc)})

    def _run(self) -> None:
        byte_rate = self.fmt.rate * self.fmt.frame_bytes
        source = self._open()
        retry_at = self._clock.now() + self._retry
        anchor, produced = self._clock.now(), 0  # the clock's timeline for unpaced delivery
        paced = bool(source and source.paces_itself)
        try:
            while not self._stop.is_set():
                if source is None and self._clock.now() >= retry_at:
                    source = self._open()
                    retry_at = self._clock.now() + self._retry
                data = b""
                if source is not None:
                    try:
                        data = source.read(self._chunk)
                    except SourceError as exc:
                        self._failed(exc)
                        source.close()
                        source, retry_at = None, self._clock.now() + self._retry
                if source is None:
                    data = silence(self.fmt, self._chunk)
                    self.stats.silent_bytes += len(data)
                now_paced = bool(source and source.paces_itself)
                if now_paced != paced:  # switched between device and clock pacing: a new timeline
                    paced, anchor, produced = now_paced, self._clock.now(), 0
                if not paced:  # deliver a chunk when its last sample would have been recorded
                    self._clock.sleep(anchor + (produced + len(data)) / byte_rate - self._clock.now())
                produced += len(data)
                if data and not self._stop.is_set():
                    self.stats.bytes_captured += len(data)
                    self._on_data(data, time.monotonic_ns())
        finally:
            if source is not None:
                source.close()


class CaptureQueue:
    """The capture jitter buffer in front of the ADC's DMA (see the module docstring)."""

    def __init__(self, clock: Clock, latency: float, limit: float = 1.0, quantum: float = 0.005) -> None:
        self.clock = clock
        self.latency = latency
        self.limit = limit
        self.quantum = quantum  # released in steps of this many seconds: no DMA write of a few bytes
        self.fmt: PcmFormat | None = None
        self.overrun_bytes = 0
        self.underruns = 0
        self._chunks: deque[tuple[bytes, int]] = deque()  # (data, captured_ns)
        self._queued = 0
        self._ready = False
        self._release_start = 0.0  # clock time the current release run began
        self._released = 0  # bytes taken in the current release run

    def start(self, fmt: PcmFormat) -> None:
        """A new capture: forget everything queued."""
        self.fmt = fmt
        self._chunks.clear()
        self._queued, self._ready = 0, False

    def stop(self) -> None:
        self.fmt = None
        self._chunks.clear()
        self._queued, self._ready = 0, False

    def push(self, data: bytes, captured_ns: int) -> None:
        fmt = self.fmt
        if fmt is None:
            return
        self._chunks.append((data, captured_ns))
        self._queued += len(data)
        byte_rate = fmt.rate * fmt.frame_bytes
        excess = self._queued - int(max(self.limit, 2 * self.latency) * fmt.rate) * fmt.frame_bytes
        if excess > 0:  # the guest is not taking it: drop the oldest, whole frames
            excess += -excess % fmt.frame_bytes
            self.overrun_bytes += len(self._pop(excess)[0])
        if not self._ready and self._queued >= self.latency * byte_rate:
            self._ready, self._release_start, self._released = True, self.clock.now(), 0

    @property
    def available(self) -> int:
        """Bytes the release clock lets the ADC have now."""
        fmt = self.fmt
        if not self._ready or fmt is None:
            return 0
        if self.latency <= 0:
            return self._queued
        step = max(1, int(self.quantum * fmt.rate))
        due = int((self.clock.now() - self._release_start) * fmt.rate) // step * step * fmt.frame_bytes
        due -= self._released
        if due > self._queued:  # the release clock ran past the data: refill before releasing more
            if self._queued == 0:
                self.underruns += 1
                self._ready = False
            return self._queued
        return max(0, due)

    def take(self, nbytes: int) -> tuple[bytes, int]:
        """Up to `nbytes` of the oldest audio and the capture time of its first chunk."""
        data, first_ns = self._pop(nbytes)
        self._released += len(data)
        return data, first_ns

    def _pop(self, nbytes: int) -> tuple[bytes, int]:
        out, first_ns = bytearray(), 0
        while self._chunks and len(out) < nbytes:
            data, ns = self._chunks[0]
            first_ns = first_ns or ns
            want = nbytes - len(out)
            if len(data) <= want:
                self._chunks.popleft()
                out += data
            else:
                self._chunks[0] = (data[want:], ns)
                out += data[:want]
        self._queued -= len(out)
        return bytes(out), first_ns


# A completed capture period holds the ADC until the guest acknowledges it, for at most this long (device seconds).
# Longer than playback's hold: holding costs nothing here (the jitter buffer keeps recording, up to its limit),
# while running on overwrites periods the guest has not read yet, and a loaded guest reached over a network
# (backend mode: every acknowledgement is a round trip) easily takes longer than playback's 50 ms.
CAPTURE_HOLD_LIMIT = 0.5


def adc_credit(clock: Clock) -> DmaCredit:
    """The ADC's DMA credit: lead 0 (nothing moves before it was recorded), the capture hold limit."""
    return DmaCredit(clock, lead=0.0, hold_limit=CAPTURE_HOLD_LIMIT)


def adc_room(credit: DmaCredit, model: Es1370, queue: CaptureQueue) -> int:
    """Bytes the ADC may write into the ring now: what the jitter buffer releases, at most one pacing chunk, and
    nothing while a completed period waits for the guest's acknowledgement. `credit` comes from `adc_credit`
    (lead 0), so its room is exactly what was released and has not moved yet."""
    moved, _ = credit.totals(R.ADC)
    credit.played(R.ADC, moved + queue.available)
    # Also held while the guest has R1 INT_EN cleared: that is the middle of its acknowledgement (clear, then set
    # again). A period completed in that gap would raise no interrupt, and the guest would lose it without
    # knowing. A driver that records without interrupts waits the hold limit once.
    acking = not model.state.serial_control & R.SCTRL_R1INTEN
    return credit.room(model, R.ADC, hold=acking or model.interrupt_pending(R.ADC))
