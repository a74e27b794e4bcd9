"""The capture source interface and its configuration (the factory that picks an implementation is `factory.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.devices.es1370 import PcmFormat


class SourceError(RuntimeError):
    """The source cannot record this (device missing or gone, format refused, unreadable file)."""


class CaptureSource(Protocol):
    # True when read() blocks at the device's own rate (a real sound card); otherwise the recorder paces.
    paces_itself: bool

    @property
    def fixed_format(self) -> PcmFormat | None:
        """The only format this source records (a WAV file's), or None when it records what it is asked."""

    def open(self, fmt: PcmFormat) -> None:
        """Start recording in `fmt` from the beginning (a WAV source starts at its first frame)."""

    def read(self, nbytes: int) -> bytes:
        """Up to `nbytes` (whole frames) of recorded PCM, in the opened format."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "tone"  # alsa, wav, tone
    alsa_device: str = "default"  # any ALSA capture PCM name (default, hw:1,0, plug:dsnoop, ...)
    path: str = ""  # the WAV file (--source wav)
    pace: str = "auto"  # auto, clock, device
    latency: float = 0.04  # the capture jitter buffer, seconds


def silence(fmt: PcmFormat, nbytes: int) -> bytes:
    """`nbytes` of silence in `fmt` (U8 is mid-scale)."""
    return (b"\x80" if fmt.bits == 8 else b"\x00") * nbytes
