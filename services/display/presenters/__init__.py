"""Display presenters: where the display service shows its viewport. One small interface, one file each."""

from __future__ import annotations

from services.display.presenters.base import (
    CursorImage,
    Presenter,
    PresentError,
    RenderJob,
    WindowEvent,
)
from services.display.presenters.factory import make_presenter

__all__ = ["CursorImage", "PresentError", "Presenter", "RenderJob", "WindowEvent", "make_presenter"]
