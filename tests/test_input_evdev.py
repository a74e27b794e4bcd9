"""The evdev source end to end: `struct input_event` records written into a FIFO given as --evdev reach a subscriber.

A FIFO stands in for /dev/input/eventN (no uinput here): the service reads it exactly as a device, minus the
ioctls, and a writer closing it looks like an unplugged device that comes back.
"""

from __future__ import annotations

import os
import struct
import time

import grpc

from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from tests.test_input_service import Subscription

RECORD = struct.Struct("@llHHi")  # struct input_event on 64-bit Linux, written the way the kernel does


def records(*items: tuple[int, int, int]) -> bytes:
    now = time.time()
    return b"".join(RECORD.pack(int(now), int(now % 1 * 1e6), t, c, v) for t, c, v in items)


SYN = (0, 0, 0)


def test_evdev_device_events_reach_the_focused_vm(services, tmp_path) -> None:
    fifo = tmp_path / "event7"
    os.mkfifo(fifo)
    svc = services("input", "--evdev", str(fifo), "--desktop", "800x600")
    sub = Subscription(svc.address, "vm1")
    try:
        fd = os.open(fifo, os.O_WRONLY)  # blocks until the service opened its end
        frame = records((2, 0, 10), (2, 1, -20), SYN, (1, 0x110, 1), SYN, (1, 0x110, 0), SYN,
                        (1, 42, 1), (1, 30, 1), SYN, (1, 30, 0), (1, 42, 0), SYN, (2, 8, -1), SYN)  # fmt: skip
        os.write(fd, frame[:30])  # a record split across reads is reassembled
        time.sleep(0.05)
        os.write(fd, frame[30:])
        got = sub.get(8)
        assert [ev.describe(e) for e in got] == [
            "move 410,280/800x600", "button left down", "button left up",
            "key shift down", "key a down", "key a up", "key shift up", "wheel 0,-1",
        ]  # fmt: skip
        assert {e.source for e in got} == {f"evdev:{fifo}"}
        assert [e.seq for e in got] == list(range(1, 9))
        os.close(fd)  # unplugged ...
        deadline = time.monotonic() + 10
        while "input device went away" not in svc.logs():  # reopening before the service closed its end would
            assert time.monotonic() < deadline  # hand the write to a reader about to close (EPIPE)
            time.sleep(0.01)
        fd = os.open(fifo, os.O_WRONLY)  # ... and back: the service reopens it
        os.write(fd, records((1, 28, 1), SYN, (1, 28, 0), SYN))
        assert [ev.describe(e) for e in sub.get(2)] == ["key ret down", "key ret up"]
        os.close(fd)
    finally:
        sub.close()
    with grpc.insecure_channel(svc.address) as channel:
        stub = input_pb2_grpc.InputServiceStub(channel)
        info = stub.GetServiceInfo(common_pb2.GetServiceInfoRequest())
        assert "evdev" in info.features and info.config["desktop"] == "800x600"
        source = [s for s in stub.ListSessions(common_pb2.ListSessionsRequest()).sessions if s.session_id[:4] == "src-"]
        assert len(source) == 1 and source[0].counters["delivered"] == 10
        assert stub.GetFocus(input_pb2.GetFocusRequest()).subscribed == []
    assert "input device went away" in svc.logs()
