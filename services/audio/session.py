"""One virtual sound card's session on the audio service.

All model work happens on the event loop thread, in stream order, so the model needs no lock. Player threads
report progress back onto the loop. In backend mode this session is the card: it answers reads, raises
interrupts and runs the DMA engine, fetching PCM from guest memory through the shim. In mirrored mode it
replays the shim's writes and DMA steps on its own copy, which must stay equal to the shim's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import grpc

from rdv.audio.v1 import audio_pb2
from rdv.common.v1 import common_pb2
from services.audio.capture_session import SessionCapture, replay_steps
from services.audio.mixer import Mixer
from services.audio.player import ChannelPlayer, PlayerStats
from services.audio.sinks import AudioSink, SinkConfig, make_sink
from services.audio.sinks.mixed import MixedSink
from services.audio.sources import SourceConfig
from services.common import logs, metrics
from services.common.clock import Clock
from services.common.sessions import BACKEND, MIRRORED, DeviceSession, SessionError
from services.devices import es1370_regs as R
from services.devices.dma import DmaCredit
from services.devices.es1370 import Es1370, Es1370State, PcmFormat
from services.devices.es1370_convert import state_to_proto

log = logs.get("audio.session")
MAX_PCM_CHUNK = 256 * 1024  # larger than any ES1370 buffer; bigger chunks are a broken or hostile peer
__all__ = ["BACKEND", "MIRRORED", "AudioSession", "SessionConfig", "SessionError"]


@dataclass(frozen=True)
class SessionConfig:
    sink: SinkConfig
    clock: Clock
    target_latency: float = 0.06
    lead_margin: float = 0.04
    source: SourceConfig = SourceConfig()  # what the ADC records
    mixer: Mixer | None = None  # --mix service: every session's players feed this one mixer

    @property
    def lead(self) -> float:
        return self.target_latency + self.lead_margin


@dataclass
class _PendingDma:
    request_id: int
    addr: int
    length: int
    fmt: PcmFormat  # the format the card took the bytes in
    sent_ns: int


class AudioSession(DeviceSession):
    device = "the ES1370"
    reply = audio_pb2.BackendMessage

    def __init__(
        self,
        session_id: str,
        vm: str,
        mode: int,
        state: Es1370State | None,
        config: SessionConfig,
        send: Callable[[audio_pb2.BackendMessage], None],
        peer: str,
    ) -> None:
        super().__init__(session_id, vm, mode, peer, send)
        self.config = config
        self.model = Es1370(state)
        self._loop = asyncio.get_running_loop()
        self._players: dict[int, ChannelPlayer] = {}
        self._credit = DmaCredit(config.clock, config.lead)
        self._pending: dict[int, _PendingDma] = {}
        self._next_request = 1
        self._irq = self.model.irq
        self._closed = False
        self._progress_due: set[int] = set()  # channels whose player progress waits on the loop
        # Recent PCM path latencies (ns): mirrored = chunk read at the shim -> applied here (one way);
        # backend = our DMA request -> the data applied here (the round trip this mode needs).
        self.audio_chunk_ns: deque[int] = deque(maxlen=4096)
        # Real time going wrong, seen from here: playback that starved, and (backend: our DMA; mirrored: the
        # shim's, which it reports) DMA that took ring bytes before the guest could have refilled them.
        self._shim_late = [0, 0, 0]
        self._seen = {"underruns": 0, "late_dma": 0}
        self._bursts = {
            "underruns": logs.Bursts(log, "playback underrun: the sink starved (repeats within 1 s not logged)"),
            "late_dma": logs.Bursts(log, "late DMA: the guest had not refilled its ring in time (its xrun)"),
        }
        self.capture = SessionCapture(self.model, mode, config.source, config.clock, send, self.pump, self.counters)
        self.capture.update()  # a resynced state may have the ADC running already

    def _chunk_latency(self, ns: int) -> None:
        self.audio_chunk_ns.append(ns)
        metrics.observe("audio_chunk", ns / 1e9)

    # ------------------------------------------------------------------ frontend messages
    def handle_device(self, kind: str, msg: audio_pb2.FrontendMessage) -> None:
        if kind == "pcm":
            self._pcm(msg.pcm)
        elif kind == "dma_data":
            self._dma_data(msg.dma_data)
        elif kind == "capture_step":
            self._capture_step(msg.capture_step)
        elif kind == "dma_written":
            if self.mode != BACKEND:
                raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "DMA writes are asked only in backend mode")
            if self.capture.written(msg.dma_written):
                self._after_change()
        elif kind == "resync":
            raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "resync is sent in `open` of a new session")
        else:
            super().handle_device(kind, msg)

    def barrier_ack(self, b: common_pb2.Barrier) -> audio_pb2.BarrierAck:
        received = [p.stats.bytes_received if (p := self._players.get(c)) else 0 for c in (R.DAC1, R.DAC2)]
        return audio_pb2.BarrierAck(
            seq=b.seq, sent_ns=b.sent_ns, state=state_to_proto(self.model.state), bytes_received=received
        )

    def read_register(self, offset: int, size: int) -> int:
        value = self.model.read(offset, size)
        channel = self.model.position_channel(offset)
        if channel is not None:
            self._credit.position_read(self.model, channel)
        return value

    def write_register(self, offset: int, size: int, value: int) -> None:
        self.model.write(offset, size, value)
        # Follow every write, not only a batch's end: a stop and a start in one batch are a restart.
        self._credit.follow(self.model)
        self.capture.update()

    def settle(self) -> None:
        self._after_change()

    def _pcm(self, p: audio_pb2.PcmChunk) -> None:
        if self.mode != MIRRORED:
            raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "PCM is pushed only in mirrored mode")
        if p.channel not in (R.DAC1, R.DAC2):
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"channel {p.channel} does not play")
        data = p.data
        if not 0 < len(data) <= MAX_PCM_CHUNK:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"PCM chunk of {len(data)} bytes")
        self._play(p.channel, data)
        if p.late_dma != self._shim_late[p.channel]:
            self._shim_late[p.channel] = p.late_dma
            self._check_realtime()
        if p.sent_ns:
            self._chunk_latency(time.monotonic_ns() - p.sent_ns)

    def _dma_data(self, d: audio_pb2.DmaData) -> None:
        """Backend mode: the shim read guest memory for our request. Only now has the card taken the bytes, so
        only now does its position move (a register read in between shows where the DMA really is: with DMA
        through messages the read may wait behind the guest's own register access, and a guest told the bytes
        were taken would refill them before they were read)."""
        channel = next((c for c, p in self._pending.items() if p.request_id == d.request_id), None)
        if channel is None:
            self.counters["stale_dma"] += 1
            return
        req = self._pending.pop(channel)
        if self.model.dma_window(channel, req.length) != (req.addr, req.length):
            self.counters["stale_dma"] += 1  # the guest stopped or moved the DAC meanwhile: the chip never took it
            self._after_change()
            return
        self._credit.commit(self.model, channel, req.length)
        if not d.ok or len(d.data) != req.length:
            # Guest memory was unreadable there (the VM went away, say): the card took the bytes and got nothing,
            # so nothing plays (the shim logs the outage once).
            self.counters["dma_failed"] += 1
            self._credit.lost(channel, req.length)
        else:
            self._push(channel, req.fmt, d.data)
            self._chunk_latency(time.monotonic_ns() - req.sent_ns)
        self._after_change()

    def _capture_step(self, step: audio_pb2.CaptureStep) -> None:
        if self.mode != MIRRORED:
            raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "capture steps come only in mirrored mode")
        if step.channel != R.ADC or not 0 < step.length <= MAX_PCM_CHUNK:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"capture step {step.length} B on {step.channel}")
        self._check_replayed(R.ADC, step.length, self.capture.step(step.length))
        self._after_change()

    def _check_replayed(self, channel: int, nbytes: int, done: int) -> None:
        if done < nbytes:
            # The copies disagree about where the DMA is; the shim reconnects and resyncs its full state.
            self.counters["coherence_errors"] += 1
            raise SessionError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"mirror diverged: {nbytes} bytes moved, but the DMA of channel {channel} stops after {done}",
            )

    def _play(self, channel: int, data: bytes) -> None:
        """Mirrored mode: replay the DMA steps that moved `data` (see `replay_steps`), then play it."""
        fmt = self.model.channel_format(channel)
        step = partial(self._credit.commit, self.model, channel)
        self._check_replayed(channel, len(data), replay_steps(self.model, channel, len(data), step))
        self._push(channel, fmt, data)
        self._after_change()

    def _push(self, channel: int, fmt: PcmFormat, data: bytes) -> None:
        """PCM the card took, to the channel's player."""
        self.counters["pcm_bytes"] += len(data)
        player = self._players.get(channel)
        if player is None:
            name = R.CHANNEL_NAMES[channel]
            player = ChannelPlayer(
                name,
                self._sink(name),
                self.config.clock,
                self.config.target_latency,
                partial(self._progress_soon, channel),
            )
            self._players[channel] = player
        player.push(fmt, data, self.model.buffer_bytes(channel))

    def _sink(self, channel: str) -> AudioSink:
        mixer = self.config.mixer
        if mixer is None:
            return make_sink(self.config.sink, self.session_id, channel)  # a PCM of its own (ALSA's dmix mixes)
        return MixedSink(mixer.input(self.session_id, self.vm, channel))

    # ------------------------------------------------------------------ device side effects
    def _after_change(self) -> None:
        self._sync_irq()  # first what the guest changed (an acknowledgement lowers the line) ...
        self.capture.update()
        if self.mode == BACKEND:
            self.pump()  # ... then what the DMA does next (a new period raises it again: a new edge)

    def _sync_irq(self) -> None:
        irq = self.model.irq
        if irq != self._irq:
            self._irq = irq
            if self.mode == BACKEND:
                self.counters["interrupts" if irq else "interrupt_clears"] += 1
                msg = audio_pb2.Interrupt(level=irq, status=self.model.state.status, sent_ns=time.monotonic_ns())
                self._send(audio_pb2.BackendMessage(interrupt=msg))

    def pump(self) -> None:
        """Backend mode: write what the ADC recorded into guest memory, and let the DMA of each running DAC take
        what it may now: one request per channel in flight. The position, a completed period and its interrupt
        follow when the shim's data arrives (`_dma_data`), so the guest never hears that the card took bytes it
        has not read yet, as on a real card."""
        if self.mode != BACKEND or self._closed:
            return
        self.capture.pump()
        for channel in (R.DAC1, R.DAC2):
            if channel in self._pending:
                continue
            room = self._credit.room(self.model, channel)
            addr, length = self.model.dma_window(channel, room) if room else (0, 0)
            if not length:
                continue
            fmt = self.model.channel_format(channel)
            req = _PendingDma(self._next_request, addr, length, fmt, time.monotonic_ns())
            self._next_request += 1
            self._pending[channel] = req
            self.counters["dma_requests"] += 1
            seg = audio_pb2.DmaSegment(addr=addr, length=length)
            msg = audio_pb2.DmaRequest(request_id=req.request_id, channel=channel, segments=[seg])
            self._send(audio_pb2.BackendMessage(dma_request=msg))
        self._sync_irq()

    def _progress_soon(self, channel: int, stats: PlayerStats) -> None:
        """A player thread wrote to its sink: one position report per channel waits on the loop at a time (the
        report reads the player's stats when it runs, so it carries all the progress made meanwhile). A busy loop
        with four VMs' players behind it then catches up on positions instead of sending every stale one."""
        if channel not in self._progress_due:
            self._progress_due.add(channel)
            self._loop.call_soon_threadsafe(self._progress, channel, stats)

    def _progress(self, channel: int, stats: PlayerStats) -> None:
        self._progress_due.discard(channel)  # before the stats are read: later progress schedules a new report
        if self._closed:
            return
        self._credit.played(channel, stats.bytes_played)
        pos = audio_pb2.Position(
            channel=channel,
            bytes_received=stats.bytes_received,
            bytes_played=stats.bytes_played,
            underruns=stats.underruns,
            late_dma=self._credit.late(channel) if self.mode == BACKEND else 0,
        )
        self._send(audio_pb2.BackendMessage(position=pos))
        self._check_realtime()
        self.pump()

    def late_dma(self) -> int:
        """DMA transfers that took ring bytes before the guest could have refilled them (the guest's xruns)."""
        if self.mode == BACKEND:
            return sum(self._credit.late(c) for c in (R.DAC1, R.DAC2))
        return sum(self._shim_late)

    def _check_realtime(self) -> None:
        """One warning line per burst of underruns or late DMA, not one per period."""
        now = {"underruns": self.playback_counters()["underruns"], "late_dma": self.late_dma()}
        for name, total in now.items():
            if total > self._seen[name]:
                self._seen[name] = total
                self._bursts[name].seen(time.monotonic(), session=self.session_id, vm=self.vm, **now)

    # ------------------------------------------------------------------ lifecycle
    def player_stats(self, channel: int) -> PlayerStats | None:
        player = self._players.get(channel)
        return player.stats if player else None

    def playback_counters(self) -> dict[str, int]:
        """Totals over this session's players: what reached the sink, and how often it starved."""
        stats = [p.stats for p in list(self._players.values())]
        return {
            "bytes_played": sum(s.bytes_played for s in stats),
            "underruns": sum(s.underruns for s in stats),
            "sink_errors": sum(s.sink_errors for s in stats),
            "late_dma": self.late_dma(),
        }

    def session_counters(self) -> dict[str, int]:
        return {
            **self.counters,
            **self.playback_counters(),
            **self.capture.stats(),
            **_percentiles("audio_chunk_ns", self.audio_chunk_ns),
        }

    async def close(self, drain: bool) -> None:
        """End the session; with `drain` the buffered audio is played out first."""
        self._closed = True
        await self.capture.close()
        players = list(self._players.values())
        self._players.clear()
        for p in players:
            p.close(drain, timeout=0)  # every thread is told before we wait for any
        for p in players:
            await asyncio.to_thread(p.close, drain)


def _percentiles(name: str, samples: Iterable[int]) -> dict[str, int]:
    ordered = sorted(samples)
    if not ordered:
        return {}
    return {
        f"{name}_p50": ordered[len(ordered) // 2],
        f"{name}_p99": ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
    }
