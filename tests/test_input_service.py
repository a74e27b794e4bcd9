"""The input service as a process: validation, focus, cleanup of vanished subscribers, slow subscribers."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as ev
from services.common.input_publisher import InputPublisher
from tests.helpers import ROOT


class Subscription:
    """A raw Subscribe stream read by a thread into a queue (what a shim does, minus QEMU)."""

    def __init__(self, address: str, vm: str, *, read: bool = True, options: list | None = None) -> None:
        self.channel = grpc.insecure_channel(address, options=options or [])
        self.call = input_pb2_grpc.InputServiceStub(self.channel).Subscribe(input_pb2.SubscribeRequest(vm=vm))
        self.headers = dict(self.call.initial_metadata())  # returns once the hub registered us
        self.events: queue.Queue[input_pb2.InputEvent] = queue.Queue()
        self.error: grpc.RpcError | None = None
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for e in self.call:
                self.events.put(e)
        except grpc.RpcError as exc:
            self.error = exc

    def get(self, n: int, timeout: float = 5.0) -> list[input_pb2.InputEvent]:
        return [self.events.get(timeout=timeout) for _ in range(n)]

    def nothing(self, wait: float = 0.2) -> bool:
        time.sleep(wait)
        return self.events.empty()

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def input_svc(services):
    svc = services("input")
    channel = grpc.insecure_channel(svc.address)
    subs: list[Subscription] = []

    class Api:
        address = svc.address
        stub = input_pb2_grpc.InputServiceStub(channel)
        process = svc

        @staticmethod
        def subscribe(vm: str, **kw: object) -> Subscription:
            s = Subscription(svc.address, vm, **kw)  # type: ignore[arg-type]
            subs.append(s)
            return s

        @staticmethod
        def inject(*events: input_pb2.InputEvent, vm: str = "") -> input_pb2.InjectResponse:
            return Api.stub.Inject(input_pb2.InjectRequest(vm=vm, events=events), timeout=5)

        @staticmethod
        def error(*events: input_pb2.InputEvent, vm: str = "") -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as info:
                Api.inject(*events, vm=vm)
            return info.value

        @staticmethod
        def focus() -> input_pb2.FocusState:
            return Api.stub.GetFocus(input_pb2.GetFocusRequest(), timeout=5)

    yield Api
    for s in subs:
        s.close()
    channel.close()


BAD = {
    "unknown key": (ev.key("Enter", True), "unknown key 'Enter'", "'ret'"),
    "no kind": (input_pb2.InputEvent(source="x"), "no kind", "pointer_move, button, wheel, key"),
    "zero width": (ev.move(1, 1, 0, 768), "pointer_move.width", "1..32768"),
    "huge height": (ev.move(1, 1, 1024, 40000), "pointer_move.height", "40000"),
    "unspecified button": (input_pb2.InputEvent(button=input_pb2.ButtonEvent(pressed=True)), "BUTTON_LEFT", ""),
    "unknown button number": (input_pb2.InputEvent(button=input_pb2.ButtonEvent(button=9)), "got 9", ""),
    "empty wheel": (ev.wheel(0, 0), "scrolls nothing", ""),
    "wheel too far": (ev.wheel(0, 500), "-64..64", ""),
    "long source": (input_pb2.InputEvent(key=input_pb2.Key(qcode="a"), source="s" * 100), "source", "64"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_events_are_refused_with_a_clear_message(input_svc, case: str) -> None:
    event, *needles = BAD[case]
    sub = input_svc.subscribe("vm1")
    err = input_svc.error(ev.key("a", True), event)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("events[1]: ")
    for needle in needles:
        assert needle in err.details()
    assert sub.nothing()  # all or nothing: the valid first event was not delivered either


def test_inject_without_subscribers_or_events(input_svc) -> None:
    err = input_svc.error(ev.key("a", True))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "forward-input" in err.details()
    err = input_svc.error()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.details()
    input_svc.subscribe("vm1")
    err = input_svc.error(ev.key("a", True), vm="vm9")
    assert err.code() == grpc.StatusCode.NOT_FOUND and "'vm1'" in err.details()


def test_subscribe_needs_a_vm_name(input_svc) -> None:
    for vm in ("", "two words", "x" * 65):
        with pytest.raises(grpc.RpcError) as info:
            list(input_svc.stub.Subscribe(input_pb2.SubscribeRequest(vm=vm), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "vm must be" in info.value.details()


def test_positions_off_the_desktop_are_clamped(input_svc) -> None:
    sub = input_svc.subscribe("vm1")
    reply = input_svc.inject(ev.move(-5, 10_000, 1024, 768), ev.key("a", True), ev.move(3, 4, 1024, 768))
    assert (reply.delivered, reply.clamped) == (3, 1)
    first, _, last = sub.get(3)
    assert (first.pointer_move.x, first.pointer_move.y) == (0, 767)
    assert (last.pointer_move.x, last.pointer_move.y) == (3, 4)
    assert first.source == "inject" and first.timestamp_ns > 0 and first.seq == 1


def test_consecutive_moves_coalesce_but_never_across_keys_or_buttons(input_svc) -> None:
    sub = input_svc.subscribe("vm1")
    moves = [ev.move(x, 1, 2000, 10) for x in range(1000)]
    input_svc.inject(*moves, ev.button("left", True), *moves[:500], ev.button("left", False))
    got = sub.get(4)
    assert [e.WhichOneof("kind") for e in got] == ["pointer_move", "button", "pointer_move", "button"]
    assert (got[0].pointer_move.x, got[2].pointer_move.x) == (999, 499)
    assert sub.nothing()
    counters = input_svc.stub.ListSessions(common_pb2.ListSessionsRequest()).sessions[0].counters
    assert counters["coalesced"] == 999 + 499 and counters["delivered"] == 4


def test_focus_follows_the_latest_subscriber_until_chosen(input_svc) -> None:
    one = input_svc.subscribe("vm1")
    two = input_svc.subscribe("vm2")
    assert two.headers["rdv-focus"] == "vm2"
    state = input_svc.focus()
    assert (state.focused, state.chosen, list(state.subscribed)) == ("vm2", "", ["vm1", "vm2"])
    assert "most recently subscribed" in state.rule
    input_svc.inject(ev.key("b", True), ev.key("b", False))
    assert [e.key.qcode for e in two.get(2)] == ["b", "b"] and one.nothing()

    chosen = input_svc.stub.SetFocus(input_pb2.SetFocusRequest(vm="vm1"))
    assert (chosen.focused, chosen.chosen) == ("vm1", "vm1")
    input_svc.inject(ev.key("c", True))
    assert one.get(1)[0].key.qcode == "c" and two.nothing()
    three = input_svc.subscribe("vm3")  # a newer subscriber does not take a chosen focus away
    assert input_svc.focus().focused == "vm1"
    assert input_svc.inject(ev.key("d", True), vm="vm3").vm == "vm3"  # an explicit target bypasses focus
    assert three.get(1)[0].key.qcode == "d" and one.nothing(0.05)

    with pytest.raises(grpc.RpcError) as info:
        input_svc.stub.SetFocus(input_pb2.SetFocusRequest(vm="vm7"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert input_svc.stub.SetFocus(input_pb2.SetFocusRequest(vm="")).focused == "vm3"  # back to the latest
    # vm1 lost focus holding "c": the hub released it there
    released = one.get(1)[0]
    assert (released.key.qcode, released.key.pressed, released.source) == ("c", False, "rdv-input:focus")

    one.close()  # a chosen VM that goes away gives focus back to the latest; coming back, it has it again
    input_svc.stub.SetFocus(input_pb2.SetFocusRequest(vm="vm2"))
    two.close()
    deadline = time.monotonic() + 5
    while input_svc.focus().focused != "vm3":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    back = input_svc.subscribe("vm2")
    assert input_svc.focus().focused == "vm2" and back.headers["rdv-focus"] == "vm2"


def test_a_new_subscription_replaces_the_old_one_for_the_same_vm(input_svc) -> None:
    old = input_svc.subscribe("vm1")
    new = input_svc.subscribe("vm1")
    input_svc.inject(ev.key("a", True))
    assert new.get(1)[0].key.qcode == "a"
    deadline = time.monotonic() + 5
    while old.error is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert old.error.code() == grpc.StatusCode.ABORTED and "replaced" in old.error.details()
    assert list(input_svc.focus().subscribed) == ["vm1"]


def test_a_subscriber_that_vanishes_is_cleaned_up(input_svc, tmp_path) -> None:
    # a real shim process, killed without any chance to say goodbye
    shim = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "forward-input", "--input", input_svc.address,
         "--qmp", str(tmp_path / "no-qemu.sock"), "--vm", "doomed"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "doomed" not in input_svc.focus().subscribed:
            assert time.monotonic() < deadline and shim.poll() is None
            time.sleep(0.02)
        shim.send_signal(signal.SIGKILL)
        shim.wait(5)
        while input_svc.focus().subscribed:
            assert time.monotonic() < deadline + 5, "the dead subscriber was never removed"
            time.sleep(0.02)
    finally:
        shim.kill()
        shim.wait(5)
    assert input_svc.focus().focused == ""
    assert not input_svc.stub.ListSessions(common_pb2.ListSessionsRequest()).sessions


def test_a_subscriber_that_stops_reading_gets_drops_counted_not_a_stalled_service(services) -> None:
    svc = services("input", "--queue-limit", "16")
    channel = grpc.insecure_channel(svc.address)
    stub = input_pb2_grpc.InputServiceStub(channel)
    # no BDP probing: the HTTP/2 window stays at 64 KiB, so the service's writes block soon
    stuck = Subscription(svc.address, "stuck", read=False, options=[("grpc.http2.bdp_probe", 0)])
    try:
        keys = [ev.key("a", i % 2 == 0) for i in range(4096)]
        dropped = sum(stub.Inject(input_pb2.InjectRequest(events=keys), timeout=10).dropped for _ in range(12))
        assert dropped > 0
        t0 = time.monotonic()
        assert stub.GetFocus(input_pb2.GetFocusRequest(), timeout=5).focused == "stuck"
        assert time.monotonic() - t0 < 1
        session = stub.ListSessions(common_pb2.ListSessionsRequest()).sessions[0]
        assert session.counters["dropped"] == dropped and session.counters["pending"] <= 16
        assert "subscriber queue full" in svc.logs()
    finally:
        stuck.close()
        channel.close()


def test_publish_stream_delivers_and_summarises(input_svc) -> None:
    sub = input_svc.subscribe("vm1")
    events = [ev.key("q", True), ev.move(5000, 5, 100, 100), ev.key("q", False)]
    for e in events:
        e.source = "my-window"
    summary = input_svc.stub.Publish(iter(events), timeout=5)
    assert (summary.received, summary.delivered, summary.clamped, summary.unrouted) == (3, 3, 1, 0)
    got = sub.get(3)
    assert [e.source for e in got] == ["my-window"] * 3
    assert got[1].pointer_move.x == 99


def test_publish_stream_stops_at_an_invalid_event(input_svc) -> None:
    sub = input_svc.subscribe("vm1")
    with pytest.raises(grpc.RpcError) as info:
        input_svc.stub.Publish(iter([ev.key("a", True), ev.key("nope", True), ev.key("b", True)]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event 2" in info.value.details() and "unknown key 'nope'" in info.value.details()
    assert [e.key.qcode for e in sub.get(1)] == ["a"] and sub.nothing()


def test_publisher_never_blocks_and_reconnects(services) -> None:
    svc = services("input")
    address = svc.address
    pub = InputPublisher(address, source="test", max_queue=8).start()
    try:
        assert pub.wait_connected(10)
        svc.stop(sig_kill=True)
        t0 = time.perf_counter()
        for x in range(10_000):
            pub.move(x % 100, 0, 100, 100)
        pub.key("a", True)
        pub.key("a", False)
        assert time.perf_counter() - t0 < 2.0  # no I/O on the caller's thread
        with pytest.raises(ev.InvalidEvent):
            pub.key("bogus", True)
        again = services("input", listen=address)
        sub = Subscription(again.address, "vm1")
        try:
            assert pub.flush(10)
            got = sub.get(3)
            assert [e.WhichOneof("kind") for e in got] == ["pointer_move", "key", "key"]
            assert got[0].pointer_move.x == 99 and got[0].source == "test"
        finally:
            sub.close()
        # the first move may have gone into the dying stream; the rest coalesced while the service was away
        assert pub.stats["coalesced"] >= 9_998 and pub.stats["reconnects"] >= 1
    finally:
        pub.close()
