"""Writes a WAV file: for a remote node without ALSA hardware, and for people who want the recording."""

from __future__ import annotations

import wave

from services.audio.sinks.base import SinkError
from services.devices.es1370 import PcmFormat


class WavSink:
    paces_itself = False
    underruns = 0

    def __init__(self, path: str) -> None:
        self.path = path
        self._wav: wave.Wave_write | None = None
        self._segments = 0

    def open(self, fmt: PcmFormat) -> None:
        self.close()
        # A format change starts a new file: one WAV can only hold one format.
        path = self.path if self._segments == 0 else _numbered(self.path, self._segments)
        self._segments += 1
        try:
            self._wav = wave.open(path, "wb")
        except OSError as exc:
            raise SinkError(f"cannot write {path}: {exc.strerror}") from None
        self._wav.setnchannels(fmt.channels)
        self._wav.setsampwidth(fmt.bits // 8)
        self._wav.setframerate(fmt.rate)

    def write(self, data: bytes) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(data)

    def close(self) -> None:
        if self._wav is not None:
            wav, self._wav = self._wav, None
            wav.close()


def _numbered(path: str, n: int) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}.{n}.{ext}" if dot else f"{path}.{n}"
