"""When may a channel's DMA move more bytes? The one pacing rule, used wherever the DMA engine runs
(the shim in mirrored mode, the audio service in backend mode).

Playback, not a timer, drives the DMA: a channel may run at most `lead` seconds of audio ahead of what the
remote sink has played, so interrupts follow the real sample rate and a slow link throttles the guest like a
slow sound card would. Three bounds keep that faithful to the card the guest thinks it has:

- The jitter buffer is never deeper than the guest's ring: at most one ring of audio is taken and not yet
  played, so the DMA never takes a slot again while the sink still holds what it took from it last time.
- Slack: a real card reads the byte `x` bytes past a period's end `x / rate` seconds after that period's
  interrupt, so the guest has (ring - period) / rate seconds to refill the slot. The DMA never takes a byte
  earlier than that, whatever burst the playback credit would allow (after a stall, say).
- A completed period holds the DMA until the guest has acknowledged its interrupt (for at most `hold_limit`),
  so no period interrupt is ever coalesced with the next one; the chip would run on, but it has no network
  between its FIFO and its DAC.

It also tells late DMA (taking ring bytes before the guest could have written them: beyond one ring past the
last position the guest read) from DMA on time; ALSA in the guest sees the same event as an xrun.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.common.clock import Clock
from services.devices.es1370 import Es1370

_FOREVER = 1 << 62


@dataclass
class _ChannelCredit:
    moved: int = 0
    played: int = 0
    held_since: float | None = None
    # (stream offset where a period ended, device time): the interrupts the slack rule counts from
    marks: deque[tuple[int, float]] = field(default_factory=deque)
    known: int = 0  # stream offset of the last DMA position the guest read
    late: int = 0  # DMA transfers that took bytes the guest could not have written yet
    lost: int = 0  # bytes the card took but could not read (guest memory unreachable): they never play
    programmed: tuple[int, ...] | None = None  # the channel's registers as the DMA left them


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
        self._follow(model, channel, c)
        now = self.clock.now()
        if model.interrupt_pending(channel) if hold is None else hold:
            if c.held_since is None:
                c.held_since = now
            if now - c.held_since < self.hold_limit:
                return 0
        else:
            c.held_since = None
        fmt = model.channel_format(channel)
        byte_rate = fmt.rate * fmt.frame_bytes
        ring = model.buffer_bytes(channel)
        ahead = c.moved - c.lost - c.played
        credit = min(int(self.lead * byte_rate), ring) - ahead
        slack = self._slack_room(c, max(0, ring - model.period_bytes(channel)), now, byte_rate)
        return max(0, min(credit, slack, int(self.max_chunk_seconds * byte_rate)))

    def commit(self, model: Es1370, channel: int, nbytes: int) -> bool:
        """One DMA step of `nbytes` (within the model's current window); True when it completed a period."""
        c = self._channels[channel]
        self._follow(model, channel, c)
        completed = model.dma_commit(channel, nbytes)
        ring = model.buffer_bytes(channel)
        if c.moved + nbytes > c.known + ring:
            c.late += 1
        c.moved += nbytes
        if completed:
            fmt = model.channel_format(channel)
            gap = max(0, ring - model.period_bytes(channel))
            c.marks.append((c.moved, self._period_end_time(c, gap, fmt.rate * fmt.frame_bytes)))
        c.programmed = _programming(model, channel)
        return completed

    def follow(self, model: Es1370) -> None:
        """Look at the channels after a guest write: a stop, a new ring or a restart resets the bookkeeping
        (a stop and a start with the same registers is a restart too, so each write that may be one is shown)."""
        for channel, c in enumerate(self._channels):
            self._follow(model, channel, c)

    def position_read(self, model: Es1370, channel: int) -> None:
        """The guest read the channel's DMA position: it may now write up to one ring past it."""
        c = self._channels[channel]
        self._follow(model, channel, c)
        c.known = c.moved - model.state.channels[channel].leftover  # the register shows whole dwords

    def moved(self, channel: int, nbytes: int) -> None:
        """Bytes moved outside the period bookkeeping (the ADC's capture pacing counts only volume)."""
        self._channels[channel].moved += nbytes

    def lost(self, channel: int, nbytes: int) -> None:
        """Bytes the card took and could not read: the sink will never play them."""
        self._channels[channel].lost += nbytes

    def played(self, channel: int, total_played: int) -> None:
        self._channels[channel].played = total_played

    def totals(self, channel: int) -> tuple[int, int]:
        c = self._channels[channel]
        return c.moved, c.played

    def late(self, channel: int) -> int:
        return self._channels[channel].late

    # ------------------------------------------------------------------ internals
    def _period_end_time(self, c: _ChannelCredit, gap: int, byte_rate: int) -> float:
        """When the period that just ended counts as ended for the slack rule: now, unless the slack rule alone
        made it late. A DMA polled every few ms (and, in backend mode, a network round trip from its data) ends
        a period a little after a real card would; counting from then would slow the card down by that much every
        ring, and starve the sink. So lateness up to half the slack is the interrupt's latency, not the card's."""
        now = self.clock.now()
        end = c.moved
        anchor = next(((e, t) for e, t in reversed(c.marks) if e + gap <= end - 1), None)
        if anchor is None:
            return now  # the first ring after a start: the card's time begins here
        due = anchor[1] + (end - anchor[0]) / byte_rate
        return min(now, max(due, now - gap / byte_rate / 2))

    @staticmethod
    def _follow(model: Es1370, channel: int, c: _ChannelCredit) -> None:
        """A guest that stopped or reprogrammed the channel (a new ring, a restart) fills it afresh: forget the
        old one."""
        now = _programming(model, channel)
        if now != c.programmed:
            c.programmed = now
            c.marks.clear()
            c.known = c.moved

    @staticmethod
    def _slack_room(c: _ChannelCredit, gap: int, now: float, byte_rate: int) -> int:
        """Bytes the DMA may move before it would take a slot earlier than a real card would: the byte `x` past
        the end of a period is due `x / rate` after that period's interrupt, and the bytes from `gap` (ring minus
        period) past a period's end on fill that period's slot again."""
        marks = c.marks
        while len(marks) > 1 and marks[1][0] + gap <= c.moved:
            marks.popleft()  # a later period governs everything from here on
        for i, (end, t) in enumerate(marks):
            seg_start = end + gap
            seg_end = marks[i + 1][0] + gap if i + 1 < len(marks) else _FOREVER
            if seg_end <= c.moved:
                continue
            due = end + int((now - t) * byte_rate)
            if due < seg_end:
                return max(due, seg_start) - c.moved
        return _FOREVER


def _programming(model: Es1370, channel: int) -> tuple[int, ...]:
    ch = model.state.channels[channel]
    return model.channel_running(channel), ch.frame_addr, ch.frame_cnt, ch.leftover, ch.scount
