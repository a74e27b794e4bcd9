"""The factory that picks a presenter (one file per implementation)."""

from __future__ import annotations

from services.display.presenters.base import Presenter, PresentError


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
