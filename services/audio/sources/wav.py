"""Records a WAV file: each capture starts at the file's first frame; after its last frame, silence.

The file's format is the only one offered: a guest that records another format is told so (the service logs
it, the shim's `record` command refuses) and records silence. Run the service with an ALSA source (`plug:`
converts) for a guest that must choose its own format.
"""

from __future__ import annotations

import wave

from services.audio.sources.base import SourceError, silence
from services.devices.es1370 import PcmFormat


class WavSource:
    paces_itself = False

    def __init__(self, path: str) -> None:
        self.path = path
        self._fixed = read_format(path)
        self._wav: wave.Wave_read | None = None
        self._fmt: PcmFormat | None = None

    @property
    def fixed_format(self) -> PcmFormat:
        return self._fixed

    def open(self, fmt: PcmFormat) -> None:
        self.close()
        if fmt != self._fixed:
            raise SourceError(f"the WAV source {self.path} is {self._fixed}; the guest records {fmt}")
        try:
            self._wav = wave.open(self.path, "rb")
        except (OSError, wave.Error, EOFError) as exc:
            raise SourceError(f"cannot read the WAV source {self.path}: {exc}") from exc
        self._fmt = fmt

    def read(self, nbytes: int) -> bytes:
        if self._wav is None or self._fmt is None:
            raise SourceError("WAV source read before open")
        frames = nbytes // self._fmt.frame_bytes
        try:
            data = self._wav.readframes(frames)
        except (OSError, wave.Error, EOFError) as exc:
            raise SourceError(f"cannot read the WAV source {self.path}: {exc}") from exc
        return data + silence(self._fmt, frames * self._fmt.frame_bytes - len(data))

    def close(self) -> None:
        if self._wav is not None:
            w, self._wav = self._wav, None
            w.close()


def read_format(path: str) -> PcmFormat:
    """The format of the WAV at `path`; SourceError names the file when it is not 8/16-bit PCM mono/stereo."""
    try:
        with wave.open(path, "rb") as w:
            fmt = PcmFormat(rate=w.getframerate(), channels=w.getnchannels(), bits=w.getsampwidth() * 8)
    except (OSError, wave.Error, EOFError) as exc:
        raise SourceError(f"--source-path {path}: not a readable PCM WAV file ({exc})") from exc
    if fmt.bits not in (8, 16) or fmt.channels not in (1, 2):
        raise SourceError(f"--source-path {path}: the ES1370 records 8/16-bit mono/stereo, the file is {fmt}")
    return fmt
