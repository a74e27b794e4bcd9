"""One channel's playback on the remote node: a jitter buffer in front of a sink, paced in real time.

The session thread pushes PCM; a player thread writes it to the sink. Sinks that do not block on their own
(`null`, ALSA's `file:`, WAV files) are paced with the clock, so positions reported back to the shim mean the
same thing whatever the sink. Nothing is ever invented: an underrun waits for data instead of writing silence,
which keeps the output byte-identical to what the guest played.

The jitter buffer is made by starting late, not by holding bytes: playback (re)starts `target_latency` after the
stream's first bytes arrived (and once that much is buffered). A DMA that starts reads the guest's whole ring at
once, but from then on it moves at the card's rate and at most one period ahead of it (the slack rule in
`services.devices.dma`), so a player that started as soon as that first burst held its target would be left,
a ring later, with about one period of audio in hand: 23 ms at 44.1 kHz with 1024-frame periods, which the
first stall of a busy host empties. Started `target_latency` after the first bytes, it keeps that much.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from services.audio.sinks import AudioSink, SinkError
from services.common import logs
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat

log = logs.get("audio.player")
_UNDERRUN_GAP = 1.0  # seconds: a pause longer than this is the guest stopping, not the network starving us


@dataclass
class PlayerStats:
    bytes_received: int = 0
    bytes_played: int = 0
    underruns: int = 0  # the jitter buffer ran empty mid-stream, or the sink's device ran dry
    sink_errors: int = 0


class ChannelPlayer:
    def __init__(
        self,
        name: str,
        sink: AudioSink,
        clock: Clock,
        target_latency: float,
        on_progress: Callable[[PlayerStats], None],
        chunk_seconds: float = 0.01,
    ) -> None:
        self.name = name
        self.stats = PlayerStats()
        self._sink = sink
        self._clock = clock
        self._target = target_latency
        self._chunk_seconds = chunk_seconds
        self._on_progress = on_progress
        self._queue: deque[tuple[PcmFormat, bytes]] = deque()
        self._buffered = 0
        self._depth_limit: int | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._arrived_at = 0.0  # when the queue last went from empty to holding audio
        self._thread = threading.Thread(target=self._run, name=f"player-{name}", daemon=True)
        self._thread.start()

    def push(self, fmt: PcmFormat, data: bytes, depth_limit: int | None = None) -> None:
        """Queue PCM; `depth_limit` is the most the DMA lets the buffer hold (the guest's ring), so the player
        does not wait for a target latency it can never reach."""
        with self._cond:
            self._depth_limit = depth_limit
            if not self._queue:
                self._arrived_at = self._clock.now()
            self._queue.append((fmt, data))
            self._buffered += len(data)
            self.stats.bytes_received += len(data)
            self._cond.notify()

    @property
    def buffered(self) -> int:
        return self._buffered

    def close(self, drain: bool = True, timeout: float = 5.0) -> None:
        """Stop the thread; with `drain`, what is buffered is played first."""
        with self._cond:
            self._closing = True
            if not drain:
                self._queue.clear()
                self._buffered = 0
            self._cond.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ player thread
    def _take(self, max_bytes: int) -> tuple[PcmFormat, bytes] | None:
        """Up to `max_bytes` of one format from the head of the queue (caller holds the lock)."""
        fmt, data = self._queue[0]
        if len(data) <= max_bytes:
            self._queue.popleft()
        else:
            self._queue[0] = (fmt, data[max_bytes:])
            data = data[:max_bytes]
        self._buffered -= len(data)
        return fmt, data

    def _wait_for_prebuffer(self, dry_at: float | None) -> bool:
        """Block until the stream has arrived for a target latency and that much is buffered (or it stops
        growing). Both are capped at what the DMA lets the buffer hold."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return False
            if dry_at is not None and self._clock.now() - dry_at < _UNDERRUN_GAP:
                self.stats.underruns += 1  # data came back soon: the stream starved, it had not ended
            fmt = self._queue[0][0]
            want = int(self._target * fmt.rate) * fmt.frame_bytes
            if self._depth_limit:
                want = min(want, self._depth_limit)
            start_at = self._arrived_at + want / (fmt.rate * fmt.frame_bytes)
            while not self._closing:
                if self._buffered < want:
                    before = self._buffered
                    self._cond.wait(self._clock.real_seconds(self._target))
                    if self._buffered == before:
                        break  # the stream paused or ended: play what there is
                elif (early := start_at - self._clock.now()) > 0:
                    self._cond.wait(self._clock.real_seconds(early))
                else:
                    break
            return True

    def _run(self) -> None:
        fmt_open: PcmFormat | None = None
        sink_ok = False
        dry_at: float | None = None
        try:
            while self._wait_for_prebuffer(dry_at):
                start = self._clock.now()
                played_since_start = 0.0
                while True:
                    with self._cond:
                        if not self._queue and _sink_holds_audio(self._sink) and not self._closing:
                            # the sink plays what it holds meanwhile (the service mixer's input, --mix-buffer-ms):
                            # an empty queue is no starvation yet, and waiting for a new prebuffer would make it one
                            self._cond.wait(self._clock.real_seconds(self._chunk_seconds))
                            continue
                        if not self._queue:
                            dry_at = self._clock.now()
                            break
                        fmt = self._queue[0][0]
                        chunk = max(fmt.frame_bytes, int(self._chunk_seconds * fmt.rate) * fmt.frame_bytes)
                        fmt, data = self._take(chunk)
                    if fmt != fmt_open:
                        fmt_open, sink_ok = fmt, self._reopen(fmt)
                    if sink_ok:
                        xruns = self._sink.underruns
                        try:
                            self._sink.write(data)
                        except SinkError as exc:
                            self.stats.sink_errors += 1
                            log.warning("sink write failed", extra={"channel": self.name, "error": str(exc)})
                        self.stats.underruns += self._sink.underruns - xruns
                    played_since_start += len(data) / (fmt.rate * fmt.frame_bytes)
                    if not self._sink.paces_itself:
                        self._clock.sleep(start + played_since_start - self._clock.now())
                    self.stats.bytes_played += len(data)
                    self._on_progress(self.stats)
                if self._closing and not self._queue:
                    break
        finally:
            self._sink.close()

    def _reopen(self, fmt: PcmFormat) -> bool:
        try:
            self._sink.open(fmt)
        except SinkError as exc:
            self.stats.sink_errors += 1
            log.warning("sink refused format", extra={"channel": self.name, "error": str(exc)})
            return False
        log.info("sink opened", extra={"channel": self.name, "format": str(fmt)})
        return True


def _sink_holds_audio(sink: AudioSink) -> bool:
    """A sink that buffers ahead of its output (`MixedSink`) still has audio to play."""
    holds = getattr(sink, "holds_audio", None)
    return bool(holds and holds())
