"""What a remote ES1370 played, held against what the card took from the guest's ring.

A loaded machine starves the guest now and then, and then a real card plays whatever its ring holds: stale
periods, an xrun the guest's ALSA reports and recovers from. So a byte-exact check has two sides: when neither the
guest (xruns) nor the service (late DMA) reported one, the song arrived exactly; either way the sink played exactly
the ring's contents at the moments the DMA took them, in ring order. A corruption cannot hide behind "it was an
underrun": the second check holds whatever happened to the timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc

from frontend_shim.guests.scripted_audio import BUFFER_ADDR
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.devices import es1370_regs as R

STEREO16 = (R.FMT_BIT_16 | R.FMT_BIT_STEREO) << R.SCTRL_SH_P2FMT  # DAC2's serial format bits: 16-bit stereo


def start_dac2(write32: Callable[[int, int, int], object], buf: int, ring_bytes: int, period_frames: int,
               rate: int) -> None:  # fmt: skip
    """What snd-ens1370's prepare and trigger write for 16-bit stereo on DAC2 (REFERENCE.md), through a
    vfio-user client's `write32(region, offset, value)` on BAR 0."""
    write32(0, R.CONTROL, R.CTRL_CDC_EN)
    write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)
    write32(0, R.DAC2_FRAMEADR & 0xFF, buf)
    write32(0, R.DAC2_FRAMECNT & 0xFF, ring_bytes // 4 - 1)
    write32(0, R.SERIAL_CONTROL, STEREO16 | R.SCTRL_P2INTEN)
    write32(0, R.DAC2_SCOUNT, period_frames - 1)
    write32(0, R.CONTROL, R.CTRL_CDC_EN | R.dac2_divider(rate) << R.CTRL_SH_PCLKDIV | R.CTRL_DAC2_EN)


def ring_order_restarts(reads: list[tuple[int, bytes]], ring_bytes: int) -> int:
    """Each DMA read starts where the last one ended, going round the ring; returns how often it started over at
    the ring's start instead (a guest that restarted its stream). Anything else is a card reading out of order."""
    pos, restarts = BUFFER_ADDR, 0
    for i, (addr, data) in enumerate(reads):
        if addr != pos:
            assert addr == BUFFER_ADDR, f"DMA read {i} at {addr:#x}, expected {pos:#x} or the ring's start"
            restarts += 1
        pos = addr + len(data)
        assert pos <= BUFFER_ADDR + ring_bytes, f"DMA read {i} runs past the ring's end"
        if pos == BUFFER_ADDR + ring_bytes:
            pos = BUFFER_ADDR
    return restarts


def dropped_reads(played: bytes, reads: list[tuple[int, bytes]], limit: int) -> int | None:
    """How many whole reads `played` leaves out of the reads' bytes in order (backend mode drops a transfer that
    was under way when the guest stopped the DAC), at most `limit`; None when `played` is not such a sequence."""
    states = {0: 0}  # offset in `played` -> fewest reads left out to get there
    for _, data in reads:
        after: dict[int, int] = {}
        for at, dropped in states.items():
            if played[at : at + len(data)] == data:
                after[at + len(data)] = min(after.get(at + len(data), dropped), dropped)
            if dropped < limit:
                after[at] = min(after.get(at, dropped + 1), dropped + 1)
        states = after
        if not states:
            return None
    return states.get(len(played))


def plays_the_reads(played: bytes, reads: list[tuple[int, bytes]], limit: int) -> bool:
    return dropped_reads(played, reads, limit) is not None


def assert_played_as_the_card_took(
    played: bytes,
    pcm: bytes,
    summary: dict,
    reads: list[tuple[int, bytes]],
    *,
    ring_bytes: int,
    silence: bytes,
    name: str,
) -> None:
    """`summary` is `play --json`'s; `reads` the shim's DMA log (`--dma-log`)."""
    xruns, late = summary["xruns"], summary["late_dma"]
    restarts = ring_order_restarts(reads, ring_bytes)
    assert restarts <= xruns, f"{restarts} restarts of the ring, but the guest restarted {xruns} times"
    backend = summary["mode"] == "backend"
    dropped = dropped_reads(played, reads, xruns + 1 if backend else 0)
    assert dropped is not None, "the sink did not play what the card took from the ring"
    print(
        f"\nFIGURES audio-xruns {name}: "
        + json.dumps({"xruns": xruns, "late_dma": late, "underruns": summary["underruns"], "dropped_reads": dropped})
    )
    if xruns == 0 and late == 0:
        assert played[: len(pcm)] == pcm  # nobody saw an xrun: the song, exactly
        tail = played[len(pcm) :]
        assert tail == silence[:1] * len(tail)  # then the silence the guest padded and drained with


def wait_sessions_closed(address: str, timeout: float = 10.0) -> None:
    """The service closes a session (and its sink) after the shim's stream ends."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        while stub.ListSessions(common_pb2.ListSessionsRequest()).sessions:
            assert time.monotonic() < deadline, "session did not close"
            time.sleep(0.02)
