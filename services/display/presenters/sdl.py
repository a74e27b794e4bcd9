"""Shows the VMs' pictures with SDL2 (pysdl2): real windows when there is a display, SDL's dummy video driver
(no window, same rendering path) when there is none or `headless` is asked for.

One window per stage key (one per VM, or the switcher's one). Each window's desktop copy is uploaded to a
streaming texture straight from the service's buffer (only the damaged part, one SDL_UpdateTexture with the
desktop's pitch, no intermediate copy for 16/32 bpp) and scaled to the window with its aspect ratio kept
(SDL_RenderSetLogicalSize: black bars, nearest-neighbour, and mouse positions mapped back to picture pixels);
the hardware cursor is a second, alpha-blended texture drawn on top, never written into the desktop copy.
"""

from __future__ import annotations

import ctypes
import os
import warnings
from dataclasses import dataclass

from services.common import logs, raster
from services.common.raster import Rect
from services.display.desktop import to_rgb
from services.display.presenters import label, notice
from services.display.presenters.base import CursorImage, PresentError, RenderJob, WindowEvent

log = logs.get("display.sdl")
_BUTTONS = {1: "left", 2: "middle", 3: "right", 4: "side", 5: "extra"}
NOTICE_WINDOW = -1  # the key of the window made for the pairing PIN alone (no guest shown yet)
_TILE_GAP = 8  # pixels between windows placed side by side


@dataclass
class _Window:
    window: object
    renderer: object
    title: str = ""
    texture: object = None
    texture_key: tuple[int, int, int] | None = None
    cursor_tex: object = None
    cursor_serial: int = -1
    label_tex: object = None
    label_text: str = ""
    label_size: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (0, 0)  # the picture's (logical) size
    restore: tuple[int, int, int, int] | None = None  # full screen: where the window was before


class SdlPresenter:
    def __init__(self, headless: bool = False, fallback: bool = False) -> None:
        self.headless = headless
        self.fallback = fallback
        self.name = "sdl"
        self._sdl = None
        self._windows: dict[int, _Window] = {}
        self._keys: dict[int, int] = {}  # SDL window id -> stage key
        self._null = False  # SDL failed and fallback was allowed: behave like the headless presenter
        self._notice: str | None = None

    @property
    def has_events(self) -> bool:
        return not self._null  # (SDL's dummy driver too: its windows are pumped like real ones)

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
        sdl2.SDL_SetHint(sdl2.SDL_HINT_RENDER_SCALE_QUALITY, b"0")  # scaled pictures stay sharp: nearest pixel
        sdl2.SDL_SetHint(sdl2.SDL_HINT_MOUSE_FOCUS_CLICKTHROUGH, b"1")  # the click that focuses a window counts
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
        for key in list(self._windows):
            self.close_window(key)
        sdl2.SDL_Quit()
        self._sdl = None

    # ------------------------------------------------------------------ windows
    def _error(self, call: str) -> PresentError:
        return PresentError(f"{call}: {self._sdl.SDL_GetError().decode(errors='replace')}")

    def _make_window(self, key: int, title: str, w: int, h: int, fullscreen: bool = False) -> _Window:
        sdl2 = self._sdl
        x, y = self._free_place(w, h)
        window = sdl2.SDL_CreateWindow(title.encode(), x, y, w, h, sdl2.SDL_WINDOW_RESIZABLE)
        if not window:
            raise self._error("SDL_CreateWindow")
        flags = sdl2.SDL_RENDERER_SOFTWARE if self.name == "sdl:dummy" else 0
        renderer = sdl2.SDL_CreateRenderer(window, -1, flags)
        if not renderer:
            sdl2.SDL_DestroyWindow(window)
            raise self._error("SDL_CreateRenderer")
        win = _Window(window, renderer, title)
        self._windows[key] = win
        self._keys[sdl2.SDL_GetWindowID(window)] = key
        if fullscreen:
            self.toggle_fullscreen(key)
        return win

    def _free_place(self, w: int, h: int) -> tuple[int, int]:
        """Windows side by side, left to right then top to bottom, so no VM hides another (a window manager
        may place them its own way)."""
        sdl2 = self._sdl
        bounds = sdl2.SDL_Rect()
        if sdl2.SDL_GetDisplayBounds(0, ctypes.byref(bounds)) != 0 or bounds.w <= 0:
            return sdl2.SDL_WINDOWPOS_UNDEFINED, sdl2.SDL_WINDOWPOS_UNDEFINED
        taken = []
        for win in self._windows.values():
            x, y, ww, wh = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
            sdl2.SDL_GetWindowPosition(win.window, ctypes.byref(x), ctypes.byref(y))
            sdl2.SDL_GetWindowSize(win.window, ctypes.byref(ww), ctypes.byref(wh))
            taken.append(Rect(x.value, y.value, ww.value + _TILE_GAP, wh.value + _TILE_GAP))
        y = bounds.y
        while y + h <= bounds.y + bounds.h:
            x = bounds.x
            while x + w <= bounds.x + bounds.w:
                spot = Rect(x, y, w + _TILE_GAP, h + _TILE_GAP)
                clash = next((t for t in taken if not t.intersection(spot).empty), None)
                if clash is None:
                    return x, y
                x = clash.right
            y += _TILE_GAP * 4
        return sdl2.SDL_WINDOWPOS_UNDEFINED, sdl2.SDL_WINDOWPOS_UNDEFINED

    def close_window(self, window: int) -> None:
        win = self._windows.pop(window, None)
        sdl2 = self._sdl
        if win is None or sdl2 is None:
            return
        self._keys = {k: v for k, v in self._keys.items() if v != window}
        for tex in (win.cursor_tex, win.texture, win.label_tex):
            if tex:
                sdl2.SDL_DestroyTexture(tex)
        sdl2.SDL_DestroyRenderer(win.renderer)
        sdl2.SDL_DestroyWindow(win.window)

    def set_title(self, window: int, title: str) -> None:
        win = self._windows.get(window)
        if win is not None and title != win.title:
            win.title = title
            self._sdl.SDL_SetWindowTitle(win.window, title.encode())

    def toggle_fullscreen(self, window: int) -> None:
        """A borderless window over the whole screen and back: it needs no window manager's cooperation (SDL's
        own full-screen asks the window manager, and without one nothing happens)."""
        win = self._windows.get(window)
        if win is None:
            return
        sdl2 = self._sdl
        if win.restore is not None:
            x, y, w, h = win.restore
            win.restore = None
            sdl2.SDL_SetWindowBordered(win.window, True)
            sdl2.SDL_SetWindowSize(win.window, w, h)
            sdl2.SDL_SetWindowPosition(win.window, x, y)
            return
        x, y, w, h = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        sdl2.SDL_GetWindowPosition(win.window, ctypes.byref(x), ctypes.byref(y))
        sdl2.SDL_GetWindowSize(win.window, ctypes.byref(w), ctypes.byref(h))
        bounds = sdl2.SDL_Rect()
        if sdl2.SDL_GetDisplayBounds(max(0, sdl2.SDL_GetWindowDisplayIndex(win.window)), ctypes.byref(bounds)):
            return
        win.restore = (x.value, y.value, w.value, h.value)
        sdl2.SDL_SetWindowBordered(win.window, False)
        sdl2.SDL_SetWindowPosition(win.window, bounds.x, bounds.y)
        sdl2.SDL_SetWindowSize(win.window, bounds.w, bounds.h)
        sdl2.SDL_RaiseWindow(win.window)

    def set_grab(self, window: int, grab: bool) -> None:
        win = self._windows.get(window)
        if win is not None:
            self._sdl.SDL_SetWindowGrab(win.window, grab)
            self._sdl.SDL_SetWindowKeyboardGrab(win.window, grab)

    def focus_window(self, window: int) -> None:
        win = self._windows.get(window)
        if win is not None:
            self._sdl.SDL_RaiseWindow(win.window)
            self._sdl.SDL_SetWindowInputFocus(win.window)

    # ------------------------------------------------------------------ drawing
    def _ensure(self, job: RenderJob, bpp: int) -> tuple[_Window, bool]:
        """Window, renderer and texture for this view and pixel format; True when they were (re)made."""
        sdl2 = self._sdl
        w, h = job.view.w, job.view.h
        made = False
        notice_window = self._windows.pop(NOTICE_WINDOW, None)
        if notice_window is not None:  # the notice's own window now shows this guest desktop
            self._windows[job.window] = notice_window
            self._keys[sdl2.SDL_GetWindowID(notice_window.window)] = job.window
            sdl2.SDL_SetWindowSize(notice_window.window, w, h)
        win = self._windows.get(job.window)
        if win is None:
            win = self._make_window(job.window, job.title, w, h, job.fullscreen)
            made = True
        self.set_title(job.window, job.title)
        key = (w, h, bpp)
        if key != win.texture_key:
            if win.texture_key is not None and win.texture_key[:2] != (w, h) and win.restore is None:
                sdl2.SDL_SetWindowSize(win.window, w, h)
            if win.texture:
                sdl2.SDL_DestroyTexture(win.texture)
            fmt = sdl2.SDL_PIXELFORMAT_RGB565 if bpp == 16 else sdl2.SDL_PIXELFORMAT_RGB888
            win.texture = sdl2.SDL_CreateTexture(win.renderer, fmt, sdl2.SDL_TEXTUREACCESS_STREAMING, w, h)
            if not win.texture:
                raise self._error("SDL_CreateTexture")
            bypp = 2 if bpp == 16 else 4
            black = bytes(w * h * bypp)  # parts of the view the desktop does not cover stay black
            sdl2.SDL_UpdateTexture(win.texture, None, black, w * bypp)
            # Scaled to whatever size the window has, aspect kept (black bars), mouse positions mapped back.
            sdl2.SDL_RenderSetLogicalSize(win.renderer, w, h)
            win.texture_key = key
            win.size = (w, h)
            made = True
        return win, made

    def render(self, job: RenderJob) -> None:
        if self._null:
            return
        sdl2 = self._sdl
        desktop = job.desktop
        with desktop.lock:
            mode = desktop.mode
            if mode is None:
                return
            win, made = self._ensure(job, mode.bpp)
            full = made or job.full
            area = job.view if full else job.damage
            part = area.intersection(Rect(0, 0, mode.width, mode.height)).intersection(job.view)
            if not part.empty:
                dst = sdl2.SDL_Rect(part.x - job.view.x, part.y - job.view.y, part.w, part.h)
                surface = desktop.surface
                if mode.bpp == 8:
                    data = bytes(to_rgb(raster.read_rect(desktop.pixels, surface, part), 8, job.palette))
                    xrgb = bytearray(len(data) // 3 * 4)
                    xrgb[0::4], xrgb[1::4], xrgb[2::4] = data[2::3], data[1::3], data[0::3]
                    sdl2.SDL_UpdateTexture(win.texture, dst, bytes(xrgb), part.w * 4)
                else:
                    base = (ctypes.c_char * len(desktop.pixels)).from_buffer(desktop.pixels)
                    start = part.y * surface.pitch + part.x * surface.bytes_per_pixel
                    ptr = ctypes.c_void_p(ctypes.addressof(base) + start)
                    sdl2.SDL_UpdateTexture(win.texture, dst, ptr, surface.pitch)
                    del ptr, base  # release the buffer export so the desktop may be reallocated
        sdl2.SDL_SetRenderDrawColor(win.renderer, 0, 0, 0, 255)
        sdl2.SDL_RenderClear(win.renderer)  # the bars beside a picture scaled with its aspect ratio
        sdl2.SDL_RenderCopy(win.renderer, win.texture, None, None)
        self._draw_cursor(win, job)
        self._draw_label(win, job.label)
        self._draw_notice(win)
        sdl2.SDL_RenderPresent(win.renderer)

    def show_notice(self, text: str | None) -> None:
        """Draw `text` (the pairing PIN) over every window until it is None; with no guest desktop shown yet, in
        a window of its own. The stage renders again afterwards when a desktop is shown."""
        self._notice = text
        sdl2 = self._sdl
        if self._null or sdl2 is None:
            return
        if not self._windows and text:
            try:
                self._make_window(NOTICE_WINDOW, f"rdv: pairing PIN {text}", 640, 240)
            except PresentError as exc:
                log.warning("cannot show the pairing PIN", extra={"error": str(exc)})
                return
        win = self._windows.get(NOTICE_WINDOW)
        if win is not None:
            self.set_title(NOTICE_WINDOW, f"rdv: pairing PIN {text}" if text else "rdv: pairing closed")
            sdl2.SDL_SetRenderDrawColor(win.renderer, 0, 0, 0, 255)
            sdl2.SDL_RenderClear(win.renderer)
            self._draw_notice(win)
            sdl2.SDL_RenderPresent(win.renderer)

    def _draw_notice(self, win: _Window) -> None:
        if not self._notice:
            return
        sdl2 = self._sdl
        w, h = win.size
        if not w:
            ww, wh = ctypes.c_int(0), ctypes.c_int(0)
            sdl2.SDL_GetRendererOutputSize(win.renderer, ctypes.byref(ww), ctypes.byref(wh))
            w, h = ww.value, wh.value
        box, digits = notice.layout(self._notice, w, h)
        sdl2.SDL_SetRenderDrawColor(win.renderer, 16, 16, 48, 255)
        sdl2.SDL_RenderFillRect(win.renderer, sdl2.SDL_Rect(box.x, box.y, box.w, box.h))
        sdl2.SDL_SetRenderDrawColor(win.renderer, 255, 255, 255, 255)
        for r in digits:
            sdl2.SDL_RenderFillRect(win.renderer, sdl2.SDL_Rect(r.x, r.y, r.w, r.h))

    def _draw_label(self, win: _Window, text: str) -> None:
        if not text:
            return
        sdl2 = self._sdl
        if text != win.label_text:
            if win.label_tex:
                sdl2.SDL_DestroyTexture(win.label_tex)
            w, h, argb = label.render(text)
            argb_fmt, static = sdl2.SDL_PIXELFORMAT_ARGB8888, sdl2.SDL_TEXTUREACCESS_STATIC
            tex = sdl2.SDL_CreateTexture(win.renderer, argb_fmt, static, w, h)
            sdl2.SDL_UpdateTexture(tex, None, argb, w * 4)
            sdl2.SDL_SetTextureBlendMode(tex, sdl2.SDL_BLENDMODE_BLEND)
            win.label_tex, win.label_text, win.label_size = tex, text, (w, h)
        w, h = win.label_size
        sdl2.SDL_RenderSetLogicalSize(win.renderer, 0, 0)  # the label in window pixels, whatever the scaling
        sdl2.SDL_RenderCopy(win.renderer, win.label_tex, None, sdl2.SDL_Rect(label.MARGIN, label.MARGIN, w, h))
        sdl2.SDL_RenderSetLogicalSize(win.renderer, *win.size)

    def _draw_cursor(self, win: _Window, job: RenderJob) -> None:
        cursor: CursorImage | None = job.cursor
        if cursor is None or not cursor.visible:
            return
        sdl2 = self._sdl
        if cursor.serial != win.cursor_serial:
            if win.cursor_tex:
                sdl2.SDL_DestroyTexture(win.cursor_tex)
            argb, static = sdl2.SDL_PIXELFORMAT_ARGB8888, sdl2.SDL_TEXTUREACCESS_STATIC
            tex = sdl2.SDL_CreateTexture(win.renderer, argb, static, cursor.width, cursor.height)
            sdl2.SDL_UpdateTexture(tex, None, cursor.argb, cursor.width * 4)
            sdl2.SDL_SetTextureBlendMode(tex, sdl2.SDL_BLENDMODE_BLEND)
            win.cursor_tex, win.cursor_serial = tex, cursor.serial
        x = cursor.x - cursor.hot_x - job.view.x
        y = cursor.y - cursor.hot_y - job.view.y
        sdl2.SDL_RenderCopy(win.renderer, win.cursor_tex, None, sdl2.SDL_Rect(x, y, cursor.width, cursor.height))

    # ------------------------------------------------------------------ input
    def poll_events(self) -> list[WindowEvent]:
        sdl2 = self._sdl
        if sdl2 is None or self._null:
            return []
        out: list[WindowEvent] = []
        event = sdl2.SDL_Event()
        while sdl2.SDL_PollEvent(ctypes.byref(event)):
            t = event.type
            if t == sdl2.SDL_MOUSEMOTION:
                out.append(self._event("motion", event.motion.windowID, x=event.motion.x, y=event.motion.y))
            elif t in (sdl2.SDL_MOUSEBUTTONDOWN, sdl2.SDL_MOUSEBUTTONUP):
                name = _BUTTONS.get(event.button.button)
                if name:
                    out.append(self._event("button", event.button.windowID, x=event.button.x, y=event.button.y,
                                           button=name, pressed=t == sdl2.SDL_MOUSEBUTTONDOWN))  # fmt: skip
            elif t == sdl2.SDL_MOUSEWHEEL:
                if event.wheel.x or event.wheel.y:
                    out.append(self._event("wheel", event.wheel.windowID, dx=event.wheel.x, dy=event.wheel.y))
            elif t in (sdl2.SDL_KEYDOWN, sdl2.SDL_KEYUP):
                if not event.key.repeat:  # the guest makes its own key repeat
                    out.append(self._event("key", event.key.windowID, scancode=event.key.keysym.scancode,
                                           pressed=t == sdl2.SDL_KEYDOWN))  # fmt: skip
            elif t == sdl2.SDL_WINDOWEVENT:
                kind = {
                    sdl2.SDL_WINDOWEVENT_CLOSE: "close",
                    sdl2.SDL_WINDOWEVENT_FOCUS_GAINED: "focus_in",
                    sdl2.SDL_WINDOWEVENT_FOCUS_LOST: "focus_out",
                    sdl2.SDL_WINDOWEVENT_SIZE_CHANGED: "redraw",
                    sdl2.SDL_WINDOWEVENT_EXPOSED: "redraw",
                }.get(event.window.event)
                if kind:
                    out.append(self._event(kind, event.window.windowID))
        return out

    def _event(self, kind: str, window_id: int, **fields: object) -> WindowEvent:
        key = self._keys.get(window_id, NOTICE_WINDOW)
        win = self._windows.get(key)
        w, h = win.size if win is not None else (0, 0)
        return WindowEvent(kind, window=key, window_w=w, window_h=h, **fields)  # type: ignore[arg-type]
