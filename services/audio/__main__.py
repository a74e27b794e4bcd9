"""`python -m services.audio`: the remote ES1370 back end, playing through ALSA."""

from __future__ import annotations

import argparse
import os

from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from services.audio.service import AudioServicer
from services.audio.session import SessionConfig
from services.audio.sinks import SinkConfig
from services.common import server
from services.common.clock import Clock

DEFAULT_PORT = 50051


def build_parser() -> argparse.ArgumentParser:
    p = server.parser(
        "audio",
        DEFAULT_PORT,
        "Remote ES1370 sound card: receives a VM's sound card sessions from rdv shims and plays them.\n"
        "Extra environment defaults: RDV_SINK, RDV_ALSA_DEVICE, RDV_WAV_PATH, RDV_TARGET_LATENCY_MS.",
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
        help="who paces playback: the sound card (device) or our clock (null, file: and WAV sinks)",
    )
    p.add_argument(
        "--target-latency-ms",
        type=float,
        default=float(env("RDV_TARGET_LATENCY_MS", "60")),
        help="jitter buffer: audio held before playing starts",
    )
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests: faster than real time
    return p


def build(args: argparse.Namespace) -> server.ServiceParts:
    sink = SinkConfig(kind=args.sink, alsa_device=args.alsa_device, wav_path=args.wav_path, pace=args.pace)
    config = SessionConfig(sink=sink, clock=Clock(args.clock_scale), target_latency=args.target_latency_ms / 1000)
    info = server.service_info(
        "audio",
        args.listen,
        ["es1370", "coherence:backend", "coherence:mirrored", f"sink:{args.sink}"],
        {"alsa_device": args.alsa_device, "target_latency_ms": str(args.target_latency_ms)},
    )
    servicer = AudioServicer(config, info, server.open_gate(args))

    add = audio_pb2_grpc.add_AudioServiceServicer_to_server
    return server.ServiceParts.of(audio_pb2.DESCRIPTOR, "AudioService", add, servicer, info)


def main() -> None:
    server.main("audio", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
