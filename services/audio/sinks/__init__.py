"""Audio sinks: where the audio service sends PCM. One small interface, one file per implementation."""

from __future__ import annotations

from services.audio.sinks.base import AudioSink, SinkConfig, SinkError
from services.audio.sinks.factory import make_sink

__all__ = ["AudioSink", "SinkConfig", "SinkError", "make_sink"]
