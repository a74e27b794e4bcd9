"""ES1370 figures of the paper's Table 2, measured through the real stream on loopback.

- register_read / register_write: the cost the guest's trapped access sees in the shim's handler. `local` is
  our model called directly (the paper's local card); `mirrored` answers reads from the shim's copy and posts
  writes; `backend` waits for the service's reply on every read.
- interrupt: from the device raising its line (in the service for backend mode, in the shim for mirrored) to
  the guest's handler thread running.
- audio_chunk: one chunk of PCM from guest memory to the service's model: one way when the shim pushes it
  (mirrored), the DMA request's round trip when the service has to ask (backend).
- capture_latency: the remote microphone, from the moment the service's source delivered a chunk to its first
  byte landing in the guest's capture ring (the scripted guest records a tone). It includes the capture jitter
  buffer (CAPTURE_LATENCY_MS, released at the sample rate) and the wait of a chunk behind the period the guest
  has not acknowledged yet; `capture_transport` is the same minus the jitter buffer.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from frontend_shim.commands.processes import start_service
from frontend_shim.guests.guest import EventLine, RamMemory
from frontend_shim.guests.pcm import melody
from frontend_shim.guests.scripted_audio import GUEST_RAM, ScriptedEs1370Driver
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370, PcmFormat
from tests.bench.netlinks import Link
from tests.bench.stats import record, resource_usage

CAPTURE_LATENCY_MS = 40  # the service's default capture jitter buffer

# The paper's Table 2 in ns: (local card, remote card 1 = backend, remote card 2 = mirrored).
PAPER = {
    "register_read": {"local": 60.4, "backend": 209_000, "mirrored": 1_000},
    "register_write": {"local": 51.3, "backend": 4_000, "mirrored": 1_000},
    "interrupt": {"local": 0.038, "backend": 17_000, "mirrored": 16_000},
    "audio_chunk": {"local": 5_000, "backend": 393_000, "mirrored": 377_000},
}


class TimedLine(EventLine):
    """An interrupt line that remembers when it was raised, so the guest can tell how long it took."""

    def __init__(self) -> None:
        super().__init__()
        self.raised_ns = 0

    def set_level(self, level: bool) -> None:
        if level and not self.level:
            self.raised_ns = time.monotonic_ns()
        super().set_level(level)


def _time_calls(fn, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append(time.perf_counter_ns() - t)
    return out


def run(quick: bool, workdir: Path, link: Link | None = None) -> list[dict]:
    link = link or Link("loopback", "127.0.0.1", None)
    n = 500 if quick else 5000
    seconds = 0.5 if quick else 3.0
    model = Es1370()
    results = []
    if link.name == "loopback":  # the local card has no link
        results += [
            record("register_read", "local", _time_calls(lambda: model.read(R.STATUS, 4), n), 60.4, link="none"),
            record(
                "register_write", "local", _time_calls(lambda: model.write(R.MEMPAGE, 4, 0xC), n), 51.3, link="none"
            ),
        ]
    svc = start_service(
        "audio", workdir / "logs", "--sink", "null", "--source", "tone",
        "--capture-latency-ms", str(CAPTURE_LATENCY_MS),
        listen=f"{link.remote_host}:0", prefix=link.prefix, env=link.env,
    )  # fmt: skip
    try:
        for mode in ("mirrored", "backend"):
            with resource_usage(f"audio {mode}", link.name, {"audio service": svc.proc.pid}) as usage:
                measured = _measure_mode(svc.address, mode, n, seconds)
            for r in measured:
                r["link"] = link.name
            results += measured + usage
    finally:
        svc.stop()
    return results


def _measure_mode(address: str, mode: str, n: int, seconds: float) -> list[dict]:
    memory, line = RamMemory(GUEST_RAM), TimedLine()
    link = AudioLink(address, mode, memory, line, access_timeout=1.0)
    link.start()
    for _ in range(200):  # warm the stream up
        link.io_read(0, R.STATUS, 4)
    reads = _time_calls(lambda: link.io_read(0, R.STATUS, 4), n)
    writes = _time_calls(lambda: link.io_write(0, R.MEMPAGE, 4, 0xC), n)
    irq_latency: list[float] = []

    class Guest(ScriptedEs1370Driver):
        def _interrupt(self, channels: tuple[int, ...]) -> tuple[bool, dict[int, int]]:
            woke = time.monotonic_ns()
            raised = link.last_interrupt_sent_ns if mode == "backend" else line.raised_ns
            irq_latency.append(woke - raised)
            return super()._interrupt(channels)

    fmt = PcmFormat(44100, 2, 16)
    pcm = melody(fmt, seconds)
    guest = Guest(link, memory, line)
    guest.probe()
    guest.play(pcm, fmt, period_frames=1024)
    irq_latency_playback = list(irq_latency)
    guest.record(fmt, seconds, period_frames=1024)
    capture = list(link.capture_latency_ns)
    with grpc.insecure_channel(address) as ch:
        (session,) = audio_pb2_grpc.AudioServiceStub(ch).ListSessions(common_pb2.ListSessionsRequest()).sessions
        counters = dict(session.counters)
    link.close()
    chunk = record("audio_chunk", mode, [], PAPER["audio_chunk"][mode], chunk_bytes=4096)
    chunk.update(
        p50=counters["audio_chunk_ns_p50"],
        p99=counters["audio_chunk_ns_p99"],
        samples=counters.get("pcm_bytes", 0) // 4096,
    )
    jitter = CAPTURE_LATENCY_MS * 1_000_000
    return [
        record("register_read", mode, reads, PAPER["register_read"][mode]),
        record("register_write", mode, writes, PAPER["register_write"][mode]),
        record("interrupt", mode, irq_latency_playback, PAPER["interrupt"][mode], path="link → scripted guest thread"),
        chunk,
        record("capture_latency", mode, capture, None, workload=f"jitter buffer {CAPTURE_LATENCY_MS} ms"),
        record("capture_transport", mode, [max(0, c - jitter) for c in capture], None, workload="minus the buffer"),
    ]
