"""Discards PCM (benchmarks, machines without sound); the player still paces it in real time."""

from __future__ import annotations

from services.devices.es1370 import PcmFormat


class NullSink:
    paces_itself = False
    underruns = 0

    def open(self, fmt: PcmFormat) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass
