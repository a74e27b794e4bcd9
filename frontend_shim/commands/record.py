"""`record`: the scripted guest records from the remote audio service's capture source through the shim's ES1370.

It drives the ADC as snd-ens1370's capture path does (prepare, start, per-period interrupt with acknowledgement
and position reads, stop) and writes a WAV of exactly what landed in its ring, in the format it asked for.
"""

from __future__ import annotations

import argparse
import json
import sys

from frontend_shim.commands import options
from frontend_shim.commands.play import PlayError, add_guest_options, guest_options, open_link
from frontend_shim.guests.pcm import write_wav
from frontend_shim.guests.scripted_audio import GuestError, ScriptedEs1370Driver
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2
from services.common import tls
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import PcmFormat


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record from the remote node's capture source with a scripted guest")
    p.add_argument("--out", required=True, help="WAV file to write: what landed in the guest's capture ring")
    options.audio(p)
    options.mode(p)
    p.add_argument("--rate", type=int, default=44100, help="Hz; the ADC records 1411200/(n+2) Hz (44100, 22050, …)")
    p.add_argument("--channels", type=int, default=2, choices=[1, 2])
    p.add_argument("--bits", type=int, default=16, choices=[8, 16])
    p.add_argument("--seconds", type=float, default=3.0, help="how long to record (rounded up to whole periods)")
    add_guest_options(p)
    p.set_defaults(run=run)


def adc_rate_error(rate: int) -> str | None:
    """Why the ADC cannot record at `rate`, or None when it can exactly."""
    divider = R.dac2_divider(rate) if rate > 0 else -1
    if 0 <= divider <= R.MAX_PCLKDIV and R.dac2_rate(divider) == rate:
        return None
    nearest = R.dac2_rate(min(max(divider, 0), R.MAX_PCLKDIV))
    return f"the ES1370's ADC records {R.PCLK_HZ}/(n+2) Hz, not {rate} Hz (nearest: {nearest} Hz)"


def source_mismatch(info: audio_pb2.CaptureSourceInfo, fmt: PcmFormat) -> str | None:
    """Why the service's source will not record `fmt` (a WAV source offers only its own format), or None."""
    if not info.rate:
        return None
    offered = PcmFormat(info.rate, info.channels, info.bits)
    if offered == fmt:
        return None
    return (
        f"the audio service records a WAV of {offered}; ask for that format (or run the service with "
        f"--source alsa and a plug: device, which converts)"
    )


def record(
    fmt: PcmFormat,
    seconds: float,
    *,
    audio: str,
    mode: str,
    period_frames: int = 1024,
    periods: int = 4,
    access_timeout: float = 0.05,
    vm: str = "scripted-guest",
    clock: Clock | None = None,
    tls_dir: str | None = None,
) -> tuple[bytes, dict]:
    """The scripted guest records `seconds` through a shim link to `audio`; returns (ring bytes, summary)."""
    if (why := adc_rate_error(fmt.rate)) is not None:
        raise PlayError(why)
    if seconds <= 0:
        raise PlayError("--seconds must be positive")
    link, memory, irq = open_link(audio, mode, access_timeout=access_timeout, vm=vm, clock=clock, tls_dir=tls_dir)
    if (why := source_mismatch(link.capture_info, fmt)) is not None:
        link.close(drain=False)
        raise PlayError(why)
    latency_s = link.capture_info.latency_ms / 1000
    driver = ScriptedEs1370Driver(link, memory, irq, irq_timeout=max(2.0, 4 * period_frames / fmt.rate + latency_s))
    try:
        driver.probe()
        result = driver.record(fmt, seconds, period_frames=period_frames, periods=periods)
    except (GuestError, ValueError) as exc:
        link.close(drain=False)
        raise PlayError(str(exc)) from exc
    link.close(drain=True)
    return result.captured, {
        "mode": mode,
        "format": str(fmt),
        "source": link.capture_info.kind,
        "frames": len(result.captured) // fmt.frame_bytes,
        "periods": result.periods,
        "interrupts": result.interrupts,
        "spurious": result.spurious,
        "accesses": result.accesses,
        "seconds": round(result.seconds, 3),
        **latency_figures(link),
        **{k: v for k, v in link.stats.as_dict().items() if k != "interrupts"},
    }


def latency_figures(link: AudioLink) -> dict[str, float]:
    samples = sorted(link.capture_latency_ns)
    if not samples:
        return {}
    return {
        "capture_latency_ms_p50": round(samples[len(samples) // 2] / 1e6, 2),
        "capture_latency_ms_p99": round(samples[min(len(samples) - 1, len(samples) * 99 // 100)] / 1e6, 2),
    }


def run(args: argparse.Namespace) -> int:
    fmt = PcmFormat(args.rate, args.channels, args.bits)
    try:
        captured, summary = record(fmt, args.seconds, **guest_options(args))
        write_wav(args.out, fmt, captured)
    except (OSError, ValueError, PlayError, tls.TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else describe(summary, args.out))
    return 0


def describe(s: dict, out: str) -> str:
    latency = f", capture latency p50 {s['capture_latency_ms_p50']} ms" if "capture_latency_ms_p50" in s else ""
    return (
        f"recorded {s['frames']} frames ({s['format']}, source {s['source']}) in {s['mode']} mode into {out} "
        f"in {s['seconds']:.2f} s: {s['interrupts']} interrupts for {s['periods']} periods{latency}"
    )
