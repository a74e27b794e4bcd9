"""`play`: the scripted guest plays a WAV through the shim's ES1370 to a remote audio service."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

from frontend_shim.audio_link import MODES, AudioLink
from frontend_shim.pcm import read_wav
from frontend_shim.scripted_audio import GuestError, ScriptedEs1370Driver, dac_for, expressible, new_guest
from services.common.clock import Clock


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="play a WAV from a scripted guest through a remote ES1370")
    p.add_argument("--wav", required=True, help="PCM WAV file: 8/16-bit, mono/stereo, a rate the ES1370 can make")
    p.add_argument("--audio", default=os.environ.get("RDV_AUDIO", "127.0.0.1:50051"), help="audio service HOST:PORT")
    p.add_argument("--mode", choices=sorted(MODES), default="mirrored", help="coherence mode (default mirrored)")
    p.add_argument("--dac", choices=["dac1", "dac2"], default="dac2", help="DAC to play on (DAC1: 4 rates only)")
    p.add_argument("--period-frames", type=int, default=1024)
    p.add_argument("--periods", type=int, default=4)
    p.add_argument("--access-timeout-ms", type=float, default=50.0, help="longest a register read may wait")
    p.add_argument("--vm", default="scripted-guest", help="name shown in the service's session list")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--status", action="store_true", help="print live progress on stderr")
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        fmt, pcm = read_wav(args.wav)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not expressible(fmt):
        print(f"error: an ES1370 cannot play {fmt} exactly", file=sys.stderr)
        return 2
    memory, irq = new_guest()
    clock = Clock(args.clock_scale)
    link = AudioLink(
        args.audio, args.mode, memory, irq, vm=args.vm, clock=clock, access_timeout=args.access_timeout_ms / 1000
    )
    try:
        link.start()
    except ConnectionError as exc:
        print(f"error: {exc} (is `python -m services.audio` running there?)", file=sys.stderr)
        return 1
    driver = ScriptedEs1370Driver(link, memory, irq, irq_timeout=max(2.0, 4 * args.period_frames / fmt.rate))
    stop_status = threading.Event()
    if args.status:
        threading.Thread(target=_status, args=(link, len(pcm), stop_status), daemon=True).start()
    error = None
    try:
        driver.probe()
        result = driver.play(
            pcm, fmt, dac=dac_for(fmt, args.dac), period_frames=args.period_frames, periods=args.periods
        )
    except (GuestError, ValueError) as exc:
        error, result = str(exc), None
    finally:
        link.close(drain=error is None)
        stop_status.set()
    if result is None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary = {
        "mode": args.mode,
        "format": str(fmt),
        "frames": result.frames,
        "periods": result.periods,
        "interrupts": result.interrupts,
        "accesses": result.accesses,
        "seconds": round(result.seconds, 3),
        **{k: v for k, v in link.stats.as_dict().items() if k != "interrupts"},
        "irq_raised": link.stats.interrupts,  # rising edges the device raised, even after the guest stopped
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"played {result.frames} frames ({fmt}) in {args.mode} mode in {result.seconds:.2f} s: "
            f"{result.interrupts} interrupts for {result.periods} periods, {result.accesses} register accesses, "
            f"{link.stats.bytes_to_backend} B to / {link.stats.bytes_from_backend} B from the audio service"
        )
    return 0


def _status(link: AudioLink, total: int, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        s = link.stats
        pct = 100 * s.pcm_bytes / total if total else 100
        print(
            f"\r{link.mode:9} {pct:5.1f}%  irq {s.interrupts:5}  to {s.bytes_to_backend / 1024:8.1f} KiB  "
            f"from {s.bytes_from_backend / 1024:8.1f} KiB  {'up' if link.connected else 'DOWN'}",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
