"""PCM files: read a WAV the guest should play, and make the bundled demo sound."""

from __future__ import annotations

import math
import struct
import wave

from services.devices.es1370 import PcmFormat


def read_wav(path: str) -> tuple[PcmFormat, bytes]:
    """The WAV's format and raw frames (8-bit unsigned or 16-bit little-endian, as the ES1370 plays them)."""
    try:
        with wave.open(path, "rb") as w:
            fmt = PcmFormat(rate=w.getframerate(), channels=w.getnchannels(), bits=w.getsampwidth() * 8)
            return fmt, w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from exc


def write_wav(path: str, fmt: PcmFormat, data: bytes) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(fmt.channels)
        w.setsampwidth(fmt.bits // 8)
        w.setframerate(fmt.rate)
        w.writeframes(data)


def melody(fmt: PcmFormat, seconds: float) -> bytes:
    """A short arpeggio (different notes left and right), generated so nothing has to be downloaded."""
    notes = (261.63, 329.63, 392.00, 523.25)
    frames = int(fmt.rate * seconds)
    note_len = max(1, frames // 8)
    out = bytearray()
    for i in range(frames):
        f = notes[(i // note_len) % len(notes)]
        env = min(1.0, (i % note_len) / (0.01 * fmt.rate + 1)) * 0.5
        left = env * math.sin(2 * math.pi * f * i / fmt.rate)
        right = env * math.sin(2 * math.pi * f * 1.5 * i / fmt.rate)
        for sample in (left, right)[: fmt.channels]:
            if fmt.bits == 16:
                out += struct.pack("<h", int(sample * 32767))
            else:
                out.append(int(128 + sample * 127))
    return bytes(out)
