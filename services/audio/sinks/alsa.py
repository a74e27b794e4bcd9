"""Plays through ALSA with pyalsaaudio, in the guest's own sample format so nothing is converted."""

from __future__ import annotations

import alsaaudio

from services.audio.alsa_pcm import UNPACED_PREFIXES, open_pcm
from services.audio.sinks.base import SinkError
from services.common import logs
from services.devices.es1370 import PcmFormat


class AlsaSink:
    def __init__(self, device: str) -> None:
        self.device = device
        self.paces_itself = not device.startswith(UNPACED_PREFIXES)
        self.underruns = 0
        self._pcm: alsaaudio.PCM | None = None
        self._frame_bytes = 1

    def open(self, fmt: PcmFormat) -> None:
        self.close()
        try:
            self._pcm = open_pcm(alsaaudio.PCM_PLAYBACK, self.device, fmt)
        except alsaaudio.ALSAAudioError as exc:
            raise SinkError(f"ALSA device {self.device!r} refused {fmt}: {exc}") from exc
        self._frame_bytes = fmt.frame_bytes
        got = self._pcm.info()
        if got.get("rate") != fmt.rate or got.get("channels") != fmt.channels:
            # ALSA may substitute a nearby rate; we still play, but say so: the output is no longer bit-exact.
            logs.get("audio.alsa").warning(
                "device substituted the format",
                extra={"device": self.device, "asked": str(fmt), "rate": got.get("rate")},
            )

    def write(self, data: bytes) -> None:
        if self._pcm is None:
            raise SinkError("ALSA sink written before open")
        try:
            while data:
                if self._pcm.state() == alsaaudio.PCM_STATE_XRUN:
                    self.underruns += 1  # the device ran dry since our last write (-EPIPE); write() recovers
                written = self._pcm.write(data) * self._frame_bytes
                if written >= len(data):
                    break
                self.underruns += 1  # a short write: what is left goes in the next round
                if written <= 0:
                    raise SinkError(f"ALSA device {self.device!r} took no frames")
                data = data[written:]
        except alsaaudio.ALSAAudioError as exc:
            raise SinkError(f"ALSA write failed on {self.device!r}: {exc}") from exc

    def close(self) -> None:
        if self._pcm is not None:
            pcm, self._pcm = self._pcm, None
            try:
                pcm.drain()
            except (alsaaudio.ALSAAudioError, AttributeError):
                pass
            pcm.close()
