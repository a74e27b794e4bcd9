"""Records from an ALSA capture PCM with pyalsaaudio, in the guest's own format (`plug:` converts for a device
that cannot; `dsnoop` shares one microphone among several VMs)."""

from __future__ import annotations

import alsaaudio

from services.audio.alsa_pcm import UNPACED_PREFIXES, open_pcm
from services.audio.sources.base import SourceError
from services.devices.es1370 import PcmFormat


class AlsaSource:
    fixed_format = None

    def __init__(self, device: str) -> None:
        self.device = device
        self.paces_itself = not device.startswith(UNPACED_PREFIXES)
        self._pcm: alsaaudio.PCM | None = None
        self._fmt: PcmFormat | None = None

    def open(self, fmt: PcmFormat) -> None:
        self.close()
        try:
            self._pcm = open_pcm(alsaaudio.PCM_CAPTURE, self.device, fmt)
        except alsaaudio.ALSAAudioError as exc:
            raise SourceError(f"ALSA capture device {self.device!r} refused {fmt}: {exc}") from exc
        got = self._pcm.info()
        if got.get("rate") != fmt.rate or got.get("channels") != fmt.channels:
            self.close()
            raise SourceError(
                f"ALSA capture device {self.device!r} records {got.get('rate')} Hz {got.get('channels')} ch, "
                f"not {fmt} (use a plug: device to convert)"
            )
        self._fmt = fmt

    def read(self, nbytes: int) -> bytes:
        if self._pcm is None or self._fmt is None:
            raise SourceError("ALSA source read before open")
        try:
            frames, data = self._pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            raise SourceError(f"ALSA capture failed on {self.device!r}: {exc}") from exc
        if frames < 0:  # an overrun (-EPIPE): pyalsaaudio has already recovered the PCM; nothing this time
            return b""
        return bytes(data[: frames * self._fmt.frame_bytes])

    def close(self) -> None:
        if self._pcm is not None:
            pcm, self._pcm = self._pcm, None
            pcm.close()
