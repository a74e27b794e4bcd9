"""Posted register writes travel in batches (rdv.common.v1.RegisterWrites).

The shim's stream sends the writes queued behind each other as one message, in order with everything else, and
counts the bytes of what it sends; a service applies a batch exactly as the writes one by one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import grpc
import pytest

from frontend_shim.guests.trace_replay import load_trace
from frontend_shim.links.base import LinkStats
from frontend_shim.links.session_stream import FRAME_OVERHEAD, SessionStream
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common.register_writes import MAX_WRITES, Write, pack, unpack
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370
from services.devices.es1370_convert import state_to_proto
from tests.helpers import ROOT, ServiceProcess, start_service

# Linux's snd-ens1370 playing: dword writes everywhere, byte writes to the UART.
TRACE = ROOT / "tests" / "data" / "traces" / "p512_44k_s16_stereo.log.gz"
BARRIER = audio_pb2.FrontendMessage(barrier=common_pb2.Barrier(seq=1))


# ----------------------------------------------------------------------------------------------- the message
def test_pack_round_trip_and_implied_sizes() -> None:
    mixed: list[Write] = [(R.UART_CONTROL, 1, 0x3), (R.CODEC, 2, 0x1603), (R.SERIAL_CONTROL, 4, 0xFFFFFFFF)]
    assert list(unpack(pack(mixed))) == mixed
    dwords: list[Write] = [(R.SERIAL_CONTROL, 4, 0x10000C), (R.SERIAL_CONTROL, 4, 0x10020C)]
    batch = pack(dwords)
    assert not batch.sizes and list(unpack(batch)) == dwords
    # The implied fields are what makes even a lone write cheaper than a RegisterAccess, and each further write
    # in a batch costs only its offset and value.
    single = common_pb2.RegisterAccess(offset=R.SERIAL_CONTROL, size=4, write=True, value=0x10000C)
    lone = audio_pb2.FrontendMessage(writes=pack(dwords[:1])).ByteSize()
    assert lone < audio_pb2.FrontendMessage(access=single).ByteSize()
    assert audio_pb2.FrontendMessage(writes=batch).ByteSize() == lone + 4


@pytest.mark.parametrize(
    ("pairs", "sizes", "words"),
    [
        ([], [], "pairs of 1 to"),
        ([R.CONTROL], [], "pairs of 1 to"),
        ([R.CONTROL, 0] * (MAX_WRITES + 1), [], f"1 to {MAX_WRITES} register writes"),
        ([R.CONTROL, 0, R.CODEC, 0], [4], "1 sizes for 2"),
        ([R.CONTROL, 0], [4, 4], "2 sizes for 1"),
    ],
)
def test_malformed_batches_are_refused_whole(pairs: list[int], sizes: list[int], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        unpack(common_pb2.RegisterWrites(pairs=pairs, sizes=sizes))


# ----------------------------------------------------------------------------------------------- the stream
def _stream() -> tuple[SessionStream, LinkStats, list[tuple[audio_pb2.FrontendMessage, int]]]:
    stats, sent = LinkStats(), []
    # Never started: the test drains its request iterator itself (the channel connects to nothing).
    stream = SessionStream(
        "127.0.0.1:9", None, stats, audio_pb2.FrontendMessage, on_sent=lambda m, n: sent.append((m, n))
    )
    return stream, stats, sent


def test_queued_writes_leave_as_batches_in_stream_order() -> None:
    stream, stats, sent = _stream()
    burst = [(R.SERIAL_CONTROL, 4, n) for n in range(MAX_WRITES + 3)]
    stream.post_write(R.MEMPAGE, 4, 0xC)
    stream.post_write(R.UART_CONTROL, 1, 0x3)
    stream.send(BARRIER)
    for w in burst:
        stream.post_write(*w)
    stream.close()
    out = list(stream._requests())
    assert [m.WhichOneof("kind") for m in out] == ["writes", "barrier", "writes", "writes"]
    assert list(unpack(out[0].writes)) == [(R.MEMPAGE, 4, 0xC), (R.UART_CONTROL, 1, 0x3)]
    assert [w for m in out[2:] for w in unpack(m.writes)] == burst  # split at MAX_WRITES, order kept
    # The wire figures count the messages as sent, each once.
    assert [(m, m.ByteSize() + FRAME_OVERHEAD) for m in out] == sent
    assert stats.bytes_to_service == sum(n for _, n in sent) and stats.messages_to_service == 4


def test_a_lone_write_waits_for_nothing() -> None:
    stream, _, _ = _stream()
    requests = stream._requests()
    stream.post_write(R.MEMPAGE, 4, 0xD)
    started = time.monotonic()
    msg = next(requests)  # nothing else queued, the stream still open
    assert time.monotonic() - started < 0.1
    assert list(unpack(msg.writes)) == [(R.MEMPAGE, 4, 0xD)]
    stream.close()


# ----------------------------------------------------------------------------------------------- the service
@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("audio", tmp_path_factory.mktemp("svc"), "--sink", "null")
    yield svc
    svc.stop()


def _state_after(address: str, mode: int, messages: list[audio_pb2.FrontendMessage]) -> audio_pb2.Es1370State:
    opening = audio_pb2.FrontendMessage(open=audio_pb2.Open(vm="batch", mode=mode))
    with grpc.insecure_channel(address) as ch:
        replies = audio_pb2_grpc.AudioServiceStub(ch).Session(iter([opening, *messages, BARRIER]), timeout=10)
        acks = [r.barrier_ack for r in replies if r.WhichOneof("kind") == "barrier_ack"]
    assert len(acks) == 1
    return acks[0].state


@pytest.mark.parametrize("mode", [common_pb2.COHERENCE_MODE_BACKEND, common_pb2.COHERENCE_MODE_MIRRORED])
def test_a_batch_is_applied_as_its_writes_one_by_one(audio: ServiceProcess, mode: int) -> None:
    writes = [(a.offset, a.size, a.value) for a in load_trace(TRACE).accesses if a.write]
    one_by_one = [
        audio_pb2.FrontendMessage(access=common_pb2.RegisterAccess(offset=o, size=s, write=True, value=v))
        for o, s, v in writes
    ]
    rng, batched, i = random.Random(7), [], 0
    while i < len(writes):
        n = rng.choice([1, 2, 3, 17, 200])
        batched.append(audio_pb2.FrontendMessage(writes=pack(writes[i : i + n])))
        i += n
    model = Es1370()
    for w in writes:
        model.write(*w)
    expected = state_to_proto(model.state)
    assert expected != state_to_proto(Es1370().state)  # the trace does program the card
    owned = _dma_owned if mode == common_pb2.COHERENCE_MODE_BACKEND else (lambda s: s)
    assert owned(_state_after(audio.address, mode, one_by_one)) == owned(expected)
    assert owned(_state_after(audio.address, mode, batched)) == owned(expected)


def _dma_owned(state: audio_pb2.Es1370State) -> audio_pb2.Es1370State:
    """Backend mode: the service is the card, and its DMA takes a window of each running DAC as soon as the trace
    starts it (and then waits for data this test never sends). What the DMA moved — the position and sample
    counters — is the card's, not the guest's writes: cleared on both sides of the comparison."""
    out = audio_pb2.Es1370State()
    out.CopyFrom(state)
    for ch in out.channels:
        ch.leftover = 0
        ch.frame_cnt &= 0xFFFF
        ch.scount &= 0xFFFF
    return out
