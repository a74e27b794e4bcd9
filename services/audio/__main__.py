"""`python -m services.audio`: the remote ES1370 back end, playing through ALSA."""

from __future__ import annotations

import argparse
import asyncio

from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from services.audio.mixer import Mixer
from services.audio.service import AudioServicer
from services.audio.session import SessionConfig
from services.audio.sinks import SinkConfig, make_sink
from services.audio.sources import SourceConfig, SourceError
from services.audio.sources.wav import read_format
from services.common import server, settings
from services.common.clock import Clock
from services.common.settings import Setting

DEFAULT_PORT = 50051


SETTINGS = [
    Setting("--sink", "alsa", "RDV_SINK", settings.choice("alsa", "wav", "null"),
            help="where the sound goes: alsa (a sound card), wav (files), null (discarded)"),
    Setting("--alsa-device", "default", "RDV_ALSA_DEVICE", metavar="PCM",
            help="ALSA PCM name (default, hw:0,0, pulse, null, file:FILE=/tmp/x.raw,FORMAT=raw); "
            "{session} and {channel} are replaced per stream"),
    Setting("--wav-path", "rdv-{session}-{channel}.wav", "RDV_WAV_PATH", metavar="FILE", help="with --sink wav"),
    Setting("--pace", "auto", None, settings.choice("auto", "clock", "device"),
            help="who paces playback and capture: the sound card (device) or our clock (null, file:, WAV, tone)"),
    Setting("--mix", "alsa", "RDV_MIX", settings.choice("alsa", "service"),
            help="several VMs at once: alsa = each VM's stream opens its own PCM on --alsa-device and ALSA mixes "
            "(dmix, the default on most systems; plug:dmix converts rates); service = rdv sums them into one PCM at "
            "--mix-rate, with per-VM volume and mute (SetVolume)"),
    Setting("--mix-rate", 48000, "RDV_MIX_RATE", settings.number(8000, 192000, integer=True), metavar="HZ",
            help="with --mix service: the output's sample rate (16-bit stereo); other rates are resampled (soxr)"),
    Setting("--mix-buffer-ms", 40.0, "RDV_MIX_BUFFER_MS", settings.number(20, 1000), metavar="MS",
            help="with --mix service: how much each VM's input may hold ahead of the mix (its device buffer); more "
            "rides out longer stalls of a busy host, adding that much latency"),
    Setting("--mix-log", "", None, hidden=True),  # tests: each run of frames a VM contributed to the mix (JSON lines)
    Setting("--target-latency-ms", 60.0, "RDV_TARGET_LATENCY_MS", settings.number(0, 10_000), metavar="MS",
            help="jitter buffer: audio held before playing starts"),
    Setting("--source", "alsa", "RDV_SOURCE", settings.choice("alsa", "wav", "tone"),
            help="what the guest's ADC records: an ALSA capture device, a WAV file (its format is the one offered) "
            "or a test tone"),
    Setting("--capture-device", "default", "RDV_CAPTURE_DEVICE", metavar="PCM",
            help="ALSA capture PCM with --source alsa (default, hw:1,0, plug:hw:1,0, dsnoop to share one microphone)"),
    Setting("--source-path", "", "RDV_SOURCE_PATH", metavar="FILE", help="the WAV file with --source wav"),
    Setting("--capture-latency-ms", 40.0, "RDV_CAPTURE_LATENCY_MS", settings.number(0, 10_000), metavar="MS",
            help="capture jitter buffer: recorded audio held before the guest's ring gets any"),
    Setting("--clock-scale", 1.0, None, settings.number(0.001, 1000), hidden=True),  # tests: faster than real time
]  # fmt: skip


def build_parser() -> settings.SettingsParser:
    return server.parser(
        "audio",
        DEFAULT_PORT,
        "Remote ES1370 sound card: receives a VM's sound card sessions from rdv shims and plays them.",
        SETTINGS,
    )


def source_config(args: argparse.Namespace) -> SourceConfig:
    """The capture settings, checked now: a usage error names the setting instead of failing at the first capture."""
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


def make_mixer(args: argparse.Namespace, sink: SinkConfig, clock: Clock) -> Mixer | None:
    """--mix service: the one mixer and its one output (checked now: a usage error names the setting)."""
    if args.mix != "service":
        return None
    template = {"alsa": ("--alsa-device", args.alsa_device), "wav": ("--wav-path", args.wav_path)}.get(args.sink)
    if template and ("{session}" in template[1] or "{channel}" in template[1]):
        flag = template[0]
        raise SystemExit(f"rdv audio: --mix service plays one stream: {flag} cannot use {{session}} or {{channel}}")
    return Mixer(make_sink(sink, "mix", "out"), args.mix_rate, clock, args.mix_log or None,
                 buffer_seconds=args.mix_buffer_ms / 1000)  # fmt: skip


def build(args: argparse.Namespace) -> server.ServiceParts:
    sink = SinkConfig(kind=args.sink, alsa_device=args.alsa_device, wav_path=args.wav_path, pace=args.pace)
    clock = Clock(args.clock_scale)
    source = source_config(args)
    mixer = make_mixer(args, sink, clock)
    config = SessionConfig(
        sink=sink,
        clock=clock,
        target_latency=args.target_latency_ms / 1000,
        source=source,
        mixer=mixer,
    )
    info = server.service_info(
        "audio",
        args.listen,
        [
            "es1370",
            "coherence:backend",
            "coherence:mirrored",
            f"sink:{args.sink}",
            f"source:{args.source}",
            f"mix:{args.mix}",
        ],
        {
            "alsa_device": args.alsa_device,
            "target_latency_ms": str(args.target_latency_ms),
            "capture_latency_ms": str(args.capture_latency_ms),
            **({"mix_rate": str(args.mix_rate)} if mixer else {}),
        },
    )
    servicer = AudioServicer(config, info, server.open_gate(args))

    add = audio_pb2_grpc.add_AudioServiceServicer_to_server

    async def stop_mixer() -> None:
        if mixer is not None:
            await asyncio.to_thread(mixer.stop)

    return server.ServiceParts.of(audio_pb2.DESCRIPTOR, "AudioService", add, servicer, info, stop_mixer)


def main() -> None:
    server.main("audio", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
