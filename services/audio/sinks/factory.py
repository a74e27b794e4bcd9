"""The factory that picks a sink implementation from the configuration (one file per implementation)."""

from __future__ import annotations

from services.audio.sinks.base import AudioSink, SinkConfig, SinkError


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
