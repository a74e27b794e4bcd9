"""`replay`: a real guest driver's recorded ES1370 traffic (a QEMU trace log), replayed through the shim."""

from __future__ import annotations

import argparse
import json
import sys

from frontend_shim.commands import options
from frontend_shim.guests.trace_replay import Replayer, ReplayReport, TraceError, load_trace

EXIT_MISMATCH = 3  # replayed, but some reads differed from QEMU's beyond the documented tolerance


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a QEMU trace of a real ES1370 driver through a remote ES1370",
        description="Replays the ES1370 accesses of a QEMU `-trace enable=memory_region_ops_* -msg timestamp=on` "
        "log (raw or .gz) at their recorded times through the shim, and compares every read with what QEMU "
        "returned. Exit status: 0 all reads as expected, 1 bad file or no service, 3 unexpected read mismatches.",
    )
    p.add_argument("--qemu-trace", required=True, metavar="FILE", help="QEMU trace log (raw or gzip)")
    options.audio(p)
    options.mode(p)
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="replay X times faster than recorded (run the audio service with the same --clock-scale)",
    )
    p.add_argument("--irq-wait-ms", type=float, default=500.0, help="longest the guest's handler waits for our IRQ")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        print("error: --speed must be positive", file=sys.stderr)
        return 1
    try:
        trace = load_trace(args.qemu_trace)
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        report = Replayer(trace, args.audio, args.mode, speed=args.speed, irq_wait=args.irq_wait_ms / 1000).run()
    except ConnectionError as exc:
        print(f"error: {exc} (is `python -m services.audio` running there?)", file=sys.stderr)
        return 1
    summary = report.as_dict()
    print(json.dumps(summary) if args.json else describe(report))
    return EXIT_MISMATCH if report.unexpected_mismatches else 0


def describe(report: ReplayReport) -> str:
    s = report.as_dict()
    lines = [
        f"replayed {s['accesses']} accesses ({s['reads']} reads, {s['writes']} writes) of {s['trace']} in "
        f"{s['mode']} mode in {s['seconds']:.2f} s (speed {s['speed']}x)",
        f"interrupts: {s['interrupts']} raised by our device, {s['trace_interrupts']} handled in the trace "
        f"({s['isr_waits']} handler entries waited for ours, longest {s['max_isr_wait_ms']:.1f} ms, "
        f"{s['isr_timeouts']} timed out)",
        f"reads unlike QEMU's: {s['unexpected_mismatches']} unexpected, {s['tolerated_mismatches']} position reads "
        f"within tolerance (largest difference {s['max_position_error_periods']} periods)",
        f"wire: {s['bytes_to_service']} B to the service ({s['bytes_to_service_per_s']:.0f} B/s), "
        f"{s['bytes_from_service']} B from it ({s['bytes_from_service_per_s']:.0f} B/s); "
        f"by kind to {s['wire_to_service']}, from {s['wire_from_service']}",
    ]
    if p := s["playing"]:
        lines.append(
            f"while playing ({p['seconds']:.2f} s): {p['bytes_to_service_per_s']:.0f} B/s to the service "
            f"({p['register_bytes_to_service_per_s']:.0f} B/s of it register traffic), "
            f"{p['bytes_from_service_per_s']:.0f} B/s from it ({p['register_bytes_from_service_per_s']:.0f} B/s)"
        )
    lines.append("accesses by register:")
    for name, counts in s["by_register"].items():  # type: ignore[union-attr]
        lines.append(f"  {name:18} {counts.get('reads', 0):6} reads {counts.get('writes', 0):6} writes")
    for m in s["mismatch_examples"]:  # type: ignore[union-attr]
        lines.append(f"  mismatch at {m['t']:.6f} s: {m['register']} QEMU {m['qemu']} ours {m['ours']}")
    return "\n".join(lines)
