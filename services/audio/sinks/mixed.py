"""A sink that feeds the service's mixer (`--mix service`): to the player, a sound card that blocks when full."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.devices.es1370 import PcmFormat

if TYPE_CHECKING:
    from services.audio.mixer import MixerInput


class MixedSink:
    paces_itself = True  # a write waits for the mixer's clock, like a write into a full ALSA buffer

    def __init__(self, mixer_input: MixerInput) -> None:
        self._input = mixer_input

    @property
    def underruns(self) -> int:
        return self._input.underruns  # this session channel's own: the other VMs' are theirs

    def holds_audio(self) -> bool:
        return self._input.pending > 0

    def open(self, fmt: PcmFormat) -> None:
        self._input.open(fmt)

    def write(self, data: bytes) -> None:
        self._input.write(data)

    def close(self) -> None:
        self._input.close()
