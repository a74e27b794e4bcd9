"""`play`: the scripted guest plays a WAV through the shim's ES1370 to a remote audio service."""

from __future__ import annotations

import argparse
import json
import sys
import threading

from frontend_shim.commands import options
from frontend_shim.guests.guest import EventLine, GuestMemory
from frontend_shim.guests.pcm import read_wav
from frontend_shim.guests.scripted_audio import GuestError, ScriptedEs1370Driver, dac_for, expressible, new_guest
from frontend_shim.links.audio import AudioLink
from services.common import tls
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="play a WAV from a scripted guest through a remote ES1370")
    p.add_argument("--wav", required=True, help="PCM WAV file: 8/16-bit, mono/stereo, a rate the ES1370 can make")
    options.audio(p)
    options.mode(p)
    p.add_argument("--dac", choices=["dac1", "dac2"], default="dac2", help="DAC to play on (DAC1: 4 rates only)")
    add_guest_options(p)
    p.add_argument("--status", action="store_true", help="print live progress on stderr")
    p.add_argument("--dma-log", help=argparse.SUPPRESS)  # tests: every DMA read of guest memory, to this file
    p.set_defaults(run=run)


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """The scripted sound card guest's options `play` and `record` share (read back by `guest_options`)."""
    p.add_argument("--period-frames", type=int, default=1024)
    p.add_argument("--periods", type=int, default=4)
    p.add_argument("--access-timeout-ms", type=float, default=50.0, help="longest a register read may wait")
    options.vm(p, "scripted-guest")
    options.tls_dir(p)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)


class PlayError(RuntimeError):
    pass


def play(
    pcm: bytes,
    fmt: PcmFormat,
    *,
    audio: str,
    mode: str,
    dac: str = "dac2",
    period_frames: int = 1024,
    periods: int = 4,
    access_timeout: float = 0.05,
    vm: str = "scripted-guest",
    clock: Clock | None = None,
    status: bool = False,
    tls_dir: str | None = None,
    dma_log: str | None = None,
) -> dict:
    """The scripted guest plays `pcm` through a shim link to `audio`; returns the summary."""
    if not expressible(fmt):
        raise PlayError(f"an ES1370 cannot play {fmt} exactly")
    link, memory, irq = open_link(
        audio, mode, access_timeout=access_timeout, vm=vm, clock=clock, tls_dir=tls_dir, record=dma_log is not None
    )
    driver = ScriptedEs1370Driver(link, memory, irq, irq_timeout=max(2.0, 4 * period_frames / fmt.rate), clock=clock)
    stop_status = threading.Event()
    reporter = threading.Thread(target=_status, args=(link, len(pcm), stop_status), daemon=True)
    if status:
        reporter.start()
    try:
        driver.probe()
        result = driver.play(pcm, fmt, dac=dac_for(fmt, dac), period_frames=period_frames, periods=periods)
    except (GuestError, ValueError) as exc:
        link.close(drain=False)
        raise PlayError(str(exc)) from exc
    finally:
        stop_status.set()
        if status:
            reporter.join()
    link.close(drain=True)
    if dma_log is not None:
        memory.save(dma_log)  # type: ignore[attr-defined]
    return {
        "mode": mode,
        "format": str(fmt),
        "frames": result.frames,
        "periods": result.periods,
        "interrupts": result.interrupts,
        "xruns": result.xruns,
        "accesses": result.accesses,
        "seconds": round(result.seconds, 3),
        **{k: v for k, v in link.stats.as_dict().items() if k != "interrupts"},
        "irq_raised": link.stats.interrupts,  # rising edges the device raised, even after the guest stopped
    }


def open_link(
    audio: str,
    mode: str,
    *,
    access_timeout: float,
    vm: str,
    clock: Clock | None,
    tls_dir: str | None,
    record: bool = False,
) -> tuple[AudioLink, GuestMemory, EventLine]:
    """A scripted guest's RAM and interrupt line (`record`: RAM that logs every DMA read), and the shim's ES1370
    link to `audio`, connected."""
    memory, irq = new_guest(record=record)
    credentials = tls.channel_credentials(tls_dir) if tls_dir else None
    link = AudioLink(
        audio, mode, memory, irq, vm=vm, clock=clock, access_timeout=access_timeout, credentials=credentials
    )
    try:
        link.start()
    except ConnectionError as exc:
        raise PlayError(f"{exc} (is `python -m services.audio` running there?)") from exc
    return link, memory, irq


def guest_options(args: argparse.Namespace) -> dict:
    """The scripted guest's settings `play` and `record` share, from their command lines."""
    return {
        "audio": args.audio,
        "mode": args.mode,
        "period_frames": args.period_frames,
        "periods": args.periods,
        "access_timeout": args.access_timeout_ms / 1000,
        "vm": options.vm_name(args),
        "clock": Clock(args.clock_scale),
        "tls_dir": args.tls_dir,
    }


def run(args: argparse.Namespace) -> int:
    try:
        fmt, pcm = read_wav(args.wav)
        summary = play(
            pcm,
            fmt,
            dac=args.dac,
            status=args.status,
            dma_log=args.dma_log,
            **guest_options(args),
        )
    except (OSError, ValueError, PlayError, tls.TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else describe(summary))
    return 0


def describe(s: dict) -> str:
    return (
        f"played {s['frames']} frames ({s['format']}) in {s['mode']} mode in {s['seconds']:.2f} s: "
        f"{s['interrupts']} interrupts for {s['periods']} periods, {s['accesses']} register accesses, "
        f"{s['bytes_to_service']} B to / {s['bytes_from_service']} B from the audio service; "
        f"{s['xruns']} xruns in the guest, {s['late_dma']} late DMA, {s['underruns']} underruns at the service"
    )


def _status(link: AudioLink, total: int, stop: threading.Event) -> None:
    """A live line on stderr: rewritten in place on a terminal, one line per update otherwise."""
    tty = sys.stderr.isatty()
    while True:
        stopped = stop.wait(0.5)
        s = link.stats
        pct = min(100.0, 100 * s.pcm_bytes / total) if total else 100.0
        line = (
            f"{link.mode:9} {pct:5.1f}%  irq {s.interrupts:5}  to {s.bytes_to_service / 1024:8.1f} KiB  "
            f"from {s.bytes_from_service / 1024:8.1f} KiB  {'up' if link.connected else 'DOWN'}"
        )
        print(f"\r{line}" if tty else line, end="" if tty and not stopped else "\n", file=sys.stderr, flush=True)
        if stopped:
            return
