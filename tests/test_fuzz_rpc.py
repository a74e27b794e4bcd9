"""Fuzzing every RPC of every service over the wire, against real service processes.

Random but well-typed messages are built from the proto descriptors (tests/fuzz_strategies.py) for every
method of the audio, display and input services and of the health and reflection services they carry; session
streams get random sequences (usually opened properly, so they reach the session's own checks), unary calls
random requests, and every method random bytes that may or may not parse. Meanwhile a real shim session runs
on the audio and display services, so requests naming sessions find one.

Invariants, after every example: the service process is alive and reports SERVING; every call ended OK or with
one of the statuses we document (never UNKNOWN, INTERNAL, UNAVAILABLE: those mean an exception escaped or the
process died). At the end: no session leaked, no player thread left behind, nothing logged at error level.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from frontend_shim.guests.scripted_audio import new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2
from rdv.display.v1 import display_pb2
from rdv.input.v1 import input_pb2
from services.common.input_keys import QCODE_TO_EVDEV
from services.common.register_writes import MAX_WRITES
from services.devices import svga_regs as SR
from services.devices.svga import SvgaII
from services.devices.svga_convert import registers_to_proto
from tests.display_helpers import start_guest
from tests.fault_helpers import list_sessions, service_threads, wait_for
from tests.fuzz_strategies import (
    DOCUMENTED,
    EXTRA,
    FRAME_HINTS,
    SERVICES,
    blobs,
    es1370_values,
    fuzz_settings,
    message,
    u32,
)
from tests.helpers import ROOT, ServiceProcess, start_service

# Server streams that only end when the client goes: our deadline ends them.
ENDLESS = {"Subscribe", "Watch", "WatchFocus"}
VM = "fuzz-vm"


@dataclass
class Node:
    svc: dict[str, ServiceProcess]
    channels: dict[str, grpc.Channel]
    live: dict[str, str]  # service -> session id of the well-behaved shim running on it


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    logs = tmp_path_factory.mktemp("fuzz-rpc")
    svc = {
        # A fast clock: random PCM that reaches a player drains in milliseconds, not seconds.
        "audio": start_service("audio", logs, "--sink", "null", "--clock-scale", "50"),
        "display": start_service("display", logs, "--presenter", "headless"),
        "input": start_service("input", logs),
    }
    channels = {name: grpc.insecure_channel(s.address) for name, s in svc.items()}
    memory, irq = new_guest()
    audio = AudioLink(svc["audio"].address, "mirrored", memory, irq)
    audio.start()
    _, display = start_guest([svc["display"].address], "mirrored", "lz4", width=320, height=240)
    sub = channels["input"].unary_stream(
        "/rdv.input.v1.InputService/Subscribe",
        request_serializer=input_pb2.SubscribeRequest.SerializeToString,
        response_deserializer=input_pb2.InputEvent.FromString,
    )(input_pb2.SubscribeRequest(vm=VM))
    threading.Thread(target=lambda: [None for _ in _quietly(sub)], daemon=True).start()
    live = {"audio": audio._conn.session_id, "display": display.slots[0].conn.session_id}  # type: ignore[union-attr]
    try:
        yield Node(svc, channels, live)
        sub.cancel()
        audio.close(drain=False)
        display.close(drain=False)
        for name, s in svc.items():  # every fuzzed session ended with its stream, its players too
            assert wait_for(lambda s=s, name=name: name == "input" or not list_sessions(name, s.address), 10)
            if name == "audio":
                assert "player-dac" not in service_threads(name, s.address)
    finally:
        for ch in channels.values():
            ch.close()
        out = ROOT / "build" / "fuzz"
        out.mkdir(parents=True, exist_ok=True)
        summary = {"calls": sum(OUTCOMES.values()), "outcomes": dict(OUTCOMES.most_common())}
        (out / "rpc-outcomes.json").write_text(json.dumps(summary, indent=1))
        for s in svc.values():
            s.stop()
    for s in svc.values():  # nothing escaped as an exception in the services' own threads or callbacks either
        errors = [line for line in s.logs().splitlines() if "level=error" in line or "Traceback" in line]
        assert not errors, "\n".join(errors[:5])


def _quietly(it: Iterator) -> Iterator:
    try:
        yield from it
    except grpc.RpcError:
        return


def _healthy(node: Node, service: str) -> None:
    assert node.svc[service].proc.poll() is None, f"{service} died"
    reply = health_pb2_grpc.HealthStub(node.channels[service]).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


OUTCOMES: Counter[str] = Counter()  # "service method status: details" -> calls (written to build/fuzz)


def _call(channel: grpc.Channel, method: MethodDescriptor, request: object, raw: bool = False) -> grpc.StatusCode:
    """Invoke `method` with `request` (a message, a list of messages for client streams, or bytes when `raw`);
    read everything the server sends; the final status."""
    code, details = _invoke(channel, method, request, raw)
    OUTCOMES[f"{method.name}{' raw' if raw else ''} {code.name}: {details[:48]}"] += 1
    return code


def _invoke(channel: grpc.Channel, method: MethodDescriptor, request: object, raw: bool) -> tuple[grpc.StatusCode, str]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = message_factory.GetMessageClass(method.output_type)
    ser: Callable | None = None if raw else (lambda m: m.SerializeToString())
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    stub = getattr(channel, kind)(path, request_serializer=ser, response_deserializer=out_cls.FromString)
    timeout = 0.1 if method.name in ENDLESS else 10
    try:
        result = stub(iter(request) if method.client_streaming else request, timeout=timeout)
        if method.server_streaming:
            for _ in result:
                pass
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.name in ENDLESS:
            return grpc.StatusCode.OK, "(ended by our deadline)"
        return exc.code(), re.sub(r"\d+", "N", exc.details() or "")
    return grpc.StatusCode.OK, ""


def _check(code: grpc.StatusCode, what: str) -> None:
    assert code in DOCUMENTED, f"{what}: {code}"


# ----------------------------------------------------------------------------------------------- strategies
def _session_ids(node_ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["", *node_ids, "s1", "d1", "s999"]), st.text(max_size=20))


_ES1370_STATE_HINTS: dict[str, st.SearchStrategy] = {
    "rdv.audio.v1.Es1370Channel.leftover": st.integers(0, 3),
    "rdv.audio.v1.Es1370State.channels[]": st.lists(
        message(audio_pb2.Es1370Channel.DESCRIPTOR, {"rdv.audio.v1.Es1370Channel.leftover": st.integers(0, 3)}),
        min_size=3,
        max_size=3,
    ),  # fmt: skip
    "rdv.audio.v1.Es1370State.codec_regs[]": st.just([]),
    "rdv.audio.v1.Es1370State.mempage": st.integers(0, 15),
    "rdv.audio.v1.Es1370State.uart_control": st.integers(0, 255),
}


def _write_batches(offsets: st.SearchStrategy[int], values: st.SearchStrategy[int]) -> dict[str, st.SearchStrategy]:
    """Hints for RegisterWrites: usually a few (offset, value) pairs, sometimes any numbers at all (an odd count,
    or a batch past the limit); sizes none (all 4 bytes), or a few (the right count or not)."""
    pairs = st.lists(st.tuples(offsets, values), min_size=1, max_size=4).map(lambda ws: [n for w in ws for n in w])
    numbers = st.lists(u32(), max_size=7)
    flood = st.integers(MAX_WRITES - 1, MAX_WRITES + 1).map(lambda n: [0, 0] * n)
    sizes = st.lists(st.sampled_from([4, 4, 2, 1, 3, 0]), min_size=1, max_size=4)
    # Weighted by an explicit pick: one_of would merge repeated branches.
    return {
        "rdv.common.v1.RegisterWrites.pairs[]": st.integers(0, 3).flatmap(lambda p: (pairs, pairs, numbers, flood)[p]),
        "rdv.common.v1.RegisterWrites.sizes[]": st.integers(0, 2).flatmap(lambda p: sizes if p == 0 else st.just([])),
    }


_AUDIO_HINTS: dict[str, st.SearchStrategy] = {
    "rdv.audio.v1.Open.mode": st.sampled_from([1, 2]),
    "rdv.audio.v1.Open.state": st.integers(0, 2).flatmap(
        lambda pick: (
            st.just(audio_pb2.Es1370State(channels=[audio_pb2.Es1370Channel()] * 3))
            if pick
            else message(audio_pb2.Es1370State.DESCRIPTOR, _ES1370_STATE_HINTS)
        )
    ),
    "rdv.common.v1.RegisterAccess.bar": st.just(0),
    "rdv.common.v1.RegisterAccess.offset": st.one_of(st.integers(0, 0x3F), st.integers(0, 0x104)),
    "rdv.common.v1.RegisterAccess.size": st.sampled_from([4, 4, 2, 1, 3, 0]),
    "rdv.common.v1.RegisterAccess.value": es1370_values,
    **_write_batches(st.one_of(st.integers(0, 0x3F), st.integers(0, 0x104)), es1370_values),
    "rdv.audio.v1.PcmChunk.channel": st.integers(0, 2),
    "rdv.audio.v1.PcmChunk.data": blobs(max_large=70_000),
    "rdv.audio.v1.DmaData.request_id": st.integers(0, 5),
    **_ES1370_STATE_HINTS,
}
_DISPLAY_HINTS: dict[str, st.SearchStrategy] = {
    **FRAME_HINTS,
    "rdv.display.v1.Open.mode": st.sampled_from([1, 2]),
    "rdv.display.v1.Open.vram_size": st.sampled_from([0, 0, 4096, 1 << 20, 3]),
    "rdv.display.v1.Open.fifo_size": st.sampled_from([0, 0, 4096, 65536, 5]),
    "rdv.display.v1.Open.registers": st.integers(0, 2).flatmap(
        lambda pick: (
            st.just(display_pb2.SvgaRegisters(svga_id=SR.ID_2, width=64, height=48, bpp=32))
            if pick
            else message(display_pb2.SvgaRegisters.DESCRIPTOR, _DISPLAY_HINTS)
        )
    ),
    "rdv.common.v1.RegisterAccess.bar": st.just(0),
    "rdv.common.v1.RegisterAccess.offset": st.integers(0, 18),
    "rdv.common.v1.RegisterAccess.size": st.sampled_from([4, 4, 2, 1, 3]),
    "rdv.common.v1.RegisterAccess.value": st.one_of(st.integers(0, 40), u32()),
    **_write_batches(st.integers(0, 18), st.one_of(st.integers(0, 40), u32())),
    "rdv.display.v1.SvgaRegisters.width": st.integers(0, 100),
    "rdv.display.v1.SvgaRegisters.height": st.integers(0, 100),
    "rdv.display.v1.SvgaRegisters.bpp": st.sampled_from([8, 16, 32, 7]),
    "rdv.display.v1.SvgaRegisters.svga_id": st.sampled_from([SR.ID_0, SR.ID_1, SR.ID_2]),
    "rdv.display.v1.SvgaRegisters.scratch[]": st.lists(u32(), max_size=70),
    "rdv.display.v1.SvgaRegisters.palette[]": st.one_of(
        st.just([]), st.lists(st.integers(0, 255), min_size=768, max_size=768)
    ),
}
_INPUT_HINTS: dict[str, st.SearchStrategy] = {
    "rdv.input.v1.PointerMove.width": st.integers(0, 4096),
    "rdv.input.v1.PointerMove.height": st.integers(0, 4096),
    "rdv.input.v1.Key.qcode": st.one_of(st.sampled_from(sorted(QCODE_TO_EVDEV)), st.text(max_size=12)),
    "rdv.input.v1.Wheel.dx": st.integers(-70, 70),
    "rdv.input.v1.Wheel.dy": st.integers(-70, 70),
    "rdv.input.v1.InjectRequest.vm": st.sampled_from(["", VM, "nobody"]),
    "rdv.input.v1.SetFocusRequest.vm": st.sampled_from(["", VM, "nobody"]),
    "rdv.input.v1.SubscribeRequest.vm": st.one_of(st.sampled_from(["vm-a", "vm-b", "bad name"]), st.text(max_size=70)),
}


def _plausible_svga_registers(width: int, height: int, bpp: int, enable: int) -> display_pb2.SvgaRegisters:
    msg = registers_to_proto(SvgaII(vram=4096, fifo=4096).snapshot())
    msg.width, msg.height, msg.bpp, msg.enable = width, height, bpp, enable
    return msg


_PLAUSIBLE_OPEN = {
    "audio": st.builds(
        audio_pb2.Open,
        vm=st.text(max_size=12),
        mode=st.sampled_from([1, 2]),
        state=st.one_of(st.none(), message(audio_pb2.Es1370State.DESCRIPTOR, _ES1370_STATE_HINTS)),
    ),
    "display": st.builds(
        display_pb2.Open,
        vm=st.text(max_size=12),
        mode=st.sampled_from([1, 2]),
        vram_size=st.sampled_from([0, 1 << 20, 4 << 20]),
        fifo_size=st.sampled_from([0, 4096, 65536]),
        registers=st.one_of(st.none(), st.builds(_plausible_svga_registers, st.integers(1, 100), st.integers(1, 100),
                                                 st.sampled_from([8, 16, 32]), st.integers(0, 3))),
    ),
}  # fmt: skip


def _opens(service: str, hints: dict) -> st.SearchStrategy:
    """3 in 4: an `open` a shim could send; else any `open` at all."""
    anything = message((audio_pb2 if service == "audio" else display_pb2).Open.DESCRIPTOR, hints)
    return st.integers(0, 3).flatmap(lambda pick: anything if pick == 0 else _PLAUSIBLE_OPEN[service])


_AUDIO_MIX = ["access"] * 4 + ["writes"] * 3 + ["pcm"] * 3 + ["barrier"] * 2 + ["dma_data", "resync", "open", None]
_DISPLAY_MIX = ["access"] * 3 + ["writes"] * 3 + ["frame"] * 5 + ["fifo_done"] * 2 + ["barrier"] * 2 + ["open", None]


def _stream(kind: type, hints: dict, mix: list[str | None], renumber: bool) -> st.SearchStrategy[list]:
    """A session: usually a plausible `open` first (so the rest reaches the session), then a mix of messages
    weighted towards the ones a session mostly carries, each with random contents."""
    d = kind.DESCRIPTOR

    def member(name: str | None) -> st.SearchStrategy:
        if name is None:
            return st.just(kind())  # no member set at all
        sub = hints.get(f"{d.full_name}.{name}")
        if sub is None:
            sub = message(d.fields_by_name[name].message_type, hints)
        return st.builds(lambda m, name=name: kind(**{name: m}), sub)

    opening = member("open")
    anything = message(d, hints)
    head = st.integers(0, 5).flatmap(lambda pick: anything if pick == 0 else opening)  # one_of merges repeats
    rest = st.lists(st.sampled_from(mix).flatmap(member), max_size=10)

    def assemble(first: object, tail: list) -> list:
        if renumber:  # increasing frame ids, or every frame after the first is refused for that alone
            n = 0
            for m in tail:
                if m.WhichOneof("kind") == "frame":
                    n += 1
                    m.frame.frame_id = n
        return [first, *tail]

    return st.builds(assemble, head, rest)


# ----------------------------------------------------------------------------------------------- tests
@fuzz_settings(ci=60, weight=0.05)
@given(data=st.data())
def test_session_streams(node: Node, data: st.DataObject) -> None:
    service = data.draw(st.sampled_from(["audio", "display"]))
    kind = audio_pb2.FrontendMessage if service == "audio" else display_pb2.FrontendMessage
    hints = _AUDIO_HINTS if service == "audio" else _DISPLAY_HINTS
    mix = _AUDIO_MIX if service == "audio" else _DISPLAY_MIX
    hints = {**hints, f"{kind.DESCRIPTOR.full_name}.open": _opens(service, hints)}
    messages = data.draw(_stream(kind, hints, mix, renumber=data.draw(st.booleans())))
    code = _call(node.channels[service], SERVICES[service].methods_by_name["Session"], messages)
    _check(code, f"{service} Session {[m.WhichOneof('kind') for m in messages]}")
    _healthy(node, service)


_UNARY = [(name, m) for name, desc in SERVICES.items() for m in desc.methods if m.name != "Session"]


@fuzz_settings(ci=20, weight=0.02)
@given(data=st.data())
@pytest.mark.parametrize(("service", "method"), _UNARY, ids=[f"{s}-{m.name}" for s, m in _UNARY])
def test_other_rpcs(node: Node, service: str, method: MethodDescriptor, data: st.DataObject) -> None:
    hints = {
        **_INPUT_HINTS,
        "rdv.audio.v1.GetDeviceStateRequest.session_id": _session_ids([node.live["audio"]]),
        "rdv.display.v1.ScreenshotRequest.session_id": _session_ids([node.live["display"]]),
        "rdv.display.v1.GetDisplayStateRequest.session_id": _session_ids([node.live["display"]]),
    }
    request = message(method.input_type, hints)
    payload = data.draw(st.lists(request, max_size=8) if method.client_streaming else request)
    _check(_call(node.channels[service], method, payload), f"{service} {method.name}")
    _healthy(node, service)


@fuzz_settings(ci=40, weight=0.05)
@given(data=st.data())
def test_health_and_reflection(node: Node, data: st.DataObject) -> None:
    service = data.draw(st.sampled_from(sorted(SERVICES)))
    method = data.draw(st.sampled_from([m for s in EXTRA for m in s.methods]))
    request = message(method.input_type, {"grpc.health.v1.HealthCheckRequest.service": st.sampled_from(
        ["", "rdv.audio.v1.AudioService", "nope"])})  # fmt: skip
    payload = data.draw(st.lists(request, max_size=4) if method.client_streaming else request)
    _check(_call(node.channels[service], method, payload), f"{service} {method.full_name}")
    _healthy(node, service)


_ALL_METHODS = [(name, m) for name, desc in SERVICES.items() for m in desc.methods] + [
    (name, m) for name in SERVICES for s in EXTRA for m in s.methods
]


@fuzz_settings(ci=60, weight=0.1)
@given(data=st.data())
def test_random_bytes_to_every_method(node: Node, data: st.DataObject) -> None:
    """Bytes that are not (or only by chance) a message of the method's type."""
    service, method = data.draw(st.sampled_from(_ALL_METHODS))
    chunk = st.one_of(st.binary(max_size=64), blobs(max_large=20_000))
    payload = data.draw(st.lists(chunk, max_size=5) if method.client_streaming else chunk)
    _check(_call(node.channels[service], method, payload, raw=True), f"{service} {method.full_name} (raw)")
    _healthy(node, service)


def test_sessions_of_the_fuzz_are_all_gone(node: Node) -> None:
    """Only the well-behaved shims' sessions remain (each fuzzed stream ended its session)."""
    time.sleep(0.2)
    for service, sid in node.live.items():
        ids = [s.session_id for s in list_sessions(service, node.svc[service].address)]
        assert ids == [sid], ids
