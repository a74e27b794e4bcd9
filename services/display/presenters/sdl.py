"""Shows the viewport with SDL2 (pysdl2): a real window when there is a display, SDL's dummy video driver
(no window, same rendering path) when there is none or `headless` is asked for.

The desktop copy is uploaded to a streaming texture straight from the service's buffer (only the damaged
part, one SDL_UpdateTexture with the desktop's pitch, no intermediate copy for 16/32 bpp); the hardware cursor
is a second, alpha-blended texture drawn on top, never written into the desktop copy.
"""

from __future__ import annotations

import ctypes
import os
import warnings

from services.common import logs, raster
from services.common.raster import Rect
from services.display.desktop import to_rgb
from services.display.presenters import notice
from services.display.presenters.base import CursorImage, PresentError, RenderJob, WindowEvent

log = logs.get("display.sdl")
_BUTTONS = {1: "left", 2: "middle", 3: "right", 4: "side", 5: "extra"}


class SdlPresenter:
    def __init__(self, headless: bool = False, fallback: bool = False) -> None:
        self.headless = headless
        self.fallback = fallback
        self.name = "sdl"
        self._sdl = None
        self._window = None
        self._renderer = None
        self._texture = None
        self._texture_key: tuple[int, int, int] | None = None
        self._cursor_tex = None
        self._cursor_serial = -1
        self._null = False  # SDL failed and fallback was allowed: behave like the headless presenter
        self._notice: str | None = None
        self._notice_only = False  # the window was made for the notice alone (no guest desktop shown yet)

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self.headless or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        try:
            with warnings.catch_warnings():  # pysdl2-dll announces which SDL it loaded: not worth a line
                warnings.simplefilter("ignore")
                import sdl2
        except ImportError as exc:  # pysdl2 without a usable SDL2 library
            return self._give_up(f"SDL2 is not available: {exc}")
        self._sdl = sdl2
        # The service owns SIGINT/SIGTERM (graceful shutdown); SDL must not install its own handlers.
        sdl2.SDL_SetHint(sdl2.SDL_HINT_NO_SIGNAL_HANDLERS, b"1")
        sdl2.SDL_SetHint(b"SDL_VIDEO_X11_NET_WM_BYPASS_COMPOSITOR", b"0")
        display = os.environ.get("DISPLAY")
        window_asked = bool(display) and os.environ.get("SDL_VIDEODRIVER") != "dummy"
        if window_asked and not os.environ.get("WAYLAND_DISPLAY") and "SDL_VIDEODRIVER" not in os.environ:
            # X11 or nothing: SDL would otherwise fall back to its offscreen driver without a word
            sdl2.SDL_SetHint(b"SDL_VIDEODRIVER", b"x11")
        if sdl2.SDL_Init(sdl2.SDL_INIT_VIDEO) != 0:
            error = sdl2.SDL_GetError().decode(errors="replace")
            if window_asked:
                return self._give_up(
                    f"SDL_Init failed: {error}",
                    "no window: cannot open the X display",
                    display=display,
                    uid=os.getuid(),
                    xauthority=os.environ.get("XAUTHORITY", ""),
                    hint="give this uid an X cookie (XAUTHORITY) or allow it with xhost",
                )
            return self._give_up(f"SDL_Init failed: {error}")
        self.name = f"sdl:{(sdl2.SDL_GetCurrentVideoDriver() or b'?').decode()}"
        log.info("presenter ready", extra={"presenter": self.name})

    def _give_up(self, why: str, message: str = "SDL unavailable, presenting headless", **extra: object) -> None:
        if not self.fallback:
            raise PresentError(f"{message}: {why}" if extra else why)
        log.warning(message, extra={"error": why, **extra})
        self._null = True
        self.name = "headless"

    def close(self) -> None:
        sdl2 = self._sdl
        if sdl2 is None:
            return
        for tex in (self._cursor_tex, self._texture):
            if tex:
                sdl2.SDL_DestroyTexture(tex)
        if self._renderer:
            sdl2.SDL_DestroyRenderer(self._renderer)
        if self._window:
            sdl2.SDL_DestroyWindow(self._window)
        sdl2.SDL_Quit()
        self._sdl = None

    # ------------------------------------------------------------------ drawing
    def _ensure(self, job: RenderJob, bpp: int) -> bool:
        """Window, renderer and texture for this view and pixel format; True when they were (re)made."""
        sdl2 = self._sdl
        w, h = job.view.w, job.view.h
        made = False
        if self._window is None:
            self._window = sdl2.SDL_CreateWindow(
                job.title.encode(), sdl2.SDL_WINDOWPOS_UNDEFINED, sdl2.SDL_WINDOWPOS_UNDEFINED, w, h, 0
            )
            if not self._window:
                raise PresentError(f"SDL_CreateWindow: {sdl2.SDL_GetError().decode(errors='replace')}")
            flags = sdl2.SDL_RENDERER_SOFTWARE if self.name == "sdl:dummy" else 0
            self._renderer = sdl2.SDL_CreateRenderer(self._window, -1, flags)
            if not self._renderer:
                raise PresentError(f"SDL_CreateRenderer: {sdl2.SDL_GetError().decode(errors='replace')}")
            made = True
        if self._notice_only:  # the notice's own window now shows the guest desktop
            self._notice_only = False
            sdl2.SDL_SetWindowSize(self._window, w, h)
            sdl2.SDL_SetWindowTitle(self._window, job.title.encode())
        key = (w, h, bpp)
        if key != self._texture_key:
            if self._texture_key is not None and self._texture_key[:2] != (w, h):
                sdl2.SDL_SetWindowSize(self._window, w, h)
            if self._texture:
                sdl2.SDL_DestroyTexture(self._texture)
            fmt = sdl2.SDL_PIXELFORMAT_RGB565 if bpp == 16 else sdl2.SDL_PIXELFORMAT_RGB888
            self._texture = sdl2.SDL_CreateTexture(self._renderer, fmt, sdl2.SDL_TEXTUREACCESS_STREAMING, w, h)
            if not self._texture:
                raise PresentError(f"SDL_CreateTexture: {sdl2.SDL_GetError().decode(errors='replace')}")
            bypp = 2 if bpp == 16 else 4
            black = bytes(w * h * bypp)  # parts of the view the desktop does not cover stay black
            sdl2.SDL_UpdateTexture(self._texture, None, black, w * bypp)
            self._texture_key = key
            made = True
        return made

    def render(self, job: RenderJob) -> None:
        if self._null:
            return
        sdl2 = self._sdl
        desktop = job.desktop
        with desktop.lock:
            mode = desktop.mode
            if mode is None:
                return
            full = self._ensure(job, mode.bpp) or job.full
            area = job.view if full else job.damage
            part = area.intersection(Rect(0, 0, mode.width, mode.height)).intersection(job.view)
            if not part.empty:
                dst = sdl2.SDL_Rect(part.x - job.view.x, part.y - job.view.y, part.w, part.h)
                surface = desktop.surface
                if mode.bpp == 8:
                    data = bytes(to_rgb(raster.read_rect(desktop.pixels, surface, part), 8, job.palette))
                    xrgb = bytearray(len(data) // 3 * 4)
                    xrgb[0::4], xrgb[1::4], xrgb[2::4] = data[2::3], data[1::3], data[0::3]
                    sdl2.SDL_UpdateTexture(self._texture, dst, bytes(xrgb), part.w * 4)
                else:
                    base = (ctypes.c_char * len(desktop.pixels)).from_buffer(desktop.pixels)
                    start = part.y * surface.pitch + part.x * surface.bytes_per_pixel
                    ptr = ctypes.c_void_p(ctypes.addressof(base) + start)
                    sdl2.SDL_UpdateTexture(self._texture, dst, ptr, surface.pitch)
                    del ptr, base  # release the buffer export so the desktop may be reallocated
        sdl2.SDL_RenderCopy(self._renderer, self._texture, None, None)
        self._draw_cursor(job)
        self._draw_notice()
        sdl2.SDL_RenderPresent(self._renderer)

    def show_notice(self, text: str | None) -> None:
        """Draw `text` (the pairing PIN) over the screen until it is None; with no guest desktop shown yet, in a
        window of its own. The stage renders again afterwards when a desktop is shown."""
        self._notice = text
        sdl2 = self._sdl
        if self._null or sdl2 is None:
            return
        if self._window is None and text:
            anywhere = sdl2.SDL_WINDOWPOS_UNDEFINED
            self._window = sdl2.SDL_CreateWindow(f"rdv: pairing PIN {text}".encode(), anywhere, anywhere, 640, 240, 0)
            if not self._window:
                error = sdl2.SDL_GetError().decode(errors="replace")
                log.warning("cannot show the pairing PIN", extra={"error": error})
                return
            flags = sdl2.SDL_RENDERER_SOFTWARE if self.name == "sdl:dummy" else 0
            self._renderer = sdl2.SDL_CreateRenderer(self._window, -1, flags)
            self._notice_only = True
        if self._notice_only and self._renderer:
            title = f"rdv: pairing PIN {text}" if text else "rdv: pairing closed"
            sdl2.SDL_SetWindowTitle(self._window, title.encode())
            sdl2.SDL_SetRenderDrawColor(self._renderer, 0, 0, 0, 255)
            sdl2.SDL_RenderClear(self._renderer)
            self._draw_notice()
            sdl2.SDL_RenderPresent(self._renderer)

    def _draw_notice(self) -> None:
        if not self._notice:
            return
        sdl2 = self._sdl
        w, h = ctypes.c_int(0), ctypes.c_int(0)
        sdl2.SDL_GetRendererOutputSize(self._renderer, ctypes.byref(w), ctypes.byref(h))
        box, digits = notice.layout(self._notice, w.value, h.value)
        sdl2.SDL_SetRenderDrawColor(self._renderer, 16, 16, 48, 255)
        sdl2.SDL_RenderFillRect(self._renderer, sdl2.SDL_Rect(box.x, box.y, box.w, box.h))
        sdl2.SDL_SetRenderDrawColor(self._renderer, 255, 255, 255, 255)
        for r in digits:
            sdl2.SDL_RenderFillRect(self._renderer, sdl2.SDL_Rect(r.x, r.y, r.w, r.h))

    def _draw_cursor(self, job: RenderJob) -> None:
        cursor: CursorImage | None = job.cursor
        if cursor is None or not cursor.visible:
            return
        sdl2 = self._sdl
        if cursor.serial != self._cursor_serial:
            if self._cursor_tex:
                sdl2.SDL_DestroyTexture(self._cursor_tex)
            argb, static = sdl2.SDL_PIXELFORMAT_ARGB8888, sdl2.SDL_TEXTUREACCESS_STATIC
            tex = sdl2.SDL_CreateTexture(self._renderer, argb, static, cursor.width, cursor.height)
            sdl2.SDL_UpdateTexture(tex, None, cursor.argb, cursor.width * 4)
            sdl2.SDL_SetTextureBlendMode(tex, sdl2.SDL_BLENDMODE_BLEND)
            self._cursor_tex, self._cursor_serial = tex, cursor.serial
        x = cursor.x - cursor.hot_x - job.view.x
        y = cursor.y - cursor.hot_y - job.view.y
        sdl2.SDL_RenderCopy(self._renderer, self._cursor_tex, None, sdl2.SDL_Rect(x, y, cursor.width, cursor.height))

    # ------------------------------------------------------------------ input
    def poll_events(self) -> list[WindowEvent]:
        sdl2 = self._sdl
        if sdl2 is None or self._null:
            return []
        out: list[WindowEvent] = []
        event = sdl2.SDL_Event()
        ww, wh = ctypes.c_int(0), ctypes.c_int(0)
        if self._window:
            sdl2.SDL_GetWindowSize(self._window, ctypes.byref(ww), ctypes.byref(wh))
        size = {"window_w": ww.value, "window_h": wh.value}
        while sdl2.SDL_PollEvent(ctypes.byref(event)):
            t = event.type
            if t == sdl2.SDL_MOUSEMOTION:
                out.append(WindowEvent("motion", x=event.motion.x, y=event.motion.y, **size))
            elif t in (sdl2.SDL_MOUSEBUTTONDOWN, sdl2.SDL_MOUSEBUTTONUP):
                name = _BUTTONS.get(event.button.button)
                if name:
                    out.append(
                        WindowEvent(
                            "button",
                            x=event.button.x,
                            y=event.button.y,
                            button=name,
                            pressed=t == sdl2.SDL_MOUSEBUTTONDOWN,
                            **size,
                        )
                    )
            elif t == sdl2.SDL_MOUSEWHEEL:
                if event.wheel.x or event.wheel.y:
                    out.append(WindowEvent("wheel", dx=event.wheel.x, dy=event.wheel.y, **size))
            elif t in (sdl2.SDL_KEYDOWN, sdl2.SDL_KEYUP):
                if not event.key.repeat:  # the guest makes its own key repeat
                    out.append(
                        WindowEvent("key", scancode=event.key.keysym.scancode, pressed=t == sdl2.SDL_KEYDOWN, **size)
                    )
            elif t == sdl2.SDL_QUIT:
                out.append(WindowEvent("quit"))
        return out
