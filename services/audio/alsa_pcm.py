"""Opening an ALSA PCM with pyalsaaudio in the guest's own sample format: shared by the ALSA sink and source."""

from __future__ import annotations

import alsaaudio

from services.devices.es1370 import PcmFormat

# PCMs that move data without waiting for a sound card: the player or recorder must pace them with its clock.
UNPACED_PREFIXES = ("null", "file:", "pcm.null")


def open_pcm(direction: int, device: str, fmt: PcmFormat) -> alsaaudio.PCM:
    """alsaaudio.PCM_PLAYBACK or PCM_CAPTURE on `device` in `fmt`, 10 ms periods; raises ALSAAudioError."""
    return alsaaudio.PCM(
        type=direction,
        mode=alsaaudio.PCM_NORMAL,
        device=device,
        rate=fmt.rate,
        channels=fmt.channels,
        format=alsaaudio.PCM_FORMAT_S16_LE if fmt.bits == 16 else alsaaudio.PCM_FORMAT_U8,
        periodsize=max(64, fmt.rate // 100),
    )
