"""The sink interface and the factory that picks an implementation from the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.devices.es1370 import PcmFormat


class SinkError(RuntimeError):
    """The sink cannot play this (device missing, format refused)."""


class AudioSink(Protocol):
    # True when write() blocks at the device's own rate (real sound hardware); otherwise the player paces.
    paces_itself: bool
    # Times the device ran dry under us (ALSA's xrun, -EPIPE, or a short write); 0 for sinks without a device.
    underruns: int

    def open(self, fmt: PcmFormat) -> None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkConfig:
    kind: str = "alsa"  # alsa, wav, null
    alsa_device: str = "default"  # any ALSA PCM name; {session} and {channel} are filled in
    wav_path: str = "rdv-{session}-{channel}.wav"
    pace: str = "auto"  # auto, clock, device

    def expand(self, template: str, session: str, channel: str) -> str:
        return template.replace("{session}", session).replace("{channel}", channel)


def make_sink(config: SinkConfig, session: str, channel: str) -> AudioSink:
    if config.kind == "alsa":
        from services.audio.sinks.alsa import AlsaSink

        sink: AudioSink = AlsaSink(config.expand(config.alsa_device, session, channel))
    elif config.kind == "wav":
        from services.audio.sinks.wav import WavSink

        sink = WavSink(config.expand(config.wav_path, session, channel))
    elif config.kind == "null":
        from services.audio.sinks.null import NullSink

        sink = NullSink()
    else:
        raise SinkError(f"unknown sink {config.kind!r} (alsa, wav, null)")
    if config.pace == "clock":
        sink.paces_itself = False
    elif config.pace == "device":
        sink.paces_itself = True
    return sink
