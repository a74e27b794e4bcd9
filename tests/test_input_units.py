"""The pure parts of remote input: the hub's queue policy, the evdev translator, the shim's command cutting."""

from __future__ import annotations

from frontend_shim.links.input_forward import qmp_events, scale, split_commands
from rdv.input.v1 import input_pb2
from services.common import input_events as ev
from services.common.input_keys import EVDEV_TO_QCODE, HID_TO_QCODE, QCODES
from services.input.evdev import EV_ABS, EV_KEY, EV_REL, EV_SYN, Desktop, EvdevTranslator
from services.input.hub import Hub


def kinds(events: list[input_pb2.InputEvent]) -> list[str]:
    return [ev.describe(e) for e in events]


def test_full_queue_drops_oldest_motion_first_then_counts_dropped_keys() -> None:
    hub = Hub(queue_limit=4)
    sub = hub.subscribe("vm1", "test")
    hub.deliver([ev.move(1, 1, 10, 10), ev.key("a", True), ev.move(2, 2, 10, 10), ev.key("a", False)])
    d = hub.deliver([ev.key("b", True)])  # full: the oldest move makes room
    assert d.delivered == 1 and kinds(list(sub.queue)) == [
        "key a down", "move 2,2/10x10", "key a up", "key b down"
    ]  # fmt: skip
    hub.deliver([ev.key("c", True)])
    d = hub.deliver([ev.key("d", True)])  # no motion left to drop: the new key is dropped and counted
    assert (d.delivered, d.dropped) == (0, 1)
    assert sub.counters["dropped"] == 1 and sub.counters["dropped_motion"] == 2
    assert kinds(sub.take()) == ["key a down", "key a up", "key b down", "key c down"]


def test_focus_rule_and_release_on_focus_loss() -> None:
    hub = Hub()
    assert hub.focused() == ""
    a = hub.subscribe("a", "p")
    b = hub.subscribe("b", "p")
    assert hub.focused() == "b"
    hub.deliver([ev.key("shift", True), ev.button("left", True), ev.key("x", True), ev.key("x", False)])
    b.take()
    hub.set_focus("a")
    assert hub.focused() == "a"
    assert kinds(b.take()) == ["key shift up", "button left up"]  # what b still held
    hub.unsubscribe(a)
    assert hub.focused() == "b" and hub.chosen == "a"
    a2 = hub.subscribe("a", "p")
    assert hub.focused() == "a" and not a2.queue


def test_evdev_relative_motion_accumulates_and_clamps() -> None:
    t = EvdevTranslator(Desktop(100, 50))
    assert kinds(t.feed(EV_REL, 0, 30) + t.feed(EV_REL, 1, -5) + t.feed(EV_SYN, 0, 0)) == ["move 80,20/100x50"]
    out = t.feed(EV_REL, 0, 1000) + t.feed(EV_REL, 1, 1000) + t.feed(EV_REL, 8, 2) + t.feed(EV_SYN, 0, 0)
    assert kinds(out) == ["move 99,49/100x50", "wheel 0,2"]
    out = t.feed(EV_REL, 0, -3) + t.feed(EV_KEY, 0x110, 1) + t.feed(EV_SYN, 0, 0)
    assert kinds(out) == ["move 96,49/100x50", "button left down"]  # the click happens after the move
    assert kinds(t.feed(EV_KEY, 30, 1) + t.feed(EV_KEY, 30, 2) + t.feed(EV_KEY, 30, 0)) == [
        "key a down", "key a down", "key a up"
    ]  # fmt: skip
    assert t.feed(EV_KEY, 0x2FF, 1) == [] and t.ignored == 1
    assert kinds(t.feed(EV_REL, 6, -200) + t.feed(EV_SYN, 0, 0)) == ["wheel -64,0", "wheel -64,0", "wheel -64,0",
                                                                       "wheel -8,0"]  # fmt: skip
    t.feed(EV_REL, 0, 5)
    assert t.feed(EV_SYN, 3, 0) == [] and t.feed(EV_SYN, 0, 0) == []  # SYN_DROPPED forgets the partial frame


def test_evdev_absolute_axes_scale_from_the_device_range() -> None:
    t = EvdevTranslator(Desktop(1000, 500), {0: (0, 4095), 1: (100, 1100)})
    out = t.feed(EV_ABS, 0, 4095) + t.feed(EV_ABS, 1, 600) + t.feed(EV_SYN, 0, 0)
    assert kinds(out) == ["move 999,250/1000x500"]
    assert kinds(t.feed(EV_ABS, 1, -50) + t.feed(EV_SYN, 0, 0)) == ["move 999,0/1000x500"]


def test_key_tables_only_produce_qcodes_qemu_knows() -> None:
    assert set(EVDEV_TO_QCODE.values()) <= QCODES and set(HID_TO_QCODE.values()) <= QCODES
    assert (EVDEV_TO_QCODE[99], EVDEV_TO_QCODE[55], EVDEV_TO_QCODE[28]) == ("print", "kp_multiply", "ret")
    assert (HID_TO_QCODE[4], HID_TO_QCODE[39], HID_TO_QCODE[40], HID_TO_QCODE[225]) == ("a", "0", "ret", "shift")


def test_commands_hold_one_pointer_report_each() -> None:
    m = ev.move(1, 1, 10, 10)
    down, up = ev.button("left", True), ev.button("left", False)
    keys = [ev.key("a", True), ev.key("a", False)]
    cut = split_commands([m, down, up, *keys, m, ev.wheel(dy=1), m])
    assert [kinds(c) for c in cut] == [
        ["move 1,1/10x10", "button left down"],
        ["button left up", "key a down", "key a up"],  # a move here would move the release
        ["move 1,1/10x10", "wheel 0,1"],
        ["move 1,1/10x10"],
    ]
    assert scale(0, 640) == 0 and scale(639, 640) == 0x7FFF and scale(0, 1) == 0
    assert qmp_events(ev.wheel(dx=-1)) == [
        {"type": "btn", "data": {"down": True, "button": "wheel-left"}},
        {"type": "btn", "data": {"down": False, "button": "wheel-left"}},
    ]
