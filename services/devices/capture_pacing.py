"""Capture pacing: the capture jitter buffer and the ADC's DMA rule, used wherever the ADC's DMA engine runs (the
shim in mirrored mode, the audio service in backend mode).

A `CaptureQueue` is the capture jitter buffer: it releases nothing until `latency` seconds of audio are in, then
releases audio at the format's rate, so chunks that arrive late or bunched (network, scheduling, a sound card's
large periods) still reach the ring steadily, `latency` behind the source. When the data runs out (an outage longer
than the buffer) it counts an underrun and fills up again before releasing more; it keeps at most `limit` seconds
(older audio is dropped and counted, like an ALSA capture overrun). With latency 0, audio is released as it
arrives. `adc_room` applies DMA pacing's one rule on top: a completed period holds the ADC until the guest
acknowledged its interrupt (for at most CAPTURE_HOLD_LIMIT), so capture interrupts are never coalesced either.
"""

from __future__ import annotations

from collections import deque

from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.dma import DmaCredit
from services.devices.es1370 import Es1370, PcmFormat


class CaptureQueue:
    """The capture jitter buffer in front of the ADC's DMA (see the module docstring)."""

    def __init__(self, clock: Clock, latency: float, limit: float = 2.0, quantum: float = 0.005) -> None:
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

    def unget(self, data: bytes, captured_ns: int) -> None:
        """Put what `take` returned back at the head (the DMA could not write it now)."""
        if data:
            self._chunks.appendleft((data, captured_ns))
            self._queued += len(data)
            self._released -= len(data)

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
# Far longer than playback's hold: holding costs nothing here (the jitter buffer keeps recording, up to its limit,
# then drops its oldest audio: an overrun the guest can see as a gap), while running on laps the ring under a
# guest that has not read it yet, and its position then lies by whole rings. A loaded guest reached over a
# network (backend mode: every acknowledgement and position read is a round trip) was seen taking 0.25 s here.
CAPTURE_HOLD_LIMIT = 2.0


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
