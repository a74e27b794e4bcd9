"""Malformed or hostile session traffic gets a clear gRPC status; the service keeps serving others."""

from __future__ import annotations

import grpc
import pytest

from frontend_shim.guests.scripted_audio import new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.common.register_writes import MAX_WRITES
from services.devices import es1370_regs as R

BACKEND = common_pb2.COHERENCE_MODE_BACKEND
MIRRORED = common_pb2.COHERENCE_MODE_MIRRORED


def open_msg(mode: int = BACKEND, **kw: object) -> audio_pb2.FrontendMessage:
    return audio_pb2.FrontendMessage(open=audio_pb2.Open(vm="evil", mode=mode, **kw))


def access(offset: int, size: int = 4, write: bool = False, bar: int = 0) -> audio_pb2.FrontendMessage:
    return audio_pb2.FrontendMessage(
        access=common_pb2.RegisterAccess(seq=1, bar=bar, offset=offset, size=size, write=write)
    )


def writes(pairs: list[int], sizes: list[int] | None = None) -> audio_pb2.FrontendMessage:
    """A batch of posted writes exactly as given (offset, value, offset, value, ...), malformed or not."""
    return audio_pb2.FrontendMessage(writes=common_pb2.RegisterWrites(pairs=pairs, sizes=sizes or []))


def session_status(address: str, messages: list[audio_pb2.FrontendMessage]) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as ch:
        call = audio_pb2_grpc.AudioServiceStub(ch).Session(iter(messages), timeout=10)
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


CASES = {
    "no open first": ([access(0)], grpc.StatusCode.INVALID_ARGUMENT, "open"),
    "no mode": ([open_msg(mode=0)], grpc.StatusCode.INVALID_ARGUMENT, "mode"),
    "offset past the BAR": ([open_msg(), access(0x100)], grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    "three-byte access": ([open_msg(), access(0, size=3)], grpc.StatusCode.INVALID_ARGUMENT, "size"),
    "dword across registers": ([open_msg(), access(0x2, size=4)], grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    "wrong BAR": ([open_msg(), access(0, bar=2)], grpc.StatusCode.INVALID_ARGUMENT, "BAR"),
    # A batch of writes is refused like the bad single write in it, or for its own shape.
    "batch write past the BAR": (
        [open_msg(MIRRORED), writes([R.MEMPAGE, 0xC, 0x100, 1])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside",
    ),
    "batch write of three bytes": (
        [open_msg(), writes([R.MEMPAGE, 0xC, 0, 1], sizes=[4, 3])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "size 3",
    ),
    "batch dword across registers": ([open_msg(), writes([0x2, 1])], grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    "batch offset without a value": ([open_msg(), writes([0, 1, 0x20])], grpc.StatusCode.INVALID_ARGUMENT, "pairs"),
    "batch with too few sizes": (
        [open_msg(), writes([0, 1, 0x20, 2], sizes=[4])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "1 sizes for 2",
    ),
    "empty batch": ([open_msg(), writes([])], grpc.StatusCode.INVALID_ARGUMENT, f"1 to {MAX_WRITES} register writes"),
    "oversized batch": (
        [open_msg(), writes([R.MEMPAGE, 0xC] * (MAX_WRITES + 1))],
        grpc.StatusCode.INVALID_ARGUMENT,
        f"1 to {MAX_WRITES} register writes",
    ),
    "second open": ([open_msg(), open_msg()], grpc.StatusCode.FAILED_PRECONDITION, "already open"),
    "PCM in backend mode": (
        [open_msg(), audio_pb2.FrontendMessage(pcm=audio_pb2.PcmChunk(channel=1, data=b"x" * 64))],
        grpc.StatusCode.FAILED_PRECONDITION,
        "mirrored",
    ),
    "PCM for a stopped DAC": (
        [open_msg(MIRRORED), audio_pb2.FrontendMessage(pcm=audio_pb2.PcmChunk(channel=1, data=b"x" * 64))],
        grpc.StatusCode.FAILED_PRECONDITION,
        "diverged",
    ),
    "PCM for the ADC": (
        [open_msg(MIRRORED), audio_pb2.FrontendMessage(pcm=audio_pb2.PcmChunk(channel=2, data=b"x"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "channel",
    ),
    "huge PCM chunk": (
        [open_msg(MIRRORED), audio_pb2.FrontendMessage(pcm=audio_pb2.PcmChunk(channel=1, data=b"x" * 300_000))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "bytes",
    ),
    "state with 7 channels": (
        [open_msg(MIRRORED, state=audio_pb2.Es1370State(channels=[audio_pb2.Es1370Channel()] * 7))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "channels",
    ),
    "empty message": ([open_msg(), audio_pb2.FrontendMessage()], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "message over the size limit": (
        [open_msg(), audio_pb2.FrontendMessage(dma_data=audio_pb2.DmaData(data=b"x" * (9 << 20)))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from tests.helpers import start_service

    svc = start_service("audio", tmp_path_factory.mktemp("svc"), "--sink", "null")
    yield svc
    svc.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_with_clear_status(audio, case: str) -> None:  # noqa: ANN001
    # A healthy session stays open across every refusal.
    memory, irq = new_guest()
    good = AudioLink(audio.address, "backend", memory, irq, access_timeout=2.0)
    good.start()
    good.io_write(0, R.MEMPAGE, 4, 0xC)
    messages, code, words = CASES[case]
    got, details = session_status(audio.address, messages)
    assert got == code, details
    assert words in details
    assert good.io_read(0, R.MEMPAGE, 4) == 0xC and good.stats.read_timeouts == 0
    good.close()
    assert audio.proc.poll() is None


@pytest.mark.parametrize("after_open", [False, True], ids=["first", "after-open"])
def test_garbage_bytes_on_the_stream(audio, after_open: bool) -> None:  # noqa: ANN001
    """Garbage as the first message (the open gate's read) or after a good `open` (the session's loop) ends the
    stream with INVALID_ARGUMENT, and the service lives on."""
    first = [open_msg().SerializeToString()] if after_open else []
    with grpc.insecure_channel(audio.address) as ch:
        raw = ch.stream_stream(
            "/rdv.audio.v1.AudioService/Session", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as err:
            for _ in raw(iter([*first, b"\xff\xff\xff\xff\x0f garbage"]), timeout=10):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in err.value.details()
    assert audio.proc.poll() is None
