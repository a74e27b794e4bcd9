"""The ADC side of one audio session on the service: when the guest records, record for it.

The session calls `update()` after every change of its model (in both modes the model sees the guest's writes):
the ADC starting, changing format or stopping starts, restarts or stops a `Recorder`. Recorded chunks arrive
on the event loop thread and go where the ADC's DMA engine runs:
- mirrored mode: to the shim as `CaptureData` (its model writes them into the ring, paced by its own queue);
  the shim reports each write as a `CaptureStep`, which `step()` replays on this copy;
- backend mode: into this session's `CaptureQueue`; `pump()` asks the shim to write them into the ring with a
  `DmaWrite`, one at a time, and `written()` moves the ADC (position, period interrupt) once the shim says the audio
  is in guest memory. So a position the guest reads never runs ahead of the audio, even when the shim must wait
  to write (vfio-user without shared RAM: QEMU serves no DMA_WRITE while it waits for a register read's reply).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rdv.audio.v1 import audio_pb2
from rdv.common.v1 import common_pb2
from services.audio.capture import Recorder
from services.audio.sources import SourceConfig
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.capture_pacing import CaptureQueue, adc_credit, adc_room
from services.devices.es1370 import Es1370, PcmFormat

MIRRORED = common_pb2.COHERENCE_MODE_MIRRORED


def replay_steps(model: Es1370, channel: int, nbytes: int, step: Callable[[int], object] | None = None) -> int:
    """Step `channel`'s DMA over `nbytes` the peer moved in one go (one window or several coalesced: windows
    only end at the peer's room, the ring's end or a period's end, so both copies take the same steps), each
    window through `step` (default: the model's own commit). Returns the bytes it could step: less than
    `nbytes` means the copies disagree about where the DMA is."""
    commit = step or (lambda window: model.dma_commit(channel, window))
    done = 0
    while done < nbytes:
        _, window = model.dma_window(channel, nbytes - done)
        if not window:
            break
        commit(window)
        done += window
    return done


@dataclass
class _PendingWrite:
    request_id: int
    addr: int
    data: bytes
    captured_ns: int


class SessionCapture:
    def __init__(
        self,
        model: Es1370,
        mode: int,
        source: SourceConfig,
        clock: Clock,
        send: Callable[[audio_pb2.BackendMessage], None],
        on_data: Callable[[], None],
        counters: Counter[str],
    ) -> None:
        self.model = model
        self.mode = mode
        self.source = source
        self.counters = counters
        self._clock = clock
        self._send = send
        self._on_data = on_data  # backend mode: the session pumps (and raises interrupts) when audio arrives
        self._loop = asyncio.get_running_loop()
        self._recorder: Recorder | None = None
        self._fmt: PcmFormat | None = None
        self._start_next = False
        self._queue = CaptureQueue(clock, source.latency)
        self._credit = adc_credit(clock)
        self._closed = False
        self._pending: _PendingWrite | None = None
        self._next_request = 1

    @property
    def recorder(self) -> Recorder | None:
        return self._recorder

    def update(self) -> None:
        """Follow the guest's ADC: start, restart or stop recording."""
        if self._closed:
            return
        fmt = self.model.channel_format(R.ADC) if self.model.channel_running(R.ADC) else None
        if fmt == self._fmt:
            return
        self._stop_recorder()
        self._fmt = fmt
        self._pending = None  # an answer to a write of the old capture is stale now
        if fmt is None:
            self._queue.stop()
            return
        self.counters["captures"] += 1
        self._queue.start(fmt)
        self._start_next = True

        def deliver(data: bytes, captured_ns: int) -> None:
            self._loop.call_soon_threadsafe(self._captured, recorder, data, captured_ns)

        recorder = Recorder(self.source, fmt, self._clock, deliver)
        self._recorder = recorder.start()

    def _captured(self, recorder: Recorder, data: bytes, captured_ns: int) -> None:
        """A recorded chunk, on the loop thread; chunks of a recorder already replaced are stale."""
        if self._closed or recorder is not self._recorder:
            return
        self.counters["capture_bytes"] += len(data)
        if self.mode == MIRRORED:
            msg = audio_pb2.CaptureData(channel=R.ADC, data=data, start=self._start_next, captured_ns=captured_ns)
            self._start_next = False
            self._send(audio_pb2.BackendMessage(capture=msg))
        else:
            self._queue.push(data, captured_ns)
            self._on_data()

    def pump(self) -> None:
        """Backend mode: ask the shim to write what the ADC may move now (one write in flight at a time)."""
        if self._pending is not None:
            return
        room = adc_room(self._credit, self.model, self._queue)
        addr, length = self.model.dma_window(R.ADC, room) if room else (0, 0)
        if not length:
            return
        data, captured_ns = self._queue.take(length)
        self._pending = _PendingWrite(self._next_request, addr, data, captured_ns)
        self._next_request += 1
        self.counters["dma_writes"] += 1
        msg = audio_pb2.DmaWrite(
            channel=R.ADC, addr=addr, data=data, captured_ns=captured_ns, request_id=self._pending.request_id
        )
        self._send(audio_pb2.BackendMessage(dma_write=msg))

    def written(self, ack: audio_pb2.DmaWritten) -> bool:
        """Backend mode: the shim's answer to our DmaWrite; True when the ADC moved (the caller then raises the
        interrupt a completed period set, and pumps again)."""
        p = self._pending
        if p is None or ack.request_id != p.request_id:
            self.counters["stale_dma"] += 1
            return False
        self._pending = None
        if not ack.ok:  # guest memory unreachable just now: the audio goes back, the pump tick retries
            self.counters["dma_failed"] += 1
            self._queue.unget(p.data, p.captured_ns)
            return False
        if self.model.dma_window(R.ADC, len(p.data)) != (p.addr, len(p.data)):
            self.counters["stale_dma"] += 1  # the guest moved or stopped the ADC meanwhile: that audio is gone
            return False
        self.model.dma_commit(R.ADC, len(p.data))
        self._credit.moved(R.ADC, len(p.data))
        return True

    def step(self, length: int) -> int:
        """Mirrored mode: the shim wrote `length` bytes into the ring; returns the bytes replayed here."""
        self.counters["capture_steps"] += 1
        return replay_steps(self.model, R.ADC, length)

    def stats(self) -> dict[str, int]:
        r = self._recorder
        return {
            "capture_overrun_bytes": self._queue.overrun_bytes,
            "capture_underruns": self._queue.underruns,
            "capture_source_errors": r.stats.source_errors if r else 0,
            "capture_silent_bytes": r.stats.silent_bytes if r else 0,
        }

    def _stop_recorder(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close(timeout=0)  # it stops at its next chunk; its late chunks are dropped as stale

    async def close(self) -> None:
        self._closed = True
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            await asyncio.to_thread(recorder.close)
