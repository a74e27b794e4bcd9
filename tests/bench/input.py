"""Remote input latency on loopback: from a source producing an event to QEMU acknowledging its injection.

One key event at a time (the next is sent once QEMU returned from the previous `input-send-event`), so the
figures are the unloaded path: source -> input service -> shim's subscription -> QMP command -> QMP return.
Both ends read CLOCK_MONOTONIC on the same host. Real processes: the input service and QEMU 7.2 (TCG, no
trace) as subprocesses, the shim's forwarder in this process so it can timestamp QEMU's reply.

    .venv/bin/python -m tests.bench.input [--quick]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from frontend_shim.links.input_forward import InputForwarder
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common.input_publisher import InputPublisher
from tests.helpers import start_service
from tests.test_input_qemu import Qemu, wait_subscribed


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q))]) if ordered else float("nan")


def _record(metric: str, samples: list[int]) -> dict:
    return {"metric": metric, "mode": "-", "link": "loopback", "p50": _percentile(samples, 0.5),
            "p99": _percentile(samples, 0.99), "unit": "ns", "paper": None, "samples": len(samples)}  # fmt: skip


class _Acks:
    """Latency per event seq, filled in from the forwarder's loop thread."""

    def __init__(self) -> None:
        self.latency: dict[int, int] = {}
        self._cond = threading.Condition()

    def on_ack(self, command: list[input_pb2.InputEvent], acked_ns: int) -> None:
        with self._cond:
            for e in command:
                self.latency[e.seq] = acked_ns - e.timestamp_ns
            self._cond.notify_all()

    def wait(self, seq: int, timeout: float = 5.0) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: seq in self.latency, timeout):
                raise TimeoutError(f"event {seq} never reached QEMU")
            return self.latency[seq]


def _measure(count: int, send: Callable[[input_pb2.InputEvent], None], acks: _Acks, first_seq: int) -> list[int]:
    samples = []
    for i in range(count):
        e = ev.key("a", i % 2 == 0)
        e.seq = first_seq + i
        e.timestamp_ns = time.monotonic_ns()
        send(e)
        samples.append(acks.wait(e.seq))
    return samples[count // 10 :]  # the first tenth warms up connections and caches


def run(quick: bool, workdir: Path | None = None) -> list[dict]:
    if shutil.which("qemu-system-x86_64") is None:
        print("bench input: qemu-system-x86_64 not installed, skipped", file=sys.stderr)
        return []
    count = 300 if quick else 3000
    with tempfile.TemporaryDirectory(prefix="rdv-bench-input-") as tmp:
        base = Path(tmp)
        svc = start_service("input", workdir or base, env={"RDV_LOG_LEVEL": "warning"})
        qemu = Qemu(base, trace_input=False).start()
        acks = _Acks()
        forwarder = InputForwarder(svc.address, qemu.qmp(), "bench", on_ack=acks.on_ack)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_until_complete, args=(forwarder.run(),), daemon=True)
        thread.start()
        publisher = InputPublisher(svc.address, source="bench").start()
        channel = grpc.insecure_channel(svc.address)
        try:
            wait_subscribed(svc.address, "bench")
            stub = input_pb2_grpc.InputServiceStub(channel)
            publish = _measure(count, publisher.publish, acks, 1)
            inject = _measure(count, lambda e: stub.Inject(input_pb2.InjectRequest(events=[e]), timeout=5), acks,
                              10_000_000)  # fmt: skip
        finally:
            channel.close()
            publisher.close()
            loop.call_soon_threadsafe(forwarder.stop)
            thread.join(5)
            qemu.kill()
            svc.stop()
    return [_record("input_event", publish), _record("input_event_inject", inject)]


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(f"{r['metric']:20} p50 {r['p50'] / 1e3:8.1f} µs   p99 {r['p99'] / 1e3:8.1f} µs   ({r['samples']} events)")
