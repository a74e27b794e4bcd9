"""When may a channel's DMA move more bytes? The one pacing rule, used wherever the DMA engine runs
(the shim in mirrored mode, the audio service in backend mode).

Playback, not a timer, drives the DMA: a channel may run at most `lead` seconds of audio ahead of what the
remote sink has played, so interrupts follow the real sample rate and a slow link throttles the guest like a
slow sound card would. A completed period holds the DMA until the guest has acknowledged its interrupt (for at
most `hold_limit`), so no period interrupt is ever coalesced with the next one; the chip would run on, but
it has no network between its FIFO and its DAC.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.clock import Clock
from services.devices.es1370 import Es1370


@dataclass
class _ChannelCredit:
    moved: int = 0
    played: int = 0
    held_since: float | None = None


class DmaCredit:
    def __init__(self, clock: Clock, lead: float, max_chunk_seconds: float = 0.02, hold_limit: float = 0.05) -> None:
        self.clock = clock
        self.lead = lead
        self.max_chunk_seconds = max_chunk_seconds
        self.hold_limit = hold_limit
        self._channels = [_ChannelCredit() for _ in range(3)]

    def room(self, model: Es1370, channel: int, hold: bool | None = None) -> int:
        """Bytes the channel may move now; `hold` (default: the channel's interrupt is pending) holds it."""
        c = self._channels[channel]
        if model.interrupt_pending(channel) if hold is None else hold:
            now = self.clock.now()
            if c.held_since is None:
                c.held_since = now
            if now - c.held_since < self.hold_limit:
                return 0
        else:
            c.held_since = None
        fmt = model.channel_format(channel)
        byte_rate = fmt.rate * fmt.frame_bytes
        ahead = c.moved - c.played
        return max(0, min(int(self.lead * byte_rate) - ahead, int(self.max_chunk_seconds * byte_rate)))

    def moved(self, channel: int, nbytes: int) -> None:
        self._channels[channel].moved += nbytes

    def played(self, channel: int, total_played: int) -> None:
        self._channels[channel].played = total_played

    def totals(self, channel: int) -> tuple[int, int]:
        c = self._channels[channel]
        return c.moved, c.played
