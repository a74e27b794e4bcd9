"""`python -m services.audio`: the remote ES1370 back end, playing through ALSA."""

from __future__ import annotations

import argparse
import os

from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from services.audio.service import AudioServicer
from services.audio.session import SessionConfig
from services.audio.sinks import SinkConfig
from services.audio.sources import SourceConfig, SourceError
from services.audio.sources.wav import read_format
from services.common import server
from services.common.clock import Clock

DEFAULT_PORT = 50051


def build_parser() -> argparse.ArgumentParser:
    p = server.parser(
        "audio",
        DEFAULT_PORT,
        "Remote ES1370 sound card: receives a VM's sound card sessions from rdv shims and plays them.\n"
        "Extra environment defaults: RDV_SINK, RDV_ALSA_DEVICE, RDV_WAV_PATH, RDV_TARGET_LATENCY_MS, RDV_SOURCE,\n"
        "RDV_CAPTURE_DEVICE, RDV_SOURCE_PATH, RDV_CAPTURE_LATENCY_MS.",
    )
    env = os.environ.get
    p.add_argument("--sink", choices=["alsa", "wav", "null"], default=env("RDV_SINK", "alsa"))
    p.add_argument(
        "--alsa-device",
        default=env("RDV_ALSA_DEVICE", "default"),
        help="ALSA PCM name (default, hw:0,0, null, file:FILE=/tmp/x.raw,FORMAT=raw); "
        "{session} and {channel} are replaced per stream",
    )
    p.add_argument("--wav-path", default=env("RDV_WAV_PATH", "rdv-{session}-{channel}.wav"), help="with --sink wav")
    p.add_argument(
        "--pace",
        choices=["auto", "clock", "device"],
        default="auto",
        help="who paces playback and capture: the sound card (device) or our clock (null, file:, WAV, tone)",
    )
    p.add_argument(
        "--target-latency-ms",
        type=float,
        default=float(env("RDV_TARGET_LATENCY_MS", "60")),
        help="jitter buffer: audio held before playing starts",
    )
    p.add_argument(
        "--source",
        choices=["alsa", "wav", "tone"],
        default=env("RDV_SOURCE", "alsa"),
        help="what the guest's ADC records: an ALSA capture device, a WAV file (its format is the one offered) "
        "or a test tone",
    )
    p.add_argument(
        "--capture-device",
        default=env("RDV_CAPTURE_DEVICE", "default"),
        help="ALSA capture PCM with --source alsa (default, hw:1,0, plug:hw:1,0, dsnoop to share one microphone)",
    )
    p.add_argument("--source-path", default=env("RDV_SOURCE_PATH", ""), help="the WAV file with --source wav")
    p.add_argument(
        "--capture-latency-ms",
        type=float,
        default=float(env("RDV_CAPTURE_LATENCY_MS", "40")),
        help="capture jitter buffer: recorded audio held before the guest's ring gets any",
    )
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests: faster than real time
    return p


def source_config(args: argparse.Namespace) -> SourceConfig:
    """The capture settings, checked now: a usage error names the setting instead of failing at the first capture."""
    if args.capture_latency_ms < 0:
        raise SystemExit("rdv audio: --capture-latency-ms must not be negative")
    if args.source == "wav":
        if not args.source_path:
            raise SystemExit("rdv audio: --source wav needs --source-path FILE")
        try:
            read_format(args.source_path)
        except SourceError as exc:
            raise SystemExit(f"rdv audio: {exc}") from exc
    return SourceConfig(
        kind=args.source,
        alsa_device=args.capture_device,
        path=args.source_path,
        pace=args.pace,
        latency=args.capture_latency_ms / 1000,
    )


def build(args: argparse.Namespace) -> server.ServiceParts:
    sink = SinkConfig(kind=args.sink, alsa_device=args.alsa_device, wav_path=args.wav_path, pace=args.pace)
    config = SessionConfig(
        sink=sink,
        clock=Clock(args.clock_scale),
        target_latency=args.target_latency_ms / 1000,
        source=source_config(args),
    )
    info = server.service_info(
        "audio",
        args.listen,
        ["es1370", "coherence:backend", "coherence:mirrored", f"sink:{args.sink}", f"source:{args.source}"],
        {
            "alsa_device": args.alsa_device,
            "target_latency_ms": str(args.target_latency_ms),
            "capture_latency_ms": str(args.capture_latency_ms),
        },
    )
    servicer = AudioServicer(config, info, server.open_gate(args))

    return server.ServiceParts(
        names=[audio_pb2.DESCRIPTOR.services_by_name["AudioService"].full_name],
        register=lambda grpc_server: audio_pb2_grpc.add_AudioServiceServicer_to_server(servicer, grpc_server),
        info=info,
    )


def main() -> None:
    server.main("audio", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
