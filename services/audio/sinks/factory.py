"""The factory that picks a sink implementation from the configuration (one file per implementation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.audio.sinks.base import AudioSink, SinkConfig, SinkError

if TYPE_CHECKING:  # the sources import apply_pace from here
    from services.audio.sources.base import CaptureSource


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
    apply_pace(sink, config.pace)
    return sink


def apply_pace(device: AudioSink | CaptureSource, pace: str) -> None:
    """--pace clock / device overrides what a sink or capture source says about pacing itself (auto keeps it)."""
    if pace == "clock":
        device.paces_itself = False
    elif pace == "device":
        device.paces_itself = True
