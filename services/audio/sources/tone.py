"""Records a steady test tone (440 Hz left, 660 Hz right) in whatever format the guest asks for: a microphone for
people without one."""

from __future__ import annotations

import math
import struct

from services.devices.es1370 import PcmFormat

_FREQS = (440.0, 660.0)
_AMPLITUDE = 0.3


class ToneSource:
    paces_itself = False
    fixed_format = None

    def __init__(self) -> None:
        self._fmt: PcmFormat | None = None
        self._frame = 0

    def open(self, fmt: PcmFormat) -> None:
        self._fmt, self._frame = fmt, 0

    def read(self, nbytes: int) -> bytes:
        fmt = self._fmt
        assert fmt is not None, "tone read before open"
        frames = nbytes // fmt.frame_bytes
        out = bytearray()
        for i in range(self._frame, self._frame + frames):
            for f in _FREQS[: fmt.channels]:
                v = _AMPLITUDE * math.sin(2 * math.pi * f * i / fmt.rate)
                out += struct.pack("<h", int(v * 32767)) if fmt.bits == 16 else bytes((int(128 + v * 127),))
        self._frame += frames
        return bytes(out)

    def close(self) -> None:
        self._fmt = None
