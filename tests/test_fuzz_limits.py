"""Hostile traffic that is not random but built to hurt: oversize messages, decompression bombs on the wire,
slow-loris streams (silent, or trickling a byte at a time), floods of idle streams. The services refuse what
they must with the documented status, time out what they must, and keep serving well-behaved clients meanwhile.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import lz4.block
import pytest
import zstandard
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.guests.pcm import melody
from frontend_shim.guests.scripted_audio import ScriptedEs1370Driver, new_guest
from frontend_shim.links.audio import AudioLink
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import codec, server
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.fault_helpers import list_sessions, wait_for
from tests.fuzz_strategies import EXTRA, SERVICES

OPEN_TIMEOUT = 1.5  # the services' --open-timeout in these tests
NINE_MIB = 9 << 20


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from tests.helpers import start_service

    logs = tmp_path_factory.mktemp("limits")
    args = ("--open-timeout", str(OPEN_TIMEOUT))
    svc = {
        "audio": start_service("audio", logs, "--sink", "null", "--clock-scale", "4", *args),
        "display": start_service("display", logs, "--presenter", "headless", *args),
        "input": start_service("input", logs, *args),
    }
    yield svc
    for s in svc.values():
        s.stop()


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


# ----------------------------------------------------------------------------------------------- oversize
def test_a_9_mib_message_is_refused_by_every_method_of_every_service(node: dict) -> None:
    """The 8 MiB limit (services/common/server.py) holds for every RPC, streaming or not, ours or gRPC's own."""
    assert server.DEFAULT_MAX_MESSAGE_BYTES == 8 << 20
    blob = b"\x0a" + bytes(NINE_MIB)  # the size is refused before anything is parsed
    methods = {name: [*desc.methods, *(m for s in EXTRA for m in s.methods)] for name, desc in SERVICES.items()}
    calls = [(name, m) for name, ms in methods.items() for m in ms]

    def send(name: str, method: MethodDescriptor) -> tuple[str, str, grpc.StatusCode]:
        path = f"/{method.containing_service.full_name}/{method.name}"
        kind = ("stream" if method.client_streaming else "unary") + "_" + (
            "stream" if method.server_streaming else "unary")  # fmt: skip
        with grpc.insecure_channel(node[name].address) as ch:
            call = getattr(ch, kind)(path, request_serializer=None, response_deserializer=None)
            try:
                result = call(iter([blob]) if method.client_streaming else blob, timeout=20)
                if method.server_streaming:
                    list(result)
                return name, path, grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return name, path, exc.code()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: send(*c), calls))
    got = Counter(code.name for _, _, code in results)
    wrong = [f"{name} {path}: {code}" for name, path, code in results if code != grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert not wrong, wrong
    for name in SERVICES:
        assert _healthy(node[name].address)
    assert got["RESOURCE_EXHAUSTED"] == len(calls) >= 20


def test_bombs_on_the_wire_are_refused_and_the_session_before_them_survives(node: dict) -> None:
    """Small payloads that would decode to far more than their rectangle, in every codec; a well-behaved
    session drawing meanwhile keeps an exact picture."""
    address = node["display"].address
    driver, link = start_guest([address], "mirrored", "zstd", width=320, height=240)
    mode = display_pb2.FrameMode(width=64, height=64, bpp=32, pitch=256, enabled=True)
    bombs = {
        "zstd": zstandard.ZstdCompressor().compress(bytes(64 << 20)),
        "lz4": lz4.block.compress(bytes(8 << 20), store_size=False),
        "lzo": codec.encode("lzo", bytes(8 << 20)),
        "image": codec.encode("image", bytes(8 << 20), 64),
    }
    try:
        for name, payload in bombs.items():
            enc = getattr(display_pb2, f"ENCODING_{name.upper()}")
            px = display_pb2.PixelRect(rect=display_pb2.Rect(width=64, height=64), encoding=enc, payload=payload,
                                       decoded_size=64 * 64 * 4)  # fmt: skip
            frame = display_pb2.Frame(frame_id=1, mode=mode, updates=[display_pb2.DisplayUpdate(pixels=px)])
            open_ = display_pb2.Open(mode=common_pb2.COHERENCE_MODE_MIRRORED)
            messages = [display_pb2.FrontendMessage(open=open_), display_pb2.FrontendMessage(frame=frame)]
            with grpc.insecure_channel(address) as ch:
                with pytest.raises(grpc.RpcError) as err:
                    list(display_pb2_grpc.DisplayServiceStub(ch).Session(iter(messages), timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            driver.run(seconds=5, fps=0, max_ticks=2)
        driver.sync()
        assert link.flush(10)
        w, _, rgb, _ = screenshot(address, link.slots[0].conn.session_id)  # type: ignore[union-attr]
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
        assert link.stats.reconnects == 0
    finally:
        link.close()


# ----------------------------------------------------------------------------------------------- slow loris
class _SilentStreams:
    """`n` session streams that never send anything (each gRPC call holds a client thread: that is fine here)."""

    def __init__(self, address: str, path: str, n: int, channels: int = 8) -> None:
        self.release = threading.Event()
        self.codes: Counter[str] = Counter()
        self.ended_at: list[float] = []
        self._lock = threading.Lock()
        self.channels = [grpc.insecure_channel(address) for _ in range(channels)]
        self.started = time.monotonic()
        self.threads = []
        for i in range(n):
            call = self.channels[i % channels].stream_stream(path, request_serializer=None,
                                                             response_deserializer=None)  # fmt: skip
            t = threading.Thread(target=self._run, args=(call,), daemon=True)
            t.start()
            self.threads.append(t)

    def _silence(self) -> Iterator[bytes]:
        self.release.wait(30)
        return
        yield b""

    def _run(self, call) -> None:  # noqa: ANN001
        try:
            for _ in call(self._silence(), timeout=30):
                pass
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        with self._lock:
            self.codes[code] += 1
            self.ended_at.append(time.monotonic() - self.started)

    def close(self) -> None:
        self.release.set()
        for t in self.threads:
            t.join(10)
        for ch in self.channels:
            ch.close()


@pytest.mark.parametrize("service", ["audio", "display"])
def test_silent_streams_are_evicted_or_timed_out_while_a_shim_works(node: dict, service: str) -> None:
    """150 streams that never send `open` (more than the 32 that may wait at once): the oldest give way at once
    (RESOURCE_EXHAUSTED), the rest end after the open timeout (INVALID_ARGUMENT); meanwhile a real shim opens
    its session and works, and health stays SERVING."""
    address = node[service].address
    path = f"/rdv.{service}.v1.{service.capitalize()}Service/Session"
    loris = _SilentStreams(address, path, 150)
    try:
        time.sleep(0.3)  # the flood is in place
        started = time.monotonic()
        if service == "audio":
            memory, irq = new_guest()
            link = AudioLink(address, "mirrored", memory, irq, clock=Clock(4))
            link.start()
            fmt = PcmFormat(44100, 2, 16)
            result = ScriptedEs1370Driver(link, memory, irq).play(melody(fmt, 1.0), fmt, period_frames=512)
            link.close()
            assert result.interrupts == result.periods
        else:
            driver, dlink = start_guest([address], "backend", "lz4", width=320, height=240)
            driver.run(seconds=5, fps=0, max_ticks=5)
            driver.sync()
            assert dlink.flush(10)
            w, _, rgb, _ = screenshot(address, dlink.slots[0].conn.session_id)  # type: ignore[union-attr]
            dlink.close()
            assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
        worked_in = time.monotonic() - started
        assert _healthy(address)
        assert wait_for(lambda: sum(loris.codes.values()) == 150, OPEN_TIMEOUT + 5), loris.codes
    finally:
        loris.close()
    assert set(loris.codes) == {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}, loris.codes
    assert loris.codes["INVALID_ARGUMENT"] <= 32  # at most that many ever waited
    assert max(loris.ended_at) <= OPEN_TIMEOUT + 0.3 + 2.0  # started 0.3 s before; 2 s for a loaded machine
    assert not list_sessions(service, address)
    print(f"\nFIGURES slow-loris-{service}: {dict(loris.codes)} shim worked in {worked_in:.2f} s")


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _hpack(name: str, value: str) -> bytes:
    """A literal header field without indexing, no Huffman coding (names and values under 127 bytes)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes((len(n),)) + n + bytes((len(v),)) + v


@pytest.mark.parametrize("service", ["audio", "display"])
def test_a_stream_trickling_its_open_a_byte_at_a_time_is_ended(node: dict, service: str) -> None:
    """A hand-made HTTP/2 client: the session stream's first message arrives one byte every 0.25 s. The message
    is never complete within the open timeout, so the service ends the stream (grpc-status in trailers)."""
    address = node[service].address
    host, _, port = address.rpartition(":")
    headers = b"".join(_hpack(k, v) for k, v in [
        (":method", "POST"), (":scheme", "http"), (":path", f"/rdv.{service}.v1.{service.capitalize()}Service/Session"),
        (":authority", address), ("content-type", "application/grpc"), ("te", "trailers"),
    ])  # fmt: skip
    body = b"\x00" + struct.pack(">I", 64) + bytes(64)  # a 64-byte message: 69 bytes at 4 per second
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0) + _h2_frame(1, 4, 1, headers))
        s.settimeout(0.25)
        started, sent, buf, ended = time.monotonic(), 0, b"", None
        while ended is None and time.monotonic() - started < OPEN_TIMEOUT + 5:
            if sent < len(body):
                s.sendall(_h2_frame(0, 0, 1, body[sent : sent + 1]))
                sent += 1
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                size, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload, buf = buf[9 : 9 + size], buf[9 + size :]
                if kind == 4 and not flags & 1:
                    s.sendall(_h2_frame(4, 1, 0))  # acknowledge the server's SETTINGS
                elif kind == 6 and not flags & 1:
                    s.sendall(_h2_frame(6, 1, 0, payload))  # answer its PING
                elif stream == 1 and ((kind == 1 and flags & 1) or kind == 3):  # trailers (END_STREAM) or RST_STREAM
                    ended = time.monotonic() - started
                    assert kind == 3 or b"grpc-status" in payload
    assert ended is not None, "the trickling stream was never ended"
    assert OPEN_TIMEOUT - 0.1 <= ended <= OPEN_TIMEOUT + 2.0
    assert sent < len(body)  # it ended while the message was still incomplete
    assert _healthy(address)


def test_idle_publish_and_subscribe_floods_are_bounded(node: dict) -> None:
    """Input streams may idle for hours (a still mouse), so they are counted, not timed out: beyond the maximum
    (32 by default) new ones are refused, and Inject, Subscribe of a known VM and health keep working."""
    address = node["input"].address
    loris = _SilentStreams(address, "/rdv.input.v1.InputService/Publish", 60)
    try:
        assert wait_for(lambda: loris.codes["RESOURCE_EXHAUSTED"] >= 60 - 32, 10), loris.codes
        with grpc.insecure_channel(address) as ch:
            stub = input_pb2_grpc.InputServiceStub(ch)
            sub = stub.Subscribe(input_pb2.SubscribeRequest(vm="good-vm"))
            sub.initial_metadata()
            reply = stub.Inject(input_pb2.InjectRequest(vm="good-vm", events=[
                input_pb2.InputEvent(key=input_pb2.Key(qcode="a", pressed=True))]), timeout=5)  # fmt: skip
            assert reply.delivered == 1
            assert next(sub).key.qcode == "a"
            sub.cancel()
        assert _healthy(address)
    finally:
        loris.close()
    assert loris.codes["RESOURCE_EXHAUSTED"] == 60 - 32


def test_sessions_beyond_the_maximum_are_refused(tmp_path) -> None:  # noqa: ANN001
    """--max-sessions bounds what one service holds (players, desktops); one more session is refused cleanly."""
    from tests.helpers import start_service

    svc = start_service("audio", tmp_path, "--sink", "null", "--max-sessions", "2")
    links = []
    try:
        for _ in range(2):
            memory, irq = new_guest()
            links.append(AudioLink(svc.address, "backend", memory, irq))
            links[-1].start()
        open_ = audio_pb2.FrontendMessage(open=audio_pb2.Open(mode=common_pb2.COHERENCE_MODE_BACKEND))
        with grpc.insecure_channel(svc.address) as ch:
            with pytest.raises(grpc.RpcError) as err:
                list(audio_pb2_grpc.AudioServiceStub(ch).Session(iter([open_]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        links.pop().close()
        memory, irq = new_guest()
        links.append(AudioLink(svc.address, "backend", memory, irq))
        links[-1].start()  # room again
    finally:
        for link in links:
            link.close()
        svc.stop()
