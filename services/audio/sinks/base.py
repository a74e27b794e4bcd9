"""The sink interface and its configuration (the factory that picks an implementation is `factory.py`)."""

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
