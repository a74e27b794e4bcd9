"""The stage's window rules with a scripted presenter: closing a VM's window hides its view while the VM runs on
(its frames are acknowledged unshown) and focusing it shows it again; the switcher shows one VM at a time with
its name over the picture; a window losing the keyboard releases every key its VM holds; a window's events go to
its VM only while it has the focus; a VM that comes back takes its window over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from services.common.raster import Rect
from services.display.desktop import Desktop, DesktopMode
from services.display.presenters import RenderJob, WindowEvent
from services.display.presenters.headless import HeadlessPresenter
from services.display.stage import KEY_N, GuestInput, PendingAck, Stage
from services.display.viewport import Viewport

CTRL, ALT, KEY_A = 0xE0, 0xE2, 0x04


class ScriptedPresenter(HeadlessPresenter):
    has_events = True  # `send` hands it window events, pumped like SDL's

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[RenderJob] = []
        self.closed: list[int] = []
        self.focused: list[int] = []
        self.events: list[WindowEvent] = []
        self.lock = threading.Lock()

    def render(self, job: RenderJob) -> None:
        super().render(job)
        with self.lock:
            self.jobs.append(job)

    def close_window(self, window: int) -> None:
        super().close_window(window)
        self.closed.append(window)

    def focus_window(self, window: int) -> None:
        self.focused.append(window)

    def poll_events(self) -> list[WindowEvent]:
        with self.lock:
            out, self.events = self.events, []
        return out

    def send(self, *events: WindowEvent) -> None:
        with self.lock:
            self.events.extend(events)


class FakeSession:
    def __init__(self, vm: str, n: int) -> None:
        self.session_id, self.vm = f"d{n}", vm
        self.desktop = Desktop()
        self.desktop.mode = DesktopMode(64, 48, 32)
        self.desktop.pixels = bytearray(64 * 48 * 4)
        self.acks: list[tuple[int, bool]] = []

    def cursor_image(self) -> None:
        return None

    def palette(self) -> bytes:
        return b""

    def acknowledge(self, acks: list[PendingAck], presented_ns: int, presented: bool) -> None:
        self.acks += [(a.frame_id, presented) for a in acks]


def wait_for(what: str, check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return got


def frame(stage: Stage, s: FakeSession, frame_id: int) -> None:
    stage.damaged(s, Rect(0, 0, 8, 8), PendingAck(frame_id, 0, 0, 0), False, False)


def make(mode: str = "windows") -> tuple[Stage, ScriptedPresenter, list[GuestInput], list[str]]:
    presenter, inputs, told = ScriptedPresenter(), [], []
    stage = Stage(presenter, Viewport(), 200.0, inputs.append, window_mode=mode, on_focus=told.append)
    stage.start()
    return stage, presenter, inputs, told


def two_vms(stage: Stage) -> tuple[FakeSession, FakeSession]:
    a, b = FakeSession("A", 1), FakeSession("B", 2)
    stage.attach(a)
    stage.attach(b)
    return a, b


def test_closing_a_window_hides_the_vm_which_runs_on_and_comes_back_on_focus() -> None:
    stage, presenter, _, told = make()
    try:
        a, b = two_vms(stage)
        frame(stage, a, 1)
        wait_for("A presented", lambda: (1, True) in a.acks)
        key_a = next(j.window for j in presenter.jobs if j.title.startswith("rdv A "))
        presenter.send(WindowEvent("close", window=key_a))
        wait_for("A's window closed", lambda: key_a in presenter.closed)
        frame(stage, a, 2)  # the VM runs on: its frames are acknowledged, not shown
        wait_for("A's frame acknowledged unshown", lambda: (2, False) in a.acks)
        assert not stage.on_screen(a) and stage.state(a).hidden and stage.on_screen(b)
        stage.follow_focus("A")  # SetFocus at the input service: A is shown again, in a window of its own
        wait_for("A shown again", lambda: stage.on_screen(a))
        frame(stage, a, 3)
        wait_for("A presented again", lambda: (3, True) in a.acks)
        assert stage.state(a).title == "rdv A - running 64x48 - input" and not stage.state(a).hidden
        assert told == []  # the input service's own move is not told back to it
    finally:
        stage.stop()


def test_window_events_reach_the_focused_vm_only_and_focus_loss_releases_keys() -> None:
    stage, presenter, inputs, told = make()
    try:
        a, b = two_vms(stage)
        frame(stage, b, 1)
        wait_for("both windows", lambda: {j.title.split()[1] for j in presenter.jobs} == {"A", "B"})
        keys = {j.title.split()[1]: j.window for j in presenter.jobs}
        assert stage.focused_vm() == "A"  # the first VM; the input service would say otherwise
        presenter.send(WindowEvent("motion", x=5, y=5, window=keys["B"], window_w=64, window_h=48),
                       WindowEvent("key", scancode=KEY_A, pressed=True, window=keys["A"]))  # fmt: skip
        wait_for("A's key", lambda: inputs)
        assert [(g.vm, g.event.kind) for g in inputs] == [("A", "key")]  # B's motion went nowhere
        # A click in B's window: the focus moves there first (told to the input service), then the click goes to B.
        presenter.send(WindowEvent("button", x=5, y=6, button="left", pressed=True, window=keys["B"], window_w=64,
                                   window_h=48),  # fmt: skip
                       WindowEvent("focus_out", window=keys["A"]))
        wait_for("B's click", lambda: any(g.vm == "B" for g in inputs))
        assert told == ["B"] and stage.focused_vm() == "B"
        assert [(g.vm, g.event.kind, g.x, g.y) for g in inputs if g.vm == "B"] == [("B", "button", 5, 6)]
        # A held the key when its window lost the keyboard; the input service released it (the focus moved).
        # A window that keeps the focus but loses the keyboard (Alt-Tab) releases what its VM holds itself:
        presenter.send(WindowEvent("key", scancode=KEY_A, pressed=True, window=keys["B"]),
                       WindowEvent("focus_out", window=keys["B"]))  # fmt: skip
        wait_for("B's release", lambda: [g for g in inputs if g.vm == "B" and g.event.kind == "key"][-1:]
                 and not [g for g in inputs if g.vm == "B" and g.event.kind == "key"][-1].event.pressed)  # fmt: skip
    finally:
        stage.stop()


def test_switcher_shows_one_vm_with_its_name_and_the_hot_key_moves_on() -> None:
    stage, presenter, inputs, told = make("switcher")
    try:
        a, b = two_vms(stage)
        frame(stage, a, 1)
        frame(stage, b, 1)
        wait_for("A shown", lambda: (1, True) in a.acks and (1, False) in b.acks)
        assert {(j.window, j.label, j.fullscreen) for j in presenter.jobs} == {(0, "A", True)}
        presenter.send(WindowEvent("key", scancode=CTRL, pressed=True), WindowEvent("key", scancode=ALT, pressed=True),
                       WindowEvent("key", scancode=KEY_N, pressed=True))  # fmt: skip
        wait_for("B shown", lambda: presenter.jobs[-1].label == "B")
        assert told == ["B"] and stage.on_screen(b) and not stage.on_screen(a)
        assert presenter.titles[0].startswith("rdv B - running")
        assert all(g.event.scancode != KEY_N for g in inputs)  # the hot key never reaches a guest
    finally:
        stage.stop()


def test_a_vm_that_comes_back_takes_its_window_over() -> None:
    stage, presenter, _, _ = make()
    try:
        old = FakeSession("A", 1)
        stage.attach(old)
        frame(stage, old, 1)
        wait_for("A presented", lambda: old.acks)
        window = presenter.jobs[-1].window
        stage.detach(old)
        wait_for("A disconnected", lambda: presenter.jobs[-1].title.startswith("rdv A - disconnected"))
        new = FakeSession("A", 2)
        stage.attach(new)
        frame(stage, new, 1)
        wait_for("the new session presented", lambda: new.acks)
        assert presenter.jobs[-1].window == window and presenter.closed == []
        assert stage.find("A") is new
    finally:
        stage.stop()
