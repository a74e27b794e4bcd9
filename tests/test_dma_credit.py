"""The DMA pacing rule (services/devices/dma.py) on a fake clock: holds, the jitter buffer's bound, the slack a
real card gives the guest, and late DMA."""

from __future__ import annotations

from services.devices import es1370_regs as R
from services.devices.dma import DmaCredit
from services.devices.es1370 import Es1370
from tests.helpers import FakeClock
from tests.test_es1370_model import started

PERIOD = 32  # bytes: started() sets 8 stereo 16-bit frames per period
RING = 128  # bytes: 32 dwords, four periods
BYTE_RATE = 44100 * 4


def ack(m: Es1370) -> None:
    """The guest's interrupt handler: clear and restore INT_EN."""
    sctrl = m.read(R.SERIAL_CONTROL, 4)
    m.write(R.SERIAL_CONTROL, 4, sctrl & ~R.SCTRL_P2INTEN)
    m.write(R.SERIAL_CONTROL, 4, sctrl)


def step(credit: DmaCredit, m: Es1370, limit: int = 1 << 20) -> int:
    """Move what the credit allows now, acknowledging each interrupt at once; returns the bytes moved."""
    moved = 0
    while moved < limit:
        room = credit.room(m, R.DAC2)
        _, n = m.dma_window(R.DAC2, min(room, limit - moved))
        if not n:
            return moved
        if credit.commit(m, R.DAC2, n):
            ack(m)
        moved += n
    return moved


def test_credit_holds_at_pending_interrupt_then_gives_up() -> None:
    clock = FakeClock()
    credit = DmaCredit(clock, lead=0.1, hold_limit=0.05)
    m = started()
    assert credit.room(m, R.DAC2) > 0
    _, n = m.dma_window(R.DAC2, 1000)
    assert credit.commit(m, R.DAC2, n)
    assert credit.room(m, R.DAC2) == 0  # interrupt pending: hold
    clock.t = 0.06
    credit.played(R.DAC2, n)
    assert credit.room(m, R.DAC2) > 0  # the guest never acked: move on after the hold limit


def test_jitter_buffer_never_deeper_than_the_ring() -> None:
    """With a lead of a whole second, still at most one ring is taken and not yet played."""
    clock = FakeClock()
    credit = DmaCredit(clock, lead=1.0)
    m = started()
    played = deepest = 0
    for tick in range(1, 200):
        clock.t = tick * 0.0001
        step(credit, m)
        moved, _ = credit.totals(R.DAC2)
        deepest = max(deepest, moved - played)
        played = min(moved, played + 12)  # the sink plays slower than the DMA could move
        credit.played(R.DAC2, played)
    assert deepest == RING  # the bound is reached, never passed


def test_slot_taken_again_no_earlier_than_a_real_card_would() -> None:
    """However much the playback credit allows (a sink that catches up after a stall, say), the bytes `x` past a
    period's end are taken no earlier than `x / rate` after that period's interrupt: the guest gets the slack a
    real card gives, (ring - period) / rate, to refill the slot, less at most one poll of the DMA (a poll that
    comes late ends a period late: that is the interrupt's latency, and the card does not slow down for it); and
    the DMA keeps up with the rate."""
    clock = FakeClock()
    credit = DmaCredit(clock, lead=1.0)
    m = started()
    interrupts: list[float] = []  # device time of each period's end, in stream order
    taken: list[tuple[int, int, float]] = []  # (stream offset, length, device time) of each transfer
    offset = 0
    poll = 0.00002  # 20 µs: a period (181 µs) takes ~9 polls at the real rate
    for tick in range(2000):
        clock.t = tick * poll
        while True:
            room = credit.room(m, R.DAC2)
            _, n = m.dma_window(R.DAC2, room)
            if not n:
                break
            credit.played(R.DAC2, offset)  # the sink played everything at once: the credit never binds
            taken.append((offset, n, clock.t))
            offset += n
            if credit.commit(m, R.DAC2, n):
                interrupts.append(clock.t)
                ack(m)
    slack = RING - PERIOD
    for start, n, t in taken:
        last = start + n - 1  # the transfer's last byte
        period = (last - slack) // PERIOD - 1  # the period whose slot this byte fills again
        if period >= 0:
            due = interrupts[period] + (last - (period + 1) * PERIOD - slack) / BYTE_RATE + slack / BYTE_RATE
            assert t >= due - poll - 1e-9, (start, n, t, due)
    reused = [t - interrupts[(s - slack) // PERIOD - 1] for s, _, t in taken if s >= RING and s % PERIOD == 0]
    assert min(reused) >= slack / BYTE_RATE - poll - 1e-9
    # It still runs at the real rate: the first ring at once, then the rate (within a period for the ticks).
    assert abs(offset - (RING + clock.t * BYTE_RATE)) <= 2 * PERIOD


def test_a_reprogrammed_ring_starts_afresh() -> None:
    """After a restart (the guest rewrote the position, as ALSA's prepare does) the whole new ring is there to
    take at once: it was filled before the start."""
    clock = FakeClock()
    credit = DmaCredit(clock, lead=1.0)
    m = started()
    assert step(credit, m) == RING  # a full ring, then the slack rule waits for time to pass
    assert step(credit, m) == 0
    control = m.read(R.CONTROL, 4)
    for offset, value in (  # ALSA's stop, then prepare and start: the same registers as before
        (R.CONTROL, control & ~R.CTRL_DAC2_EN),
        (R.MEMPAGE, R.FRAME_PAGE_DAC),
        (R.DAC2_FRAMECNT & 0xFF, RING // 4 - 1),
        (R.CONTROL, control),
    ):
        m.write(offset, 4, value)
        credit.follow(m)  # what both DMA engines do after each guest write
    credit.played(R.DAC2, RING)
    assert step(credit, m) == RING


def test_late_dma_is_what_the_guest_could_not_have_written() -> None:
    """A guest may write up to one ring past the last position it read; DMA beyond that is late."""
    clock = FakeClock()
    credit = DmaCredit(clock, lead=1.0)
    m = started()
    assert step(credit, m) == RING and credit.late(R.DAC2) == 0  # the ring the guest filled before starting
    clock.t = 1.0
    credit.played(R.DAC2, RING)
    credit.position_read(m, R.DAC2)  # the guest sees the DMA at the ring's end: it refills the whole ring
    assert step(credit, m, RING) == RING and credit.late(R.DAC2) == 0
    credit.played(R.DAC2, 2 * RING)
    clock.t = 2.0  # the guest did not look again: the next period cannot have been written
    assert step(credit, m, PERIOD) == PERIOD
    assert credit.late(R.DAC2) == 1
