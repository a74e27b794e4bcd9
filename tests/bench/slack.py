"""The guest's slack: how long after the DMA finished a period (its interrupt follows at once) it takes that
period's ring slot again (a real card: (periods - 1) periods later), and the margin: how long after the guest's
refill of the slot, in both modes. A negative margin is a stale period played: an xrun.

Measured in the shim's process, where the guest lives, in guest memory: the DMA's reads of the ring and the
guest's writes into it, each with its time. `python -m tests.bench.slack [SECONDS]` prints the
figures (run it beside `stress-ng --cpu 2` to see them on a loaded host); `make bench` records them.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from frontend_shim.commands.processes import start_service
from frontend_shim.guests.guest import DmaLog, EventLine, RamMemory
from frontend_shim.guests.pcm import melody
from frontend_shim.guests.scripted_audio import BUFFER_ADDR, GUEST_RAM, ScriptedEs1370Driver
from frontend_shim.links.audio import AudioLink
from services.devices.es1370 import PcmFormat

FMT = PcmFormat(44100, 2, 16)
PERIOD_FRAMES, PERIODS = 1024, 4


class _TimedMemory(DmaLog):
    def __init__(self) -> None:
        super().__init__(RamMemory(GUEST_RAM))
        self.read_times: list[float] = []
        self.writes: list[tuple[float, int]] = []  # (time, address) of the guest's ring writes

    def read(self, addr: int, length: int) -> bytes:
        data = super().read(addr, length)
        self.read_times.append(time.monotonic())
        return data

    def write(self, addr: int, data: bytes) -> None:
        super().write(addr, data)
        self.writes.append((time.monotonic(), addr))


def measure(address: str, mode: str, seconds: float) -> dict:
    """One run; slack and margin per period in ms (none when the guest had an xrun: the ring started over)."""
    memory = _TimedMemory()
    link = AudioLink(address, mode, memory, EventLine(), access_timeout=2.0)
    link.start()
    driver = ScriptedEs1370Driver(link, memory, link.irq, clock=link.clock)  # type: ignore[arg-type]
    driver.probe()
    result = driver.play(melody(FMT, seconds), FMT, period_frames=PERIOD_FRAMES, periods=PERIODS)
    link.close()
    figures: dict = {"mode": mode, "xruns": result.xruns, "periods": result.periods}
    if result.xruns:
        return figures
    period = PERIOD_FRAMES * FMT.frame_bytes
    reads, offset = [], 0  # (stream offset where a read ends, its time)
    for (_addr, data), t in zip(memory.reads, memory.read_times, strict=True):
        offset += len(data)
        reads.append((offset, t))
    ring_writes = [t for t, addr in memory.writes if addr >= BUFFER_ADDR]  # the k-th writes period k of the stream

    def taken(stream_offset: int) -> float | None:
        """When the DMA read the byte at `stream_offset`."""
        return next((t for end, t in reads if end > stream_offset), None)

    slack, margin = [], []
    for n in range(result.periods - PERIODS):
        ended, again = taken((n + 1) * period - 1), taken((n + PERIODS) * period)
        if ended is None or again is None or n + PERIODS >= len(ring_writes):
            break
        slack.append((again - ended) * 1000)
        margin.append((again - ring_writes[n + PERIODS]) * 1000)
    figures.update(
        slack_ms=_summary(slack),
        margin_ms=_summary(margin),
        card_slack_ms=round((PERIODS - 1) * PERIOD_FRAMES / FMT.rate * 1000, 1),
    )
    return figures


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "p10": round(ordered[len(ordered) // 10], 2),
        "p50": round(statistics.median(ordered), 2),
        "n": len(ordered),
    }


def run(quick: bool, workdir: Path) -> list[dict]:
    seconds = 3.0 if quick else 15.0
    svc = start_service("audio", workdir / "slack-logs", "--sink", "null")
    try:
        runs = [measure(svc.address, mode, seconds) for mode in ("mirrored", "backend")]
    finally:
        svc.stop()
    out = []
    for r in runs:
        for metric in ("slack_ms", "margin_ms"):
            if metric in r:
                out.append({
                    "metric": f"guest_{metric[:-3]}", "mode": r["mode"], "link": "loopback", "p50": r[metric]["p50"],
                    "p99": r[metric]["min"], "unit": "ms", "paper": None,
                    "workload": f"{PERIODS}x{PERIOD_FRAMES} frames at 44.1 kHz: a card gives {r['card_slack_ms']} ms; "
                                "p99 column = minimum",
                })  # fmt: skip
    return out


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        service = start_service("audio", Path(tmp), "--sink", "null")
        try:
            for m in ("mirrored", "backend"):
                print(json.dumps(measure(service.address, m, secs)))
        finally:
            service.stop()
