"""The part of the guest desktop one display service shows, and the way back from its window to the guest.

Two services whose viewports sit side by side show one desktop wider than either screen (the paper's screen
extension): `--viewport 0,0,1024,768` on one and `--viewport 1024,0,1024,768` on the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.raster import EMPTY, Rect


@dataclass(frozen=True, slots=True)
class Viewport:
    """x, y, width, height in guest desktop pixels; width = height = 0 means the whole desktop."""

    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0

    @classmethod
    def parse(cls, text: str) -> Viewport:
        """"X,Y,W,H" (W and H positive) or "" / "all" for the whole desktop."""
        if text.strip().lower() in ("", "all", "full"):
            return cls()
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"viewport {text!r} is not X,Y,W,H (four integers)") from None
        if x < 0 or y < 0 or w <= 0 or h <= 0 or w > 16384 or h > 16384:
            raise ValueError(f"viewport {text!r}: X, Y must be >= 0 and W, H within 1..16384")
        return cls(x, y, w, h)

    @property
    def whole(self) -> bool:
        return self.width == 0 and self.height == 0

    def rect(self, desktop_width: int, desktop_height: int) -> Rect:
        """The viewport in desktop coordinates (a whole-desktop viewport is the desktop)."""
        if self.whole:
            return Rect(0, 0, desktop_width, desktop_height)
        return Rect(self.x, self.y, self.width, self.height)

    def visible(self, desktop_width: int, desktop_height: int) -> Rect:
        """The part of the viewport the desktop actually covers (EMPTY when they do not overlap)."""
        return self.rect(desktop_width, desktop_height).intersection(Rect(0, 0, desktop_width, desktop_height))

    def size(self, desktop_width: int, desktop_height: int) -> tuple[int, int]:
        r = self.rect(desktop_width, desktop_height)
        return r.w, r.h

    def to_guest(
        self, wx: float, wy: float, window_w: int, window_h: int, desktop_w: int, desktop_h: int
    ) -> tuple[int, int]:
        """Guest desktop pixel under window position (wx, wy) of a window_w x window_h window showing this
        viewport (scaled to fill it). Positions past the window's edge map past the viewport's edge (the input
        service clamps to the desktop), so dragging across the seam to a neighbour's screen works."""
        r = self.rect(desktop_w, desktop_h)
        sx = r.w / window_w if window_w > 0 else 1.0
        sy = r.h / window_h if window_h > 0 else 1.0
        return r.x + int(wx * sx), r.y + int(wy * sy)

    def from_guest(self, gx: int, gy: int, desktop_w: int, desktop_h: int) -> tuple[int, int]:
        """Viewport (unscaled window) position of guest desktop pixel (gx, gy)."""
        r = self.rect(desktop_w, desktop_h)
        return gx - r.x, gy - r.y


__all__ = ["EMPTY", "Viewport"]
