"""Remote input into a real QEMU 7.2: events published to the input service arrive in QEMU's input layer.

QEMU runs with no disk and no display (SeaBIOS idles), a QMP socket per forwarder and its `input_event_*` trace
events in a file: what QEMU received is read from QEMU itself. `input-send-event` needs a running VM, so no -S.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common.input_keys import QCODES
from services.common.input_publisher import InputPublisher
from tests.helpers import ROOT

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (make setup installs it)")
TRACE = re.compile(r"input_event_(key_qcode|abs|btn|rel) con (-?\d+), (.*)")


@dataclass
class Qemu:
    """One QEMU process; `start()` again after `kill()` gives a new process on the same sockets."""

    workdir: Path
    devices: list[str] = field(default_factory=lambda: ["usb-ehci", "usb-tablet"])
    qmp_sockets: int = 1
    trace_input: bool = True  # off for benchmarks: tracing costs QEMU time
    proc: subprocess.Popen | None = None
    runs: int = 0

    def qmp(self, i: int = 0) -> str:
        return str(self.workdir / f"qmp{i}.sock")

    @property
    def trace(self) -> Path:
        return self.workdir / f"trace{self.runs}.log"

    def start(self) -> Qemu:
        self.runs += 1
        args = [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "32", "-display", "none", "-nodefaults"]
        if self.trace_input:
            args += ["-trace", "enable=input_event_*", "-D", str(self.trace)]
        for d in self.devices:
            args += ["-device", d]
        for i in range(self.qmp_sockets):
            Path(self.qmp(i)).unlink(missing_ok=True)
            args += ["-qmp", f"unix:{self.qmp(i)},server=on,wait=off"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / f"qemu{self.runs}.err").open("w"))  # fmt: skip
        deadline = time.monotonic() + 10
        while not all(Path(self.qmp(i)).exists() for i in range(self.qmp_sockets)):
            assert self.proc.poll() is None, (self.workdir / f"qemu{self.runs}.err").read_text()
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket"
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def events(self) -> list[tuple[str, int, str]]:
        """(event, console, details) as QEMU traced them, e.g. ("key_qcode", -1, "key qcode a, down 1")."""
        text = self.trace.read_text() if self.trace.exists() else ""
        return [(m[1], int(m[2]), m[3].strip()) for m in TRACE.finditer(text)]

    def wait_events(self, count: int, timeout: float = 10.0) -> list[tuple[str, int, str]]:
        deadline = time.monotonic() + timeout
        while len(got := self.events()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return got


def qmp_call(path: str, command: str, arguments: dict | None = None) -> dict:
    """A one-off QMP command from the test (not the forwarder's client)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        f = s.makefile("rw")
        f.readline()
        for cmd in (
            {"execute": "qmp_capabilities"},
            {"execute": command, **({"arguments": arguments} if arguments else {})},
        ):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while "return" not in (reply := json.loads(f.readline())) and "error" not in reply:
                pass
        return reply


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Callable[..., Qemu]]:
    made: list[Qemu] = []

    def make(**kw: object) -> Qemu:
        q = Qemu(tmp_path / f"qemu{len(made)}", **kw)  # type: ignore[arg-type]
        q.workdir.mkdir()
        made.append(q)
        return q.start()

    yield make
    for q in made:
        q.kill()


@dataclass
class Forwarder:
    proc: subprocess.Popen
    log: Path

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


@pytest.fixture
def forwarder(tmp_path: Path) -> Iterator[Callable[..., Forwarder]]:
    """Start the real shim command `forward-input`; all are stopped at the end of the test."""
    started: list[Forwarder] = []

    def start(input_address: str, qmp: str, vm: str = "vm1", *extra: str, wait: bool = True) -> Forwarder:
        log = tmp_path / f"forward-{vm}-{len(started)}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "frontend_shim", "--log-level", "info", "forward-input",
             "--input", input_address, "--qmp", qmp, "--vm", vm, "--json", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
        )  # fmt: skip
        fwd = Forwarder(proc, log)
        started.append(fwd)
        if wait:
            wait_subscribed(input_address, vm)
        return fwd

    yield start
    for fwd in started:
        if fwd.proc.poll() is None:
            fwd.proc.kill()
            fwd.proc.wait(5)


def stub(address: str) -> tuple[grpc.Channel, input_pb2_grpc.InputServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, input_pb2_grpc.InputServiceStub(channel)


def wait_subscribed(address: str, vm: str, present: bool = True, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    channel, s = stub(address)
    with channel:
        while True:
            try:
                if (vm in s.GetFocus(input_pb2.GetFocusRequest(), timeout=1).subscribed) == present:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"vm {vm} {'never subscribed' if present else 'still subscribed'}"
            time.sleep(0.02)


def axis(pixel: int, size: int) -> str:
    """The documented scaling, as QEMU prints it: first pixel 0, last pixel 0x7fff, rounded."""
    return f"value {round(pixel * 0x7FFF / (size - 1)):#x}"


def inject(address: str, *events: input_pb2.InputEvent, vm: str = "") -> input_pb2.InjectResponse:
    channel, s = stub(address)
    with channel:
        return s.Inject(input_pb2.InjectRequest(vm=vm, events=events), timeout=5)


# ---------------------------------------------------------------------------------------------------------------


def test_key_table_is_qemus_qcode_list(qemu) -> None:
    q = qemu(devices=[])
    schema = qmp_call(q.qmp(), "query-qmp-schema")["return"]
    enums = [e["values"] for e in schema if e.get("meta-type") == "enum" and "kp_1" in e.get("values", [])]
    assert len(enums) == 1
    assert set(enums[0]) - {"unmapped"} == QCODES


def test_injected_keys_moves_buttons_and_wheel_arrive_in_qemu(services, qemu, forwarder) -> None:
    svc = services("input")
    q = qemu()
    fwd = forwarder(svc.address, q.qmp())
    reply = inject(
        svc.address,
        ev.key("shift", True), ev.key("a", True), ev.key("a", False), ev.key("shift", False),
        ev.key("ret", True), ev.key("ret", False), ev.key("kp_1", True), ev.key("kp_1", False),
        ev.move(0, 0, 1024, 768),
        ev.move(1023, 767, 1024, 768),
        ev.move(512, 384, 1024, 768),
        ev.button("left", True), ev.button("left", False),
        ev.button("right", True), ev.button("right", False),
        ev.button("middle", True), ev.button("side", True), ev.button("extra", True),
        ev.wheel(dy=2), ev.wheel(dy=-1), ev.wheel(dx=1),
    )  # fmt: skip
    assert reply.vm == "vm1" and reply.delivered == 21
    got = q.wait_events(25)
    assert len(got) == 25
    assert [(e, d) for e, _, d in got[:8]] == [
        ("key_qcode", "key qcode shift, down 1"), ("key_qcode", "key qcode a, down 1"),
        ("key_qcode", "key qcode a, down 0"), ("key_qcode", "key qcode shift, down 0"),
        ("key_qcode", "key qcode ret, down 1"), ("key_qcode", "key qcode ret, down 0"),
        ("key_qcode", "key qcode kp_1, down 1"), ("key_qcode", "key qcode kp_1, down 0"),
    ]  # fmt: skip
    # consecutive moves coalesce into the last one
    assert [d for e, _, d in got[8:10]] == [f"axis x, {axis(512, 1024)}", f"axis y, {axis(384, 768)}"]
    assert axis(512, 1024) == "value 0x4010"
    assert [d for _, _, d in got[10:]] == [
        "button left, down 1", "button left, down 0", "button right, down 1", "button right, down 0",
        "button middle, down 1", "button side, down 1", "button extra, down 1",
        "button wheel-up, down 1", "button wheel-up, down 0", "button wheel-up, down 1", "button wheel-up, down 0",
        "button wheel-down, down 1", "button wheel-down, down 0",
        "button wheel-right, down 1", "button wheel-right, down 0",
    ]  # fmt: skip
    assert {c for _, c, _ in got} == {-1}  # no device given: QEMU routes to any handler
    inject(svc.address, ev.move(0, 0, 1920, 1080), ev.move(1919, 1079, 1920, 1080))
    edges = q.wait_events(27)[25:]
    assert [d for _, _, d in edges] == ["axis x, value 0x7fff", "axis y, value 0x7fff"]  # coalesced to the last
    counters = fwd.stop()
    assert counters.get("qmp_errors", 0) == 0
    # the forwarder let go of the three buttons still held when it stopped
    assert counters["released"] == 3
    assert counters["injected"] + counters.get("coalesced", 0) == counters["received"] + counters["released"]
    assert [d for _, _, d in q.events()[27:]] == [
        "button middle, down 0", "button side, down 0", "button extra, down 0"
    ]  # fmt: skip


def test_published_stream_arrives_in_qemu(services, qemu, forwarder) -> None:
    svc = services("input")
    q = qemu()
    forwarder(svc.address, q.qmp())
    pub = InputPublisher(svc.address, source="test-window").start()
    try:
        assert pub.wait_connected(10)
        pub.key("ctrl", True)
        pub.key("c", True)
        pub.key("c", False)
        pub.key("ctrl", False)
        for x in range(0, 800, 8):  # a drag: motion, press, motion, release
            pub.move(x, 100, 800, 600)
        pub.button("left", True)
        pub.move(799, 599, 800, 600)
        pub.button("left", False)
        assert pub.flush(5)
        got = q.wait_events(10)
    finally:
        pub.close()
    assert [d for _, _, d in got[:4]] == [
        "key qcode ctrl, down 1", "key qcode c, down 1", "key qcode c, down 0", "key qcode ctrl, down 0"
    ]  # fmt: skip
    pointer = [d for e, _, d in got[4:] if e in ("abs", "btn")]
    # the press lands where the pointer was, and the release after the final move
    assert pointer[-5:] == [
        f"axis y, {axis(100, 600)}", "button left, down 1", "axis x, value 0x7fff", "axis y, value 0x7fff",
        "button left, down 0",
    ]  # fmt: skip
    assert pointer[-6] == f"axis x, {axis(792, 800)}"
    assert pub.stats["published"] == 107


def test_qmp_device_reaches_a_tablet_bound_to_a_display(services, qemu, forwarder) -> None:
    svc = services("input")
    q = qemu(devices=["VGA,id=video0", "usb-ehci", "usb-tablet,display=video0"], qmp_sockets=2)
    bound = forwarder(svc.address, q.qmp(0), "bound", "--qmp-device", "video0")
    unbound = forwarder(svc.address, q.qmp(1), "unbound")
    inject(svc.address, ev.move(100, 50, 200, 100), ev.key("b", True), vm="bound")
    got = q.wait_events(3)
    assert got == [("abs", 0, f"axis x, {axis(100, 200)}"), ("abs", 0, f"axis y, {axis(50, 100)}"),
                   ("key_qcode", 0, "key qcode b, down 1")]  # fmt: skip
    # without the device id QEMU finds no tablet for absolute events and refuses the command; the forwarder
    # then delivers what QEMU can take (the key) one event at a time
    inject(svc.address, ev.move(100, 50, 200, 100), ev.key("u", True), vm="unbound")
    got = q.wait_events(4)
    assert got[3:] == [("key_qcode", -1, "key qcode u, down 1")]
    time.sleep(0.2)
    assert len(q.events()) == 4
    assert unbound.stop()["qmp_errors"] == 1
    assert bound.stop().get("qmp_errors", 0) == 0


def test_forwarder_survives_qemu_restart(services, qemu, forwarder) -> None:
    svc = services("input")
    q = qemu()
    fwd = forwarder(svc.address, q.qmp())
    inject(svc.address, ev.key("1", True), ev.key("1", False))
    assert len(q.wait_events(2)) == 2
    q.kill()  # the QMP socket closes under the forwarder
    inject(svc.address, ev.key("2", True), ev.key("2", False))  # pending while QEMU is away
    time.sleep(0.3)
    q.start()
    inject(svc.address, ev.key("3", True), ev.key("3", False))
    got = q.wait_events(4)
    assert [d for _, _, d in got] == [
        "key qcode 2, down 1", "key qcode 2, down 0", "key qcode 3, down 1", "key qcode 3, down 0"
    ]  # fmt: skip
    assert fwd.stop()["qmp_connects"] == 2


def test_forwarder_resubscribes_when_the_input_service_restarts(services, qemu, forwarder) -> None:
    svc = services("input")
    q = qemu()
    fwd = forwarder(svc.address, q.qmp())
    inject(svc.address, ev.key("x", True))
    assert len(q.wait_events(1)) == 1
    svc.stop(sig_kill=True)
    # the forwarder lets go of the key it held: the guest must not see it stuck
    assert [d for _, _, d in q.wait_events(2)] == ["key qcode x, down 1", "key qcode x, down 0"]
    again = services("input", listen=svc.address)
    wait_subscribed(again.address, "vm1")
    inject(again.address, ev.key("y", True), ev.key("y", False))
    assert [d for _, _, d in q.wait_events(4)[2:]] == ["key qcode y, down 1", "key qcode y, down 0"]
    assert fwd.stop()["subscriptions"] == 2


def test_forwarder_waits_for_qemu_that_is_not_there_yet(services, tmp_path, forwarder) -> None:
    svc = services("input")
    q = Qemu(tmp_path / "late")
    q.workdir.mkdir()
    fwd = forwarder(svc.address, q.qmp(), "late")
    inject(svc.address, ev.key("z", True), ev.key("z", False))
    time.sleep(0.3)
    try:
        q.start()
        assert [d for _, _, d in q.wait_events(2)] == ["key qcode z, down 1", "key qcode z, down 0"]
    finally:
        q.kill()
    assert "cannot reach QMP" in fwd.log.read_text()
    assert os.path.exists(q.qmp())
