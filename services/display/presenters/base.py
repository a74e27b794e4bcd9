"""The presenter interface and the factory that picks an implementation.

A presenter is driven by exactly one thread (the display's stage thread; SDL wants its window, renderer and
event pump on one thread): `open`, then any number of `render` and `poll_events`, then `close`. It never
decides when to draw: pacing and damage coalescing are the stage's job.
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


@dataclass(frozen=True, slots=True)
class WindowEvent:
    """Input seen by the presenter's window, in window pixels (the stage maps it to the guest desktop).

    kind: "motion" (x, y), "button" (button name, pressed, x, y), "wheel" (dx, dy), "key" (scancode = USB HID
    usage, pressed), "quit" (the window was closed).
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


class Presenter(Protocol):
    name: str  # "sdl:x11", "sdl:dummy", "headless": shown in GetDisplayState

    def open(self) -> None: ...

    def render(self, job: RenderJob) -> None: ...

    def poll_events(self) -> list[WindowEvent]: ...

    def close(self) -> None: ...


def make_presenter(kind: str, headless: bool) -> Presenter:
    """kind: "sdl" (a window when DISPLAY is set and not `headless`, SDL's dummy video driver otherwise),
    "headless" (no SDL at all: frames are acknowledged as shown), or "auto" (sdl, headless if SDL fails; with
    `headless` SDL is not even loaded: a node without a screen does not need it)."""
    if kind == "headless" or (kind == "auto" and headless):
        from services.display.presenters.headless import HeadlessPresenter

        return HeadlessPresenter()
    if kind not in ("sdl", "auto"):
        raise PresentError(f"unknown presenter {kind!r} (sdl, headless, auto)")
    from services.display.presenters.sdl import SdlPresenter

    return SdlPresenter(headless=headless, fallback=kind == "auto")
