"""A scripted guest that drives a VMware SVGA II the way a 2D driver (Linux vmwgfx's legacy path, X's vmware
driver) does, and draws an animated desktop with it.

Port accesses go through a `Device` (INDEX then VALUE, 32-bit); VRAM and FIFO are the guest's own buffers,
written directly. Probe: ID negotiation (SVGA_ID_2), capabilities, memory sizes. Mode set: WIDTH, HEIGHT,
BITS_PER_PIXEL, read BYTES_PER_LINE, PITCHLOCK, ENABLE. FIFO: MIN/MAX/NEXT_CMD/STOP written in FIFO memory,
then CONFIG_DONE. Commands are written at NEXT_CMD (wrapping MAX -> MIN); a full FIFO makes the driver SYNC
and wait for BUSY to clear; every frame ends with the busy-word handshake and SYNC. Optionally every Nth
command is published in two halves with a SYNC in between (a partial command the device must wait for).

The desktop: a flat background and taskbar (RECT_FILL), windows with title bars whose text is drawn by the
CPU into VRAM as small glyph rectangles and announced with UPDATE, windows sliding sideways by RECT_COPY with
the uncovered strip filled, a terminal that scrolls by RECT_COPY, a "photo" window of gradients and noise,
a clock, and a hardware cursor (DEFINE_ALPHA_CURSOR, moved with the cursor bypass registers).
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from frontend_shim.guests.guest import Device
from services.common import raster
from services.common.raster import Rect, Surface
from services.devices import svga_regs as R
from services.devices.svga import Buffer, FifoResult, SvgaII, as_buffer

VRAM_SIZE = R.DEFAULT_VRAM_SIZE
FIFO_SIZE = 64 * 1024  # small enough that a few seconds of drawing laps the ring many times
FIFO_MIN = 4096  # one page of FIFO registers, as Linux uses (leaves room for the busy word 290)
BACKGROUND = 0x3A6EA5
TASKBAR = 0x202830
GLYPH_W, GLYPH_H, GLYPH_SCALE = 5, 7, 2
CELL_W, CELL_H = (GLYPH_W + 1) * GLYPH_SCALE, (GLYPH_H + 2) * GLYPH_SCALE
TITLE_H = 20


class GuestError(RuntimeError):
    """The device did not behave as the driver requires (it gives up, like a driver's probe failing)."""


def new_memory(vram_size: int = VRAM_SIZE, fifo_size: int = FIFO_SIZE) -> tuple[bytearray, bytearray]:
    """The guest's BAR1 (VRAM) and BAR2 (FIFO) memory."""
    return bytearray(vram_size), bytearray(fifo_size)


WORD = 4
U32 = 0xFFFFFFFF


def _words(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}I")


class FifoWriter:
    """Writes commands into FIFO memory the way a guest driver does (the guest side of the FIFO; tests use it too).

    Mirrors Linux vmwgfx: data first, then NEXT_CMD; the ring never fills completely (one word stays free
    so that NEXT_CMD == STOP always means empty). A command that does not fit the free space is not written
    and the call returns False.
    """

    def __init__(self, fifo: Buffer, *, min_offset: int = 4096, max_offset: int | None = None, init: bool = True):
        self.fifo = as_buffer(fifo, "FIFO")
        self.lo = min_offset
        self.hi = len(self.fifo) if max_offset is None else max_offset
        if not (R.FIFO_NUM_BASIC_REGS * WORD <= self.lo < self.hi <= len(self.fifo)):
            raise ValueError(f"FIFO data area [{self.lo}, {self.hi}) does not fit {len(self.fifo)} bytes")
        if init:
            self.set_registers(self.lo, self.hi, self.lo, self.lo)
            if (R.FIFO_BUSY + 1) * WORD <= self.lo:
                self._put(R.FIFO_BUSY * WORD, 0)

    def _put(self, offset: int, value: int) -> None:
        _words(1).pack_into(self.fifo, offset, value & U32)

    def _get(self, offset: int) -> int:
        return _words(1).unpack_from(self.fifo, offset)[0]

    def set_registers(self, lo: int, hi: int, next_cmd: int, stop: int) -> None:
        """Write the four FIFO registers directly (also to set up wrap-around or bogus layouts in tests)."""
        _words(4).pack_into(self.fifo, 0, lo & U32, hi & U32, next_cmd & U32, stop & U32)

    @property
    def next_cmd(self) -> int:
        return self._get(R.FIFO_NEXT_CMD * WORD)

    @property
    def stop(self) -> int:
        return self._get(R.FIFO_STOP * WORD)

    @property
    def free_bytes(self) -> int:
        used = (self.next_cmd - self.stop) % (self.hi - self.lo)
        return self.hi - self.lo - used - WORD

    def write_words(self, words: Sequence[int]) -> bool:
        """Append raw words (a whole command, or part of one) and publish them with NEXT_CMD."""
        data = _words(len(words)).pack(*(w & U32 for w in words)) if words else b""
        return self.write_bytes(data)

    def write_bytes(self, data: bytes) -> bool:
        if len(data) % WORD:
            raise ValueError("FIFO data must be whole 32-bit words")
        if len(data) > self.free_bytes:
            return False
        pos = self.next_cmd
        first = min(len(data), self.hi - pos)
        self.fifo[pos : pos + first] = data[:first]
        self.fifo[self.lo : self.lo + len(data) - first] = data[first:]
        nxt = pos + len(data)
        if nxt >= self.hi:
            nxt -= self.hi - self.lo
        self._put(R.FIFO_NEXT_CMD * WORD, nxt)
        return True

    def update(self, x: int, y: int, w: int, h: int) -> bool:
        return self.write_words((R.CMD_UPDATE, x, y, w, h))

    def update_verbose(self, x: int, y: int, w: int, h: int, reason: int = 0) -> bool:
        return self.write_words((R.CMD_UPDATE_VERBOSE, x, y, w, h, reason))

    def rect_fill(self, color: int, x: int, y: int, w: int, h: int) -> bool:
        return self.write_words((R.CMD_RECT_FILL, color, x, y, w, h))

    def rect_copy(self, sx: int, sy: int, dx: int, dy: int, w: int, h: int) -> bool:
        return self.write_words((R.CMD_RECT_COPY, sx, sy, dx, dy, w, h))

    def fence(self, fence_id: int) -> bool:
        return self.write_words((R.CMD_FENCE, fence_id))

    def define_alpha_cursor(self, hot_x: int, hot_y: int, width: int, height: int, argb: bytes) -> bool:
        header = _words(6).pack(R.CMD_DEFINE_ALPHA_CURSOR, 0, hot_x, hot_y, width, height)
        return self.write_bytes(header + bytes(argb))

    def define_cursor(
        self,
        hot_x: int,
        hot_y: int,
        width: int,
        height: int,
        and_depth: int,
        xor_depth: int,
        and_mask: bytes,
        xor_mask: bytes,
    ) -> bool:
        """DEFINE_CURSOR; each mask is already laid out in scanlines padded to 32 bits."""
        header = _words(8).pack(R.CMD_DEFINE_CURSOR, 0, hot_x, hot_y, width, height, and_depth, xor_depth)
        return self.write_bytes(header + bytes(and_mask) + bytes(xor_mask))

    def ping(self, device: SvgaII) -> FifoResult | None:
        """What Linux does after committing: claim the busy word (cmpxchg 0 -> 1) and, if it was free, SYNC."""
        if (R.FIFO_BUSY + 1) * WORD <= self.lo:
            if self._get(R.FIFO_BUSY * WORD):
                return None
            self._put(R.FIFO_BUSY * WORD, 1)
        return device.write_register(R.REG_SYNC, 1)


@dataclass
class Window:
    x: int
    y: int
    w: int
    h: int
    color: int
    title: str
    dx: int = 0
    text_row: int = 0
    text_col: int = 0
    photo: bool = False


class ScriptedSvgaDriver:
    def __init__(
        self,
        device: Device,
        vram: bytearray,
        fifo: bytearray,
        *,
        seed: int = 1,
        partial_every: int = 0,
        busy_timeout: float = 2.0,
    ) -> None:
        self.dev = device
        self.vram = vram
        self.fifo = fifo
        self.rng = random.Random(seed)
        self.partial_every = partial_every
        self.busy_timeout = busy_timeout
        self.accesses = 0
        self.commands = 0
        self.syncs = 0
        self.full_waits = 0
        self.updates = 0
        self.laps = 0  # times NEXT_CMD wrapped from MAX back to MIN
        self.width = self.height = self.pitch = 0
        self.bpp = 32
        self.writer: FifoWriter | None = None
        self.windows: list[Window] = []
        self._glyphs = _make_glyphs(self.rng)
        self._photo = b""
        self.video: tuple[Rect, Callable[[int], bytes]] | None = None  # a clip playing there: frame(i) -> pixels

    # ------------------------------------------------------------------ port helpers
    def write_reg(self, index: int, value: int) -> None:
        self.accesses += 2
        self.dev.io_write(0, R.INDEX_PORT, 4, index)
        self.dev.io_write(0, R.VALUE_PORT, 4, value)

    def read_reg(self, index: int) -> int:
        self.accesses += 2
        self.dev.io_write(0, R.INDEX_PORT, 4, index)
        return self.dev.io_read(0, R.VALUE_PORT, 4)

    # ------------------------------------------------------------------ probe, mode, FIFO
    def probe(self) -> dict[str, int]:
        self.write_reg(R.REG_ID, R.ID_2)
        got = self.read_reg(R.REG_ID)
        if got != R.ID_2:
            raise GuestError(f"device does not speak SVGA_ID_2 (ID reads {got:#x})")
        caps = self.read_reg(R.REG_CAPABILITIES)
        if not caps & R.CAP_PITCHLOCK:
            raise GuestError("Hardware has no pitchlock")
        info = {
            "capabilities": caps,
            "vram_size": self.read_reg(R.REG_VRAM_SIZE),
            "fifo_size": self.read_reg(R.REG_MEM_SIZE),
            "max_width": self.read_reg(R.REG_MAX_WIDTH),
            "max_height": self.read_reg(R.REG_MAX_HEIGHT),
            "host_bpp": self.read_reg(R.REG_HOST_BITS_PER_PIXEL),
            "displays": self.read_reg(R.REG_NUM_DISPLAYS),
        }
        self.write_reg(R.REG_GUEST_ID, 0x5010)  # Linux's guest id
        return info

    def set_mode(self, width: int, height: int, bpp: int = 32) -> None:
        self.write_reg(R.REG_WIDTH, width)
        self.write_reg(R.REG_HEIGHT, height)
        self.write_reg(R.REG_BITS_PER_PIXEL, bpp)
        pitch = self.read_reg(R.REG_BYTES_PER_LINE)
        self.write_reg(R.REG_PITCHLOCK, pitch)
        self.read_reg(R.REG_DEPTH)
        self.write_reg(R.REG_ENABLE, R.ENABLE_ENABLE)
        self.width, self.height, self.bpp, self.pitch = width, height, bpp, pitch

    def init_fifo(self, fifo_min: int = FIFO_MIN) -> None:
        struct.pack_into("<4I", self.fifo, 0, fifo_min, len(self.fifo), fifo_min, fifo_min)
        if (R.FIFO_BUSY + 1) * 4 <= fifo_min:
            struct.pack_into("<I", self.fifo, R.FIFO_BUSY * 4, 0)
        self.writer = FifoWriter(self.fifo, min_offset=fifo_min, init=False)
        self.write_reg(R.REG_CONFIG_DONE, 1)

    @property
    def surface(self) -> Surface:
        return Surface(self.width, self.height, self.pitch, self.bpp // 8)

    def framebuffer(self) -> bytes:
        """The visible framebuffer as packed rows (what a screen showing the whole desktop must show)."""
        return raster.read_rect(self.vram, self.surface, Rect(0, 0, self.width, self.height))

    # ------------------------------------------------------------------ commands
    def sync(self) -> None:
        """What Linux does after committing: claim the busy word, SYNC, then wait for BUSY to clear."""
        busy_off = R.FIFO_BUSY * 4
        if struct.unpack_from("<I", self.fifo, busy_off)[0] == 0:
            struct.pack_into("<I", self.fifo, busy_off, 1)
            self.write_reg(R.REG_SYNC, 1)
            self.syncs += 1
        deadline = time.monotonic() + self.busy_timeout
        while self.read_reg(R.REG_BUSY):
            if time.monotonic() > deadline:
                raise GuestError(f"device stayed BUSY for {self.busy_timeout} s")

    def submit(self, words: tuple[int, ...] | list[int], data: bytes = b"") -> None:
        """Queue one command (words, then optional payload bytes); SYNC and wait when the FIFO is full."""
        assert self.writer is not None, "init_fifo first"
        body = struct.pack(f"<{len(words)}I", *words) + data
        self.commands += 1
        if self.partial_every and self.commands % self.partial_every == 0 and len(body) >= 8:
            half = (len(body) // 8) * 4
            self._write(body[:half])
            self.sync()  # the device sees half a command: it must wait for the rest
            self._write(body[half:])
        else:
            self._write(body)

    def _write(self, body: bytes) -> None:
        assert self.writer is not None
        before = self.writer.next_cmd
        while not self.writer.write_bytes(body):
            self.full_waits += 1
            self.sync()
            if self.writer.free_bytes < len(body) and self.writer.next_cmd == self.writer.stop:
                raise GuestError(f"a {len(body)}-byte command never fits the FIFO")
        if self.writer.next_cmd <= before:
            self.laps += 1

    def update(self, r: Rect) -> None:
        self.updates += 1
        self.submit((R.CMD_UPDATE, r.x, r.y, r.w, r.h))

    def fill(self, r: Rect, color: int) -> None:
        self.submit((R.CMD_RECT_FILL, color, r.x, r.y, r.w, r.h))

    def copy(self, sx: int, sy: int, dx: int, dy: int, w: int, h: int) -> None:
        self.submit((R.CMD_RECT_COPY, sx, sy, dx, dy, w, h))

    def define_cursor(self) -> None:
        w = h = 16
        argb = bytearray(w * h * 4)
        for y in range(h):  # an arrow: white inside, black outline, transparent elsewhere
            for x in range(min(y + 1, 11) if y < 12 else max(0, 4 - (y - 12))):
                edge = x == 0 or x == min(y, 10) or y == 11
                struct.pack_into("<I", argb, (y * w + x) * 4, 0xFF000000 if edge else 0xFFFFFFFF)
        self.submit((R.CMD_DEFINE_ALPHA_CURSOR, 0, 0, 0, w, h), bytes(argb))
        self.write_reg(R.REG_CURSOR_ID, 0)

    def move_cursor(self, x: int, y: int, visible: bool = True) -> None:
        self.write_reg(R.REG_CURSOR_ID, 0)
        self.write_reg(R.REG_CURSOR_X, x)
        self.write_reg(R.REG_CURSOR_Y, y)
        self.write_reg(R.REG_CURSOR_ON, R.CURSOR_ON_SHOW if visible else R.CURSOR_ON_HIDE)

    # ------------------------------------------------------------------ CPU drawing (direct VRAM writes)
    def put_pixels(self, r: Rect, data: bytes) -> None:
        raster.write_rect(self.vram, self.surface, r, data)

    def draw_text(self, x: int, y: int, text: str, fg: int, bg: int) -> Rect:
        """Glyph-ish text drawn into VRAM (each character a small pattern of rectangles); returns its box."""
        bypp = self.bpp // 8
        fg_px, bg_px = raster.pixel_bytes(fg, bypp), raster.pixel_bytes(bg, bypp)
        box = Rect(x, y, len(text) * CELL_W, CELL_H).intersection(Rect(0, 0, self.width, self.height))
        if box.empty:
            return box
        rows = [bytearray(bg_px * box.w) for _ in range(box.h)]
        for i, ch in enumerate(text):
            if ch == " ":
                continue
            glyph = self._glyphs[ord(ch) % len(self._glyphs)]
            for gy, bits in enumerate(glyph):
                for gx in range(GLYPH_W):
                    if bits >> gx & 1:
                        px = i * CELL_W + gx * GLYPH_SCALE
                        if px + GLYPH_SCALE > box.w:
                            continue
                        for sy in range(GLYPH_SCALE):
                            ry = GLYPH_SCALE + gy * GLYPH_SCALE + sy
                            if ry < box.h:
                                rows[ry][px * bypp : (px + GLYPH_SCALE) * bypp] = fg_px * GLYPH_SCALE
        self.put_pixels(box, b"".join(rows))
        return box

    def photo(self, w: int, h: int) -> bytes:
        """Photo-like pixels: smooth colour gradients plus noise (high entropy), w x h packed XRGB."""
        if len(self._photo) != w * h * 4:
            noise = self.rng.randbytes(w * h)
            out = bytearray(w * h * 4)
            for y in range(h):
                for x in range(w):
                    n = noise[y * w + x] & 0x1F
                    o = (y * w + x) * 4
                    out[o] = (x * 255 // max(1, w - 1) + n) & 0xFF
                    out[o + 1] = (y * 255 // max(1, h - 1) + n) & 0xFF
                    out[o + 2] = ((x + y) * 127 // max(1, w + h) + 64 + n) & 0xFF
            self._photo = bytes(out)
        return self._photo

    # ------------------------------------------------------------------ the desktop
    def desktop(self, photo: bool = True) -> None:
        """Background, taskbar, windows (drawn once); then `tick` animates."""
        W, H = self.width, self.height
        self.fill(Rect(0, 0, W, H), BACKGROUND)
        self.fill(Rect(0, H - 28, W, 28), TASKBAR)
        self.update(Rect(0, 0, W, H))
        lanes = max(1, (H - 60) // 180)
        colors = (0x2B5797, 0x7E3878, 0x1E7145, 0xB91D47)
        self.windows = []
        for i in range(min(lanes, 4)):
            w = min(W - 40, 300 + 60 * i)
            win = Window(20 + 40 * i, 20 + i * 180, w, 160, colors[i % len(colors)], f"window {i + 1}",
                         dx=4 + 2 * i, photo=photo and i == 1)  # fmt: skip
            self.windows.append(win)
            self.draw_window(win)
        self.define_cursor()
        self.sync()

    def draw_window(self, win: Window) -> None:
        r = Rect(win.x, win.y, win.w, win.h)
        self.fill(r, 0xF0F0F0)
        self.fill(Rect(win.x, win.y, win.w, TITLE_H), win.color)
        self.sync()  # the fills are in VRAM before the CPU draws text over them
        self.draw_text(win.x + 6, win.y + 2, win.title, 0xFFFFFF, win.color)
        if win.photo:
            pw, ph = win.w - 8, win.h - TITLE_H - 8
            self.put_pixels(Rect(win.x + 4, win.y + TITLE_H + 4, pw, ph), self.photo(pw, ph))
        self.update(r)

    def type_text(self, win: Window, n: int) -> None:
        """A terminal: characters appear; a full window scrolls up one line with RECT_COPY."""
        cols = (win.w - 12) // CELL_W
        rows = (win.h - TITLE_H - 8) // CELL_H
        if cols <= 0 or rows <= 0:
            return
        for _ in range(n):
            if win.text_col >= cols:
                win.text_col, win.text_row = 0, win.text_row + 1
            if win.text_row >= rows:
                top = win.y + TITLE_H + 4
                self.copy(win.x + 6, top + CELL_H, win.x + 6, top, cols * CELL_W, (rows - 1) * CELL_H)
                self.fill(Rect(win.x + 6, top + (rows - 1) * CELL_H, cols * CELL_W, CELL_H), 0xF0F0F0)
                self.sync()
                win.text_row = rows - 1
            ch = chr(self.rng.randrange(33, 127)) if self.rng.random() > 0.15 else " "
            x = win.x + 6 + win.text_col * CELL_W
            y = win.y + TITLE_H + 4 + win.text_row * CELL_H
            self.update(self.draw_text(x, y, ch, 0x101010, 0xF0F0F0))
            win.text_col += 1

    def slide(self, win: Window) -> None:
        """Move a window sideways: RECT_COPY of the whole window, RECT_FILL of the uncovered strip."""
        W = self.width
        nx = win.x + win.dx
        if nx < 0 or nx + win.w > W:
            win.dx = -win.dx
            nx = win.x + win.dx
        if not 0 <= nx <= W - win.w:
            return
        self.copy(win.x, win.y, nx, win.y, win.w, win.h)
        if nx > win.x:
            self.fill(Rect(win.x, win.y, nx - win.x, win.h), BACKGROUND)
        else:
            self.fill(Rect(nx + win.w, win.y, win.x - nx, win.h), BACKGROUND)
        win.x = nx

    def clock(self, t: float) -> None:
        text = time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 10) % 10}"
        self.update(self.draw_text(self.width - 8 * CELL_W - 8, self.height - 24, text, 0xFFFFFF, TASKBAR))

    def tick(self, frame: int) -> None:
        """One animation step, ending with SYNC (what a compositor's frame would do)."""
        for i, win in enumerate(self.windows):
            if i % 2 == frame % 2:
                self.slide(win)
        self.sync()  # like any 2D driver: accelerated operations finish before the CPU draws into the same pixels
        for win in self.windows:
            if not win.photo:
                self.type_text(win, 3)
        if frame % 10 == 0:
            self.clock(frame / 30)
        t = frame / 30
        cx = int(self.width / 2 + self.width / 3 * math.sin(t * 0.9))
        cy = int(self.height / 2 + self.height / 3 * math.sin(t * 1.3 + 1))
        self.move_cursor(cx, cy)
        if self.video is not None:  # a video player: a new picture every tick
            rect, picture = self.video
            self.put_pixels(rect, picture(frame))
            self.update(rect)
        self.sync()

    def run(self, seconds: float, fps: float = 30.0, max_ticks: int | None = None) -> int:
        """Animate for `seconds` (or `max_ticks`) at up to `fps` ticks a second; returns the ticks done."""
        frames = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds and (max_ticks is None or frames < max_ticks):
            self.tick(frames)
            frames += 1
            delay = start + frames / fps - time.monotonic() if fps > 0 else 0
            if delay > 0:
                time.sleep(delay)
        return frames


def _make_glyphs(rng: random.Random) -> list[tuple[int, ...]]:
    """94 glyph-ish 5x7 bit patterns (not a font: text-like content with the statistics of one)."""
    glyphs = []
    for _ in range(94):
        rows = [rng.getrandbits(GLYPH_W) | (1 if rng.random() < 0.5 else 0) for _ in range(GLYPH_H)]
        glyphs.append(tuple(rows))
    return glyphs
