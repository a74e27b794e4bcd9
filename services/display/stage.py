"""The display's one presenting thread: which session is on screen, damage coalescing and frame pacing.

Sessions report what each applied frame changed (`damaged`); the stage accumulates the damage that falls
inside the viewport and presents at most `refresh_hz` times a second: when the previous present is older than
one refresh interval it presents at once (an idle screen shows a change with no added delay), otherwise it
waits for the next slot and everything that arrived meanwhile goes out in one present. Frames are acknowledged
when the present that shows them is done; frames that change nothing visible are acknowledged at once.
The window's input events are mapped to guest desktop coordinates here and handed to the input hook.
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
# Ctrl+Alt+P in the window opens pairing (USB HID usages): the P is not passed to the guest.
_CTRL = frozenset({0xE0, 0xE4})
_ALT = frozenset({0xE2, 0xE6})
KEY_P = 0x13


@dataclass(slots=True)
class PendingAck:
    frame_id: int
    received_ns: int
    applied_ns: int
    sent_ns: int


class Source(Protocol):
    """What the stage needs from a session."""

    session_id: str
    desktop: Desktop

    def cursor_image(self) -> CursorImage | None: ...

    def palette(self) -> bytes: ...

    def title(self) -> str: ...

    def acknowledge(self, acks: list[PendingAck], presented_ns: int, presented: bool) -> None: ...


@dataclass
class GuestInput:
    """A window event in guest desktop coordinates (x, y valid for motion and button)."""

    event: WindowEvent
    x: int
    y: int
    desktop_w: int
    desktop_h: int


@dataclass
class _Pending:
    damage: Rect = EMPTY
    full: bool = False
    cursor: bool = False
    acks: list[tuple[Source, PendingAck]] = field(default_factory=list)


class Stage:
    def __init__(
        self,
        presenter: Presenter,
        viewport: Viewport,
        refresh_hz: float = 60.0,
        on_input: Callable[[GuestInput], None] | None = None,
        on_pair_key: Callable[[], None] | None = None,
    ) -> None:
        self.presenter = presenter
        self.on_pair_key = on_pair_key
        self._held: set[int] = set()
        self._notice: tuple[str | None] | None = None  # a notice the stage thread has still to hand over
        self.viewport = viewport
        self.refresh_hz = refresh_hz
        self.on_input = on_input
        self.presents = 0
        self._interval = 1.0 / refresh_hz if refresh_hz > 0 else 0.0
        self._cond = threading.Condition()
        self._stack: list[Source] = []  # the last one is on screen
        self._last: Source | None = None  # a closed session keeps its last picture up until another opens
        self._pending = _Pending()
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
            self._last = None
            self._stack.append(source)
            self._pending.full = True
            self._cond.notify_all()

    def detach(self, source: Source) -> None:
        with self._cond:
            was_on_screen = bool(self._stack) and self._stack[-1] is source
            if source in self._stack:
                self._stack.remove(source)
            if not self._stack and was_on_screen:
                self._last = source
                return
            self._pending.acks = [(s, a) for s, a in self._pending.acks if s is not source]
            if was_on_screen:
                self._pending.full = True
                self._cond.notify_all()

    def set_notice(self, text: str | None) -> None:
        """Show `text` over the screen (None: stop); thread-safe, shown by the stage thread."""
        with self._cond:
            self._notice = (text,)
            self._pending.full = True
            self._cond.notify_all()

    def on_screen(self, source: Source) -> bool:
        return self.current() is source

    def current(self) -> Source | None:
        """The session on screen (or the last one, closed, whose picture is still shown)."""
        with self._cond:
            return self._stack[-1] if self._stack else self._last

    def view_rect(self, desktop: Desktop) -> Rect:
        mode = desktop.mode
        if mode is None:
            return self.viewport.rect(0, 0)
        return self.viewport.rect(mode.width, mode.height)

    def damaged(self, source: Source, rect: Rect, ack: PendingAck | None, cursor: bool, full: bool) -> None:
        """A frame of `source` changed `rect` (desktop coordinates) and/or the cursor; thread-safe."""
        with self._cond:
            visible = bool(self._stack) and self._stack[-1] is source
            if visible:
                inside = rect.intersection(self.view_rect(source.desktop))
                if full:
                    self._pending.full = True
                elif not inside.empty:
                    self._pending.damage = self._pending.damage.union(inside)
                if cursor:
                    self._pending.cursor = True
                visible = full or cursor or not inside.empty
            if visible:
                if ack is not None:
                    self._pending.acks.append((source, ack))
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
                with self._cond:
                    if self._stop:
                        break
                    p = self._pending
                    dirty = p.full or p.cursor or not p.damage.empty or bool(p.acks)
                    wait = _EVENT_POLL
                    if dirty:
                        wait = last + self._interval - time.monotonic()
                    if wait > 0:
                        self._cond.wait(min(wait, _EVENT_POLL))
                        dirty = False
                    if dirty:
                        self._pending = _Pending()
                        source = self._stack[-1] if self._stack else None
                    notice, self._notice = self._notice, None
                if notice is not None:
                    self._show_notice(notice[0])
                self._events()  # SDL windows need their events pumped even when nobody listens
                if not dirty:
                    continue
                last = time.monotonic()
                if source is not None:
                    self._present(source, p)
                now = time.monotonic_ns()
                self.presents += 1
                by_source: dict[int, tuple[Source, list[PendingAck]]] = {}
                for s, a in p.acks:
                    by_source.setdefault(id(s), (s, []))[1].append(a)
                for s, acks in by_source.values():
                    s.acknowledge(acks, now, True)
        finally:
            self.presenter.close()

    def _present(self, source: Source, p: _Pending) -> None:
        desktop = source.desktop
        view = self.view_rect(desktop)
        if view.empty:
            return
        job = RenderJob(
            desktop=desktop,
            view=view,
            damage=p.damage,
            full=p.full,
            cursor=source.cursor_image(),
            palette=source.palette(),
            title=source.title(),
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

    def _pair_key(self, ev: WindowEvent) -> bool:
        """Track held modifiers; True for the Ctrl+Alt+P press (and its release), which the guest never sees."""
        if ev.kind != "key":
            return False
        if ev.pressed:
            self._held.add(ev.scancode)
        else:
            self._held.discard(ev.scancode)
        if ev.scancode != KEY_P or not (self._held & _CTRL and self._held & _ALT):
            return False
        if ev.pressed and self.on_pair_key is not None:
            try:
                self.on_pair_key()
            except Exception:
                log.exception("opening pairing failed")
        return True

    def _events(self) -> None:
        events = [ev for ev in self.presenter.poll_events() if not self._pair_key(ev)]
        if not events or self.on_input is None:
            return
        source = self.current()
        mode = source.desktop.mode if source is not None else None
        if mode is None:
            return
        for ev in events:
            gx, gy = self.viewport.to_guest(ev.x, ev.y, ev.window_w, ev.window_h, mode.width, mode.height)
            try:
                self.on_input(GuestInput(ev, gx, gy, mode.width, mode.height))
            except Exception:
                log.exception("input hook failed")
