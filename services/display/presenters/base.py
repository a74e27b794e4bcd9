"""The presenter interface (the factory that picks an implementation is `factory.py`).

A presenter is driven by exactly one thread (the display's stage thread; SDL wants its windows, renderers and
event pump on one thread): `open`, then any number of `render`, `poll_events` and window calls, then `close`.
It shows any number of windows, each named by the stage's integer key (one per VM; the switcher mode uses one).
It never decides when to draw: pacing and damage coalescing are the stage's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.common.raster import Rect
from services.display.desktop import Desktop


class PresentError(RuntimeError):
    """The presenter cannot work here (no video driver, window refused)."""


@dataclass(frozen=True, slots=True)
class CursorImage:
    """The guest's hardware cursor: ARGB pixels, hotspot, position in desktop pixels (of the hotspot)."""

    width: int
    height: int
    hot_x: int
    hot_y: int
    argb: bytes
    x: int
    y: int
    visible: bool
    serial: int  # changes whenever the image changes (position changes do not)


@dataclass(frozen=True, slots=True)
class RenderJob:
    """One present: show `view` (desktop coordinates) of `desktop`; `damage` (desktop coordinates, inside
    `view`) is what changed since the last present, `full` says redraw everything."""

    desktop: Desktop
    view: Rect
    damage: Rect
    full: bool
    cursor: CursorImage | None
    palette: bytes
    title: str
    window: int = 0  # the stage's key of the window to draw in
    label: str = ""  # drawn over the picture (the switcher's "which VM is this"); empty: none
    fullscreen: bool = False  # a window made for this job starts full-screen


@dataclass(frozen=True, slots=True)
class WindowEvent:
    """Input seen by the presenter's window, in window pixels (the stage maps it to the guest desktop).

    kind: "motion" (x, y), "button" (button name, pressed, x, y), "wheel" (dx, dy), "key" (scancode = USB HID
    usage, pressed), "close" (the user closed the window), "focus_in" / "focus_out" (the window got / lost the
    keyboard), "redraw" (resized or uncovered: draw it whole again). x and y are in the pixels of the picture
    the window shows (window_w x window_h), whatever size
    the window has: the presenter undoes its scaling.
    """

    kind: str
    x: int = 0
    y: int = 0
    button: str = ""
    pressed: bool = False
    dx: int = 0
    dy: int = 0
    scancode: int = 0
    window_w: int = 0
    window_h: int = 0
    window: int = 0  # the stage's key of the window it happened in


class Presenter(Protocol):
    name: str  # "sdl:x11", "sdl:dummy", "headless": shown in GetDisplayState

    @property
    def has_events(self) -> bool:
        """`poll_events` may return something (a window system whose events must be pumped), read once open."""
        ...

    def open(self) -> None: ...

    def render(self, job: RenderJob) -> None: ...

    def poll_events(self) -> list[WindowEvent]: ...

    def set_title(self, window: int, title: str) -> None: ...

    def close_window(self, window: int) -> None:
        """Destroy the window (it is made again by the next `render` for it)."""
        ...

    def toggle_fullscreen(self, window: int) -> None: ...

    def set_grab(self, window: int, grab: bool) -> None:
        """Keep the pointer and keyboard in the window (the window manager's keys reach the guest) or not."""
        ...

    def focus_window(self, window: int) -> None:
        """Raise the window and give it the keyboard."""
        ...

    def show_notice(self, text: str | None) -> None:
        """Show `text` (the pairing PIN) over the screen from now on, or nothing when None."""
        ...

    def close(self) -> None: ...
