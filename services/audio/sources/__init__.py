"""Capture sources: what the audio service records for a guest's ADC. One small interface, one file each."""

from __future__ import annotations

from services.audio.sources.base import CaptureSource, SourceConfig, SourceError
from services.audio.sources.factory import make_source

__all__ = ["CaptureSource", "SourceConfig", "SourceError", "make_source"]
