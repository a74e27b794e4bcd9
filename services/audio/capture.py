"""The capture clock: the remote microphone's recorder.

The remote microphone drives the guest's ADC the way the remote speaker drives its DACs: a `Recorder` thread reads
the source at the source's own rate (a sound card blocks; WAV, tone and ALSA's `null`/`file:` PCMs are paced with
the clock), and each chunk it delivers is what lets the ADC's DMA move. Nothing is invented while the source
works: when it fails (device unplugged, format refused) the recorder delivers silence at the clock's rate, so the
guest keeps its interrupts, and retries the source every `retry_seconds`.

What happens to the chunks then is services/devices/capture_pacing.py's business (the jitter buffer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.audio.sources import SourceConfig, SourceError, make_source
from services.audio.sources.base import CaptureSource, silence
from services.common import logs
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat

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
