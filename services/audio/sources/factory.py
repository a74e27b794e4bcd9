"""The factory that picks a capture source implementation from the configuration (one file per implementation)."""

from __future__ import annotations

from services.audio.sinks.factory import apply_pace
from services.audio.sources.base import CaptureSource, SourceConfig, SourceError


def make_source(config: SourceConfig) -> CaptureSource:
    if config.kind == "alsa":
        from services.audio.sources.alsa import AlsaSource

        source: CaptureSource = AlsaSource(config.alsa_device)
    elif config.kind == "wav":
        from services.audio.sources.wav import WavSource

        source = WavSource(config.path)
    elif config.kind == "tone":
        from services.audio.sources.tone import ToneSource

        source = ToneSource()
    else:
        raise SourceError(f"unknown capture source {config.kind!r} (alsa, wav, tone)")
    apply_pace(source, config.pace)
    return source
