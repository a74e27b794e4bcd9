"""The display's one presenting thread: one view per VM, which VM has the keyboard, damage coalescing, pacing.

Every session is shown in a view of its own: a window each (`windows` mode), or one full-screen window that
shows the focused VM with its name over the picture (`switcher` mode; Ctrl+Alt+N moves to the next VM). A
view outlives its session: the window keeps the last picture, titled `disconnected`, until the same VM comes
back (it takes its window over) or more than MAX_GONE such views pile up. Closing a window hides the view; the
VM runs on, and focusing it (the switcher key, the input service's SetFocus) shows it again.

Sessions report what each applied frame changed (`damaged`); the stage accumulates the damage that falls
inside the viewport, per view, and presents at most `refresh_hz` times a second: when the previous present is
older than one refresh interval it presents at once (an idle screen shows a change with no added delay),
otherwise it waits for the next slot and everything that arrived meanwhile goes out in one present. Frames are
acknowledged when the present that shows them is done; frames that change nothing visible (or whose view is
not shown) are acknowledged at once, so a hidden or slow VM never holds another's pictures back.

Input: a window's events go to its VM only while that VM has the focus (no event ever reaches another VM); a
click in another VM's window, a window manager giving it the keyboard, or the switcher key moves the focus
there first (and `on_focus` tells the input service, in stream order); `follow_focus` takes a focus change the
input service made (SetFocus). A window losing the keyboard releases every key its VM still holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common import logs
from services.common.raster import EMPTY, Rect
from services.display.desktop import Desktop
from services.display.presenters import CursorImage, Presenter, RenderJob, WindowEvent
from services.display.viewport import Viewport

log = logs.get("display.stage")
_EVENT_POLL = 0.01  # seconds between window event polls while idle
WINDOW_MODES = ("windows", "switcher")
MAX_GONE = 4  # views of ended sessions kept (their last picture) before the oldest window closes
SWITCHER_WINDOW = 0
# Hot keys: Ctrl+Alt+<key> (USB HID usages); the key itself never reaches the guest.
_CTRL = frozenset({0xE0, 0xE4})
_ALT = frozenset({0xE2, 0xE6})
KEY_P = 0x13  # pairing: show a PIN
KEY_F = 0x09  # full screen on/off
KEY_G = 0x0A  # grab the pointer and keyboard / release them
KEY_N = 0x11  # next VM (focus it; the switcher shows it)
HOT_KEYS = {
    "Ctrl+Alt+F": "full screen on/off",
    "Ctrl+Alt+G": "grab the pointer and keyboard for the VM (window manager keys reach it) / release the grab",
    "Ctrl+Alt+N": "next VM: move the keyboard and mouse to it (the switcher shows it)",
    "Ctrl+Alt+P": "pairing: show a PIN (nodes that pair)",
}


@dataclass(slots=True)
class PendingAck:
    frame_id: int
    received_ns: int
    applied_ns: int
    sent_ns: int


class Source(Protocol):
    """What the stage needs from a session."""

    session_id: str
    vm: str
    desktop: Desktop

    def cursor_image(self) -> CursorImage | None: ...

    def palette(self) -> bytes: ...

    def acknowledge(self, acks: list[PendingAck], presented_ns: int, presented: bool) -> None: ...


@dataclass
class GuestInput:
    """A window event in guest desktop coordinates (x, y valid for motion and button), for VM `vm`."""

    event: WindowEvent
    x: int
    y: int
    desktop_w: int
    desktop_h: int
    vm: str = ""


@dataclass
class _Pending:
    damage: Rect = EMPTY
    full: bool = False
    cursor: bool = False
    acks: list[PendingAck] = field(default_factory=list)

    def dirty(self) -> bool:
        return self.full or self.cursor or not self.damage.empty or bool(self.acks)


@dataclass(eq=False)
class View:
    """One VM's picture on this node: its session (or the last one's picture) and its window."""

    key: int
    source: Source
    pending: _Pending = field(default_factory=_Pending)
    connected: bool = True
    hidden: bool = False  # the user closed its window
    grabbed: bool = False
    held: set[int] = field(default_factory=set)  # keys this window pressed in the guest and not released yet

    @property
    def vm(self) -> str:
        return self.source.vm


@dataclass(frozen=True)
class ViewState:
    title: str
    focused: bool
    hidden: bool
    connected: bool
    shown: bool


class Stage:
    def __init__(
        self,
        presenter: Presenter,
        viewport: Viewport,
        refresh_hz: float = 60.0,
        on_input: Callable[[GuestInput], None] | None = None,
        on_pair_key: Callable[[], None] | None = None,
        window_mode: str = "windows",
        on_focus: Callable[[str], None] | None = None,
    ) -> None:
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window mode {window_mode!r}: one of {', '.join(WINDOW_MODES)}")
        self.presenter = presenter
        self.on_pair_key = on_pair_key
        self.on_focus = on_focus
        self.window_mode = window_mode
        self._held: set[int] = set()  # every key held on this node's keyboard (hot key modifiers)
        self._notice: tuple[str | None] | None = None  # a notice the stage thread has still to hand over
        self.viewport = viewport
        self.refresh_hz = refresh_hz
        self.on_input = on_input
        self.presents = 0
        self._interval = 1.0 / refresh_hz if refresh_hz > 0 else 0.0
        self._cond = threading.Condition()
        self._views: list[View] = []  # in the order they were made
        self._by_source: dict[int, View] = {}
        self._focus: View | None = None
        self._remote_focus: str | None = None  # the input service's focus, as last heard
        self._keys = 1  # window keys (SWITCHER_WINDOW is 0)
        self._actions: list[Callable[[], None]] = []  # presenter calls other threads asked for
        self._switcher_hidden = False
        self._stop = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="display-stage", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(5)

    # ------------------------------------------------------------------ sessions
    def attach(self, source: Source) -> None:
        with self._cond:
            view = next((v for v in reversed(self._views) if not v.connected and v.vm == source.vm), None)
            if view is None:
                view = View(self._keys, source)
                self._keys += 1
                self._views.append(view)
            else:  # the VM is back: it takes its window over
                self._by_source.pop(id(view.source), None)
                view.source, view.connected, view.pending = source, True, _Pending()
            self._by_source[id(source)] = view
            view.pending.full = True
            if self._remote_focus is not None:  # the input service decides: this VM has the focus if it says so
                if source.vm == self._remote_focus and (self._focus is None or not self._focus.connected):
                    self._set_focus(view, tell=False)
            elif self._focus is None or not self._focus.connected:
                self._set_focus(view, tell=False)  # no input service (yet): the newest VM, as the input service does
            self._retitle(view)
            self._cond.notify_all()

    def detach(self, source: Source) -> None:
        with self._cond:
            view = self._by_source.pop(id(source), None)
            if view is None:
                return
            view.connected = False
            view.pending.acks.clear()
            view.pending.full = True  # re-present: the title says so
            gone = [v for v in self._views if not v.connected]
            for old in gone[: max(0, len(gone) - MAX_GONE)]:
                self._drop(old)
            self._cond.notify_all()

    def _drop(self, view: View) -> None:
        self._views.remove(view)
        if self._focus is view:
            self._focus = None
        if self.window_mode == "windows":
            self._actions.append(lambda: self.presenter.close_window(view.key))

    def set_notice(self, text: str | None) -> None:
        """Show `text` over the screen (None: stop); thread-safe, shown by the stage thread."""
        with self._cond:
            self._notice = (text,)
            for v in self._views:
                v.pending.full = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ what RPCs ask
    def find(self, vm: str = "") -> Source | None:
        """The newest session of `vm` (an open one first, else the last picture of a closed one); without a vm,
        the focused VM's, else the newest open session, else the newest picture."""
        with self._cond:
            views = [v for v in self._views if v.vm == vm] if vm else self._views
            if not vm and self._focus is not None and self._focus.connected:
                return self._focus.source
            live = [v for v in views if v.connected]
            pick = (live or views)[-1:]
            return pick[0].source if pick else None

    def current(self) -> Source | None:
        return self.find()

    def state(self, source: Source) -> ViewState:
        with self._cond:
            view = self._view_of(source)
            if view is None:
                return ViewState("", False, False, False, False)
            return ViewState(self._title(view), view is self._focus, view.hidden, view.connected, self._shown(view))

    def on_screen(self, source: Source) -> bool:
        with self._cond:
            view = self._view_of(source)
            return view is not None and self._shown(view)

    def focused_vm(self) -> str:
        with self._cond:
            return self._focus.vm if self._focus is not None else ""

    def _view_of(self, source: Source) -> View | None:
        view = self._by_source.get(id(source))
        return view or next((v for v in self._views if v.source is source), None)

    def view_rect(self, desktop: Desktop) -> Rect:
        mode = desktop.mode
        if mode is None:
            return self.viewport.rect(0, 0)
        return self.viewport.rect(mode.width, mode.height)

    # ------------------------------------------------------------------ focus
    def follow_focus(self, vm: str) -> None:
        """The input service moved the focus to `vm` (SetFocus, or our own request come back); thread-safe."""
        with self._cond:
            view = next((v for v in reversed(self._views) if v.vm == vm and v.connected), None)
            view = view or next((v for v in reversed(self._views) if v.vm == vm), None)
            # The same focus again answers a move asked here in vain (that VM takes no input): the titles go back,
            # the window the user clicked stays in front.
            moved, self._remote_focus = vm != self._remote_focus, vm
            self._set_focus(view, tell=False, raise_window=moved)
            self._cond.notify_all()

    def _set_focus(self, view: View | None, tell: bool, raise_window: bool = True) -> None:
        """Under the lock."""
        old = self._focus
        if view is not None and (view.hidden or self._switcher_hidden):  # focusing a VM shows it again
            view.hidden = self._switcher_hidden = False
            view.pending.full = True
        if view is old:
            return
        self._focus = view
        if old is not None:
            old.held.clear()  # the input service released them in the VM when its focus moved
            if old.grabbed:
                old.grabbed = False
                self._actions.append(lambda: self.presenter.set_grab(old.key, False))
            self._retitle(old)
        if view is not None:
            log.info("focus", extra={"vm": view.vm, "window": view.key})
            view.pending.full = True
            self._retitle(view)
            key = self._window(view)
            if raise_window:
                self._actions.append(lambda: self.presenter.focus_window(key))
        if tell and self.on_focus is not None and view is not None:
            vm = view.vm
            self._actions.append(lambda: self._tell_focus(vm))

    def _tell_focus(self, vm: str) -> None:
        try:
            self.on_focus(vm)  # type: ignore[misc]
        except Exception:
            log.exception("focus hook failed")

    def _next_view(self) -> View | None:
        live = [v for v in self._views if v.connected] or self._views
        if not live:
            return None
        i = live.index(self._focus) if self._focus in live else -1
        return live[(i + 1) % len(live)]

    # ------------------------------------------------------------------ titles and windows
    def _title(self, view: View) -> str:
        mode = view.source.desktop.mode
        if not view.connected:
            state = "disconnected"
        elif mode is None:
            state = "waiting for a picture"
        else:
            state = f"running {mode.width}x{mode.height}"
        title = f"rdv {view.vm} - {state}"
        if view is self._focus:
            title += " - input"
        if view.grabbed:
            title += " - grabbed (Ctrl+Alt+G releases)"
        return title

    def _retitle(self, view: View) -> None:
        """Under the lock: the window's title follows at once, even with no picture to present."""
        if self.window_mode == "switcher" and not self._is_switcher_view(view):
            return
        key, title = self._window(view), self._title(view)
        self._actions.append(lambda: self.presenter.set_title(key, title))

    def _window(self, view: View) -> int:
        return SWITCHER_WINDOW if self.window_mode == "switcher" else view.key

    def _is_switcher_view(self, view: View) -> bool:
        shown = self._focus or (self._views[-1] if self._views else None)
        return view is shown

    def _shown(self, view: View) -> bool:
        if self.window_mode == "switcher":
            return not self._switcher_hidden and self._is_switcher_view(view)
        return not view.hidden

    def damaged(self, source: Source, rect: Rect, ack: PendingAck | None, cursor: bool, full: bool) -> None:
        """A frame of `source` changed `rect` (desktop coordinates) and/or the cursor; thread-safe."""
        with self._cond:
            view = self._by_source.get(id(source))
            visible = view is not None and self._shown(view)
            if visible:
                p = view.pending  # type: ignore[union-attr]
                inside = rect.intersection(self.view_rect(source.desktop))
                if full:
                    p.full = True
                elif not inside.empty:
                    p.damage = p.damage.union(inside)
                if cursor:
                    p.cursor = True
                visible = full or cursor or not inside.empty
                if visible:
                    if ack is not None:
                        p.acks.append(ack)
                    self._cond.notify_all()
                    return
        if ack is not None:
            source.acknowledge([ack], ack.applied_ns, False)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self.presenter.open()
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        last = 0.0
        try:
            while True:
                jobs: list[tuple[View, _Pending, str]] = []
                with self._cond:
                    if self._stop:
                        break
                    dirty = any(v.pending.dirty() for v in self._views)
                    # A window system's events are pumped every _EVENT_POLL; with none (headless) the stage
                    # sleeps until a frame, an action or the stop wakes it.
                    poll = _EVENT_POLL if self.presenter.has_events else None
                    wait = poll
                    if dirty:
                        wait = last + self._interval - time.monotonic()
                        if poll is not None:
                            wait = min(wait, poll)
                    if (wait is None or wait > 0) and not self._actions:
                        self._cond.wait(wait)
                        dirty = False
                    if dirty:
                        for v in self._views:
                            if v.pending.dirty():
                                jobs.append((v, v.pending, self._title(v)))
                                v.pending = _Pending()
                    notice, self._notice = self._notice, None
                    actions, self._actions = self._actions, []
                if notice is not None:
                    self._show_notice(notice[0])
                for action in actions:
                    self._call(action)
                self._events()  # SDL windows need their events pumped even when nobody listens
                if not jobs:
                    continue
                last = time.monotonic()
                for view, p, title in jobs:
                    with self._cond:
                        shown = self._shown(view)
                    if shown:
                        self._present(view, p, title)
                    if p.acks:
                        view.source.acknowledge(p.acks, time.monotonic_ns(), shown)
                self.presents += 1
        finally:
            self.presenter.close()

    def _call(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            log.exception("window operation failed")

    def _present(self, view: View, p: _Pending, title: str) -> None:
        source = view.source
        desktop = source.desktop
        rect = self.view_rect(desktop)
        if rect.empty:
            return
        switcher = self.window_mode == "switcher"
        job = RenderJob(
            desktop=desktop,
            view=rect,
            damage=p.damage,
            full=p.full,
            cursor=source.cursor_image(),
            palette=source.palette(),
            title=title,
            window=self._window(view),
            label=view.vm if switcher else "",
            fullscreen=switcher,
        )
        try:
            self.presenter.render(job)
        except Exception:  # a presenter bug must not stop acknowledgements (the shim would stall)
            log.exception("present failed")

    def _show_notice(self, text: str | None) -> None:
        show = getattr(self.presenter, "show_notice", None)
        if show is None:
            return
        try:
            show(text)
        except Exception:
            log.exception("showing the notice failed")

    # ------------------------------------------------------------------ input
    def _hot_key(self, ev: WindowEvent, view: View | None) -> bool:
        """Track held modifiers; True for a Ctrl+Alt hot key press (and its release), which the guest never sees."""
        if ev.kind != "key":
            return False
        if ev.pressed:
            self._held.add(ev.scancode)
        else:
            self._held.discard(ev.scancode)
        if ev.scancode not in (KEY_P, KEY_F, KEY_G, KEY_N) or not (self._held & _CTRL and self._held & _ALT):
            return False
        if not ev.pressed:
            return True
        if ev.scancode == KEY_P:
            if self.on_pair_key is not None:
                try:
                    self.on_pair_key()
                except Exception:
                    log.exception("opening pairing failed")
        elif ev.scancode == KEY_F:
            self._call(lambda: self.presenter.toggle_fullscreen(ev.window))
        elif ev.scancode == KEY_G and view is not None:
            with self._cond:
                view.grabbed = not view.grabbed
                grab = view.grabbed
                self._retitle(view)
            self._call(lambda: self.presenter.set_grab(ev.window, grab))
        elif ev.scancode == KEY_N:
            with self._cond:
                self._set_focus(self._next_view(), tell=True)
        return True

    def _view_at(self, window: int) -> View | None:
        with self._cond:
            if self.window_mode == "switcher":
                return self._focus or (self._views[-1] if self._views else None)
            return next((v for v in self._views if v.key == window), None)

    def _events(self) -> None:
        for ev in self.presenter.poll_events():
            view = self._view_at(ev.window)
            if self._hot_key(ev, view) or view is None:
                continue
            if ev.kind == "redraw":
                with self._cond:
                    view.pending.full = True
            elif ev.kind == "close":
                self._close(view)
            elif ev.kind == "focus_in":
                self._focus_now(view)
            elif ev.kind == "focus_out":
                self._focus_out(view)
            else:
                if ev.kind == "button" and ev.pressed and view is not self._focus:
                    self._focus_now(view)  # click to focus: this click already goes to the newly focused VM
                if view is self._focus:
                    self._forward(view, ev)

    def _focus_now(self, view: View) -> None:
        """The user moved the focus here: the input service hears of it before the events that follow."""
        with self._cond:
            self._set_focus(view, tell=True)
            actions, self._actions = self._actions, []
        for action in actions:
            self._call(action)

    def _close(self, view: View) -> None:
        with self._cond:
            if self.window_mode == "switcher":
                self._switcher_hidden = True
            view.hidden = True
            log.info("window closed: the VM runs on", extra={"vm": view.vm, "window": view.key})
        self._focus_out(view)
        self._call(lambda: self.presenter.close_window(self._window(view)))

    def _focus_out(self, view: View) -> None:
        """The window lost the keyboard: the VM must not keep a key pressed (Alt after an Alt-Tab)."""
        self._held.clear()
        with self._cond:
            held, view.held = sorted(view.held), set()
            grabbed, view.grabbed = view.grabbed, False
            if grabbed:
                self._retitle(view)
        if grabbed:
            self._call(lambda: self.presenter.set_grab(self._window(view), False))
        for scancode in held:
            self._deliver(view, WindowEvent("key", scancode=scancode, pressed=False, window=view.key))

    def _forward(self, view: View, ev: WindowEvent) -> None:
        if ev.kind == "key":
            (view.held.add if ev.pressed else view.held.discard)(ev.scancode)
        self._deliver(view, ev)

    def _deliver(self, view: View, ev: WindowEvent) -> None:
        mode = view.source.desktop.mode
        if self.on_input is None or mode is None:
            return
        gx, gy = self.viewport.to_guest(ev.x, ev.y, ev.window_w, ev.window_h, mode.width, mode.height)
        try:
            self.on_input(GuestInput(ev, gx, gy, mode.width, mode.height, view.vm))
        except Exception:
            log.exception("input hook failed")
