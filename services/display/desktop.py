"""The service's copy of one guest desktop: frames are checked, decoded and applied to it in order.

Everything arriving in a frame is hostile until checked. `prepare` validates a whole frame against the mode it
brings (rectangles inside the desktop, decoded sizes equal to the rectangle, payload sizes plausible for the
encoding, the frame's total decoded bytes bounded) and decodes every payload with the decoded size as a hard
limit, before anything is written; `apply` then only does the bounds-checked raster operations. A frame that
fails raises FrameError and leaves the desktop as it was.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rdv.display.v1 import display_pb2
from services.common import codec, raster
from services.common.png import bgrx_to_rgb, encode_rgb
from services.common.raster import EMPTY, Rect, Surface
from services.devices.svga import Cursor
from services.devices.svga_convert import ENCODING_NAME
from services.display.video import VideoStreams

MAX_SIDE = 8192  # pixels per side of a desktop
MAX_DESKTOP_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024  # decoded pixel bytes one frame may bring
MAX_CURSOR = 256
SUPPORTED_BPP = (8, 16, 32)


class FrameError(ValueError):
    """A frame this desktop must refuse; the message says what was wrong (becomes INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class DesktopMode:
    width: int
    height: int
    bpp: int
    pitch: int = 0  # the guest's, for information
    enabled: bool = True

    @property
    def bytes_per_pixel(self) -> int:
        return self.bpp // 8


@dataclass(slots=True)
class _Op:
    kind: str  # "fill", "copy", "pixels"
    rect: Rect
    color: int = 0
    src_x: int = 0
    src_y: int = 0
    data: bytes | memoryview = b""


@dataclass(slots=True)
class Prepared:
    """A checked, decoded frame ready for `apply`."""

    mode: DesktopMode
    ops: list[_Op]
    cursor: Cursor | None
    cursor_move: tuple[int, int, bool] | None
    payload_bytes: int = 0
    decoded_bytes: int = 0
    fills: int = 0
    copies: int = 0
    pixel_rects: int = 0
    video_frames: int = 0


def _rect(msg: display_pb2.Rect) -> Rect:
    return Rect(msg.x, msg.y, msg.width, msg.height)


def _max_payload(encoding: str, decoded: int) -> int:
    """Largest payload a correct encoder produces for `decoded` bytes (raw: exactly that)."""
    return decoded if encoding == "raw" else decoded + decoded // 64 + 1024


def mode_from_proto(m: display_pb2.FrameMode) -> DesktopMode:
    if m.bpp not in SUPPORTED_BPP:
        raise FrameError(f"frame mode: {m.bpp} bits per pixel (supported: {', '.join(map(str, SUPPORTED_BPP))})")
    if not (1 <= m.width <= MAX_SIDE and 1 <= m.height <= MAX_SIDE):
        raise FrameError(f"frame mode: {m.width}x{m.height} outside 1..{MAX_SIDE} per side")
    if m.width * m.height * (m.bpp // 8) > MAX_DESKTOP_BYTES:
        raise FrameError(f"frame mode: {m.width}x{m.height}x{m.bpp} needs more than {MAX_DESKTOP_BYTES} bytes")
    return DesktopMode(m.width, m.height, m.bpp, m.pitch, m.enabled)


class Desktop:
    """A packed (pitch = width * bytes per pixel) copy of the guest framebuffer; `lock` guards the pixels."""

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.lock = threading.Lock()
        self.mode: DesktopMode | None = None
        self.pixels = bytearray()
        self.surface = Surface(0, 0, 0, 4)
        self.max_frame_bytes = max_frame_bytes

    # ------------------------------------------------------------------ checking
    def prepare(self, frame: display_pb2.Frame, video: VideoStreams | None = None) -> Prepared:
        """Check and decode a frame (no lock needed: only `apply` touches the pixels). Video frames go through
        `video` (a bad one is dropped there with a notice, not refused with the frame)."""
        if not frame.HasField("mode"):
            raise FrameError(f"frame {frame.frame_id}: no mode")
        mode = mode_from_proto(frame.mode)
        bounds = Rect(0, 0, mode.width, mode.height)
        bypp = mode.bytes_per_pixel
        prep = Prepared(mode, [], None, None)
        total = 0
        for i, update in enumerate(frame.updates):
            kind = update.WhichOneof("kind")
            where = f"frame {frame.frame_id} update {i} ({kind})"
            if kind == "fill":
                rect = _rect(update.fill.rect)
                self._inside(rect, bounds, where)
                if update.fill.color >> mode.bpp:
                    raise FrameError(f"{where}: color {update.fill.color:#x} does not fit {mode.bpp} bits")
                prep.ops.append(_Op("fill", rect, color=update.fill.color))
                prep.fills += 1
            elif kind == "copy":
                c = update.copy
                dst = _rect(c.dst)
                self._inside(dst, bounds, where)
                self._inside(Rect(c.src_x, c.src_y, dst.w, dst.h), bounds, where + " source")
                prep.ops.append(_Op("copy", dst, src_x=c.src_x, src_y=c.src_y))
                prep.copies += 1
            elif kind == "pixels":
                p = update.pixels
                rect = _rect(p.rect)
                self._inside(rect, bounds, where)
                expected = rect.w * rect.h * bypp
                if p.decoded_size != expected:
                    raise FrameError(
                        f"{where}: decoded_size {p.decoded_size} but {rect.w}x{rect.h} at {mode.bpp} bpp is "
                        f"{expected} bytes"
                    )
                encoding = ENCODING_NAME.get(p.encoding)
                if encoding is None:
                    raise FrameError(f"{where}: unknown encoding {p.encoding}")
                payload = p.payload  # each attribute read copies the bytes: read it once
                if len(payload) > _max_payload(encoding, expected):
                    raise FrameError(f"{where}: {len(payload)}-byte {encoding} payload for {expected} bytes")
                total += expected
                if total > self.max_frame_bytes:
                    raise FrameError(
                        f"{where}: frame decodes to more than {self.max_frame_bytes} bytes; split it into frames"
                    )
                try:
                    data = (
                        payload
                        if encoding == "raw" and len(payload) == expected
                        else codec.decode(encoding, payload, expected, rect.w)
                    )
                except codec.CodecError as exc:
                    raise FrameError(f"{where} {rect.w}x{rect.h}+{rect.x}+{rect.y}: {exc}") from None
                prep.ops.append(_Op("pixels", rect, data=data))
                prep.pixel_rects += 1
                prep.payload_bytes += len(payload)
                prep.decoded_bytes += expected
            elif kind == "video" or kind == "video_end":
                if video is None:
                    raise FrameError(f"{where}: this service takes no video streams")
                if kind == "video_end":
                    video.end(update.video_end.stream_id)
                    continue
                got = video.decode(update.video, bounds, where)
                if got is None:
                    continue
                rect, data = got
                total += len(data)
                if total > self.max_frame_bytes:
                    raise FrameError(
                        f"{where}: frame decodes to more than {self.max_frame_bytes} bytes; split it into frames"
                    )
                prep.ops.append(_Op("pixels", rect, data=data))
                prep.video_frames += 1
            elif kind == "cursor_define":
                prep.cursor = cursor_from_proto(update.cursor_define, where)
            elif kind == "cursor_move":
                m = update.cursor_move
                prep.cursor_move = (m.x, m.y, m.visible)
            else:
                raise FrameError(f"{where}: empty update")
        return prep

    @staticmethod
    def _inside(rect: Rect, bounds: Rect, where: str) -> None:
        if rect.w <= 0 or rect.h <= 0:
            raise FrameError(f"{where}: empty or negative rectangle {rect.w}x{rect.h}")
        if not bounds.contains(rect):
            raise FrameError(
                f"{where}: rectangle {rect.w}x{rect.h}+{rect.x}+{rect.y} outside the {bounds.w}x{bounds.h} desktop"
            )

    # ------------------------------------------------------------------ applying
    def apply(self, prep: Prepared) -> tuple[Rect, bool]:
        """Apply a prepared frame; returns (bounding box of what changed, whether the mode changed)."""
        with self.lock:
            changed_mode = self.mode is None or (prep.mode.width, prep.mode.height, prep.mode.bpp) != (
                self.mode.width,
                self.mode.height,
                self.mode.bpp,
            )
            if changed_mode:
                m = prep.mode
                self.pixels = bytearray(m.width * m.height * m.bytes_per_pixel)
                self.surface = Surface(m.width, m.height, m.width * m.bytes_per_pixel, m.bytes_per_pixel)
            self.mode = prep.mode
            damage = Rect(0, 0, prep.mode.width, prep.mode.height) if changed_mode else EMPTY
            buf, surface = self.pixels, self.surface
            for op in prep.ops:
                if op.kind == "pixels":
                    raster.write_rect(buf, surface, op.rect, op.data)
                elif op.kind == "fill":
                    raster.fill(buf, surface, op.rect, op.color)
                else:
                    raster.copy(buf, surface, Rect(op.src_x, op.src_y, op.rect.w, op.rect.h), op.rect.x, op.rect.y)
                damage = damage.union(op.rect)
        return damage, changed_mode

    # ------------------------------------------------------------------ reading
    def read(self, rect: Rect) -> bytes:
        """Packed pixels of `rect` (must lie inside the desktop)."""
        with self.lock:
            return raster.read_rect(self.pixels, self.surface, rect)

    def screenshot_rgb(self, view: Rect, palette: bytes = b"") -> bytes:
        """Packed RGB of `view` (desktop coordinates); parts outside the desktop are black."""
        out = bytearray(view.w * view.h * 3)
        with self.lock:
            mode = self.mode
            if mode is None:
                return bytes(out)
            inside = view.intersection(Rect(0, 0, mode.width, mode.height))
            if inside.empty:
                return bytes(out)
            data = raster.read_rect(self.pixels, self.surface, inside)
        rgb = to_rgb(data, mode.bpp, palette)
        if inside == view:
            return bytes(rgb)
        row, dst_row = inside.w * 3, view.w * 3
        left = (inside.x - view.x) * 3
        for i in range(inside.h):
            o = (inside.y - view.y + i) * dst_row + left
            out[o : o + row] = rgb[i * row : (i + 1) * row]
        return bytes(out)

    def screenshot_png(self, view: Rect, palette: bytes = b"") -> bytes:
        return encode_rgb(view.w, view.h, self.screenshot_rgb(view, palette), level=1)


def to_rgb(data: bytes | bytearray | memoryview, bpp: int, palette: bytes = b"") -> bytes | bytearray:
    """Guest pixels to packed RGB: 32 bpp is XRGB, 16 bpp RGB565, 8 bpp indexes the palette (r, g, b)."""
    if bpp == 32:
        return bgrx_to_rgb(data)
    if bpp == 8:
        pal = (bytes(palette) + bytes(768))[:768]
        out = bytearray(len(data) * 3)
        out[0::3] = bytes(data).translate(pal[0::3])
        out[1::3] = bytes(data).translate(pal[1::3])
        out[2::3] = bytes(data).translate(pal[2::3])
        return out
    # RGB565: SDL converts in C (SDL_ConvertPixels needs no SDL_Init).
    import ctypes
    import warnings

    with warnings.catch_warnings():  # pysdl2-dll announces which SDL it loaded
        warnings.simplefilter("ignore")
        import sdl2

    n = len(data) // 2
    src = bytes(data)
    out = bytearray(n * 3)
    dst = (ctypes.c_char * len(out)).from_buffer(out)
    fmt_in, fmt_out = sdl2.SDL_PIXELFORMAT_RGB565, sdl2.SDL_PIXELFORMAT_RGB24
    if n and sdl2.SDL_ConvertPixels(n, 1, fmt_in, src, n * 2, fmt_out, dst, n * 3):
        raise FrameError(f"cannot convert RGB565 pixels: {sdl2.SDL_GetError().decode(errors='replace')}")
    del dst
    return out


def cursor_from_proto(c: display_pb2.CursorDefine, where: str = "cursor") -> Cursor:
    if not (1 <= c.width <= MAX_CURSOR and 1 <= c.height <= MAX_CURSOR):
        raise FrameError(f"{where}: cursor {c.width}x{c.height} outside 1..{MAX_CURSOR} per side")
    if len(c.argb) != c.width * c.height * 4:
        raise FrameError(f"{where}: {len(c.argb)} bytes of ARGB for a {c.width}x{c.height} cursor")
    if c.hot_x >= c.width or c.hot_y >= c.height:
        raise FrameError(f"{where}: hotspot ({c.hot_x}, {c.hot_y}) outside the {c.width}x{c.height} cursor")
    return Cursor(c.width, c.height, c.hot_x, c.hot_y, bytes(c.argb))
