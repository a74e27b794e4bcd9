"""The session streams' messages cross gRPC without grpcio's helper threads (frontend_shim/links/grpc_direct.py):
sent from the thread that has them, replies handled on the channel's thread. Checked against the real audio
service, with the pinned grpcio taking the direct path and `--no-grpc-direct` (grpcio's request thread and a
reader thread) giving the same messages in the same order: every message arrives once and in order when several
threads send at once, a half-close waits for what is queued, the end of a stream is reported once with its reason,
a handler's failure ends the session with a log line, and a backend register read wakes two of the shim's
threads, not four."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend_shim.links import grpc_direct
from frontend_shim.links.base import LinkStats
from frontend_shim.links.session_stream import SessionStream
from rdv.audio.v1 import audio_pb2, audio_pb2_grpc
from rdv.common.v1 import common_pb2
from services.devices import es1370_regs as R
from tests.bench.vfio import serve_vfio_user
from tests.bench.vfio_client import SyncVfioUserClient
from tests.helpers import ServiceProcess, start_service
from tests.test_idle_wakeups import _switches

SENDERS, EACH = 4, 150


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("audio", tmp_path_factory.mktemp("svc"), "--sink", "null")
    yield svc
    svc.stop()


@pytest.fixture(params=[True, False], ids=["direct", "grpcio-threads"])
def direct(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(grpc_direct, "enabled", request.param)
    return request.param


class Session:
    """A SessionStream to the audio service, recording what it hands over and how it ended."""

    def __init__(self, address: str, fail_on: str = "") -> None:
        self.stream = SessionStream(address, None, LinkStats(), audio_pb2.FrontendMessage)
        self.acks: list[int] = []
        self.threads: set[str] = set()
        self.lost: list[str] = []
        self.ended = threading.Event()
        self._fail_on = fail_on
        self.stream.start(audio_pb2_grpc.AudioServiceStub(self.stream.channel).Session, self._message, self._lost, "rx")
        self.stream.send(
            audio_pb2.FrontendMessage(open=audio_pb2.Open(vm="direct", mode=common_pb2.COHERENCE_MODE_BACKEND))
        )

    def _message(self, stream: SessionStream, msg: audio_pb2.BackendMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == self._fail_on:
            raise RuntimeError("a handler's bug")
        self.threads.add(threading.current_thread().name)
        if kind == "opened":
            stream.opened.set()
        elif kind == "barrier_ack":
            self.acks.append(msg.barrier_ack.seq)

    def _lost(self, _stream: SessionStream, error: str) -> None:
        self.lost.append(error)
        self.ended.set()

    def barrier(self, seq: int) -> None:
        self.stream.send(audio_pb2.FrontendMessage(barrier=common_pb2.Barrier(seq=seq)))


def test_the_pinned_grpcio_is_driven_directly(audio: ServiceProcess) -> None:
    """An upgrade of grpcio that changes what DirectCall relies on fails here, not silently slower."""
    s = Session(audio.address)
    try:
        assert s.stream.opened.wait(10)
        assert s.stream.direct
        assert "rx" not in s.threads  # the reply was handled on gRPC's channel thread ...
        assert not any(t.name == "rx" for t in threading.enumerate())  # ... and no reader thread was started
    finally:
        s.stream.close()


def test_messages_from_several_threads_arrive_once_and_in_order(audio: ServiceProcess, direct: bool) -> None:
    s = Session(audio.address)
    lock = threading.Lock()
    sent: list[int] = []
    seqs = iter(range(1, SENDERS * EACH + 1))

    def send() -> None:
        for _ in range(EACH):
            with lock:  # as a link sends under its lock: the order it takes is the stream's
                seq = next(seqs)
                sent.append(seq)
                s.barrier(seq)

    try:
        assert s.stream.opened.wait(10)
        senders = [threading.Thread(target=send) for _ in range(SENDERS)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        deadline = time.monotonic() + 30
        while len(s.acks) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.acks == sent
        assert s.stream.direct == direct
        assert s.stream._stats.messages_to_service == 1 + SENDERS * EACH
    finally:
        s.stream.close()


def test_a_half_close_waits_for_what_is_queued_and_the_end_is_told_once(audio: ServiceProcess, direct: bool) -> None:
    s = Session(audio.address)
    assert s.stream.opened.wait(10)
    for seq in range(1, 201):
        s.barrier(seq)  # most are still queued behind the message on its way when finish() half-closes
    s.stream.finish(10)
    assert s.acks == list(range(1, 201))  # the service answered them all before it ended the stream
    assert s.lost == ["stream ended"]
    assert not s.stream.alive


def test_closing_cancels_and_says_so_once(audio: ServiceProcess, direct: bool) -> None:
    s = Session(audio.address)
    assert s.stream.opened.wait(10)
    s.stream.close()
    assert s.ended.wait(10)
    time.sleep(0.1)
    assert len(s.lost) == 1 and s.lost[0].startswith("CANCELLED"), s.lost


def test_a_failing_handler_ends_the_session_with_a_log_line(
    audio: ServiceProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Direct: the handler runs on gRPC's channel thread, which must go on; the session ends instead (the link's
    supervisor then reopens it) and the log says why."""
    with caplog.at_level(logging.ERROR, logger="rdv.links.grpc"):
        s = Session(audio.address, fail_on="barrier_ack")
        assert s.stream.opened.wait(10)
        s.barrier(1)
        assert s.ended.wait(10), "the session did not end"
    assert s.lost and s.lost[0].startswith("CANCELLED"), s.lost
    assert "could not be handled" in caplog.text
    s2 = Session(audio.address)  # the process's gRPC still works
    try:
        assert s2.stream.opened.wait(10)
        s2.barrier(7)
        deadline = time.monotonic() + 10
        while not s2.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s2.acks == [7]
    finally:
        s2.stream.close()
        s.stream.close()


class _Unserializable:
    def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
        return 1

    def SerializeToString(self) -> bytes:  # noqa: N802
        raise ValueError("a bug: this message cannot be serialized")


def test_a_message_that_cannot_be_sent_ends_the_session_and_blocks_no_sender(
    audio: ServiceProcess, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rdv.links.grpc"):
        s = Session(audio.address)
        assert s.stream.opened.wait(10)
        s.stream.send(_Unserializable())
        assert s.ended.wait(10), "the session did not end"
    assert s.lost and s.lost[0].startswith("CANCELLED"), s.lost
    assert "could not be sent" in caplog.text
    assert s.stream._direct is not None and not s.stream._direct._sending  # the sending slot was given back
    s.stream.close()


def _switches_by_thread(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = _switches(pid, int(tid))
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return out


def _threads_woken_per_backend_read(workdir: Path, env: dict[str, str] | None, reads: int = 300) -> list[float]:
    """Each of the shim's threads' waits per backend ES1370 read, most first."""
    with serve_vfio_user("es1370", "backend", workdir, env=env) as shim:
        client = SyncVfioUserClient(shim.socket)
        try:
            client.version()
            for _ in range(20):
                client.read32(0, R.STATUS)
            before = _switches_by_thread(shim.proc.pid)
            for _ in range(reads):
                client.read32(0, R.STATUS)
            after = _switches_by_thread(shim.proc.pid)
        finally:
            client.close()
    return sorted(((n - before.get(tid, 0)) / reads for tid, n in after.items()), reverse=True)


def test_a_backend_read_wakes_two_of_the_shims_threads_not_four(tmp_path: Path) -> None:
    """The shim as QEMU starts it, serving backend ES1370 reads: the threads that wait (and so are woken) at least
    every other read. Directly: the connection's thread and the channel's thread, which answers the guest. With
    `RDV_GRPC_DIRECT=0`: also grpcio's request thread (which also waits for each send to be reported) and the
    link's reader thread. How often each waits varies with the load (2-4 times a read, GIL waits included:
    3.2-5.7 in all directly against 7.7-11.8 measured here); which threads wake does not."""
    direct = _threads_woken_per_backend_read(tmp_path, None)
    threads = _threads_woken_per_backend_read(tmp_path, {"RDV_GRPC_DIRECT": "0"})
    woken = {name: [round(x, 2) for x in got if x >= 0.5] for name, got in (("direct", direct), ("threads", threads))}
    assert len(woken["direct"]) <= 2 and len(woken["threads"]) >= 4, woken
