"""The shim's SVGA II: one guest display card, shown by one or more remote display services.

This is the only place in the shim that talks gRPC for the display. `DisplayLink` implements
`frontend_shim.guests.guest.Device` for BAR0 (the I/O ports). VRAM (BAR1) and FIFO memory (BAR2) are guest memory
that the shim reads directly: buffers handed in by the trap source (bytearrays for the scripted guest, an mmap
from vfio-user later).

Coherence modes, and where the FIFO runs:
- The FIFO and VRAM are guest memory at the shim, so the FIFO engine always runs here: the shim keeps an
  `SvgaII` over the guest's buffers and replays *every* guest register write into it as the write passes by
  (the trap sees it anyway). A SYNC write therefore runs the FIFO pass right here, on the guest's thread, and
  a timer runs passes too (QEMU does on every display refresh). After each pass the shim sends `fifo_done`
  (BUSY and the interrupt flags the pass raised) behind the write that caused it, so the service's register
  file agrees about BUSY before the guest's next read can arrive.
- mirrored (the paper's card 2): that local model also answers the guest's reads; writes are streamed to the
  services, whose replicas follow.
- backend (card 1): the register file lives in the first service; the guest's reads are round trips to it
  (bounded by `access_timeout`; no answer reads as all ones, like a vanished card), writes are posted. The
  local model is then only a FIFO engine: it is never asked for a read and has no register authority.
  This keeps the paper's cost model (reads cross the network) without ever shipping guest memory to the
  service just so it can be sent back as frames.

Frames: every FIFO pass yields effects (UPDATE damage, RECT_FILL and RECT_COPY the device already did in
VRAM, cursor changes, mode changes). Each service connection has a `_Builder` that collects them per frame:
fills and copies travel as commands (not pixels), UPDATE damage is coalesced (merged rectangles), and when a
frame is taken the damaged rectangles are cut out of VRAM under the device lock, so pixels and commands
describe the same instant. A copy whose source is not known-good at the service (inside damage not delivered
yet, or outside that service's viewport) travels as pixels instead. Pixels are encoded as
`frontend_shim.links.encoding_policy` decides (raw, lzo, lz4, zstd, image, or `auto`: per rectangle, from samples
and the measured link throughput); with tile diff the builder keeps a shadow of what the service has and sends
only the tiles that differ (commands replayed on the shadow first, and every command's target is verified the
same way), while that pays.

Flow control: a bounded number of frames in flight per service (the service says how many in `opened`);
while the window is full, damage keeps coalescing in the builder. No RPC is ever made per rectangle.
Several services at once: each learns its viewport from `opened` and gets only the damage inside it.
After a reconnect the service gets the register state in `open` and a full redraw.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import grpc

from frontend_shim.links.encoding_policy import ENCODINGS, EncodingPolicy, TileDiffGate
from frontend_shim.links.session_stream import FRAME_OVERHEAD as _FRAME_OVERHEAD
from frontend_shim.links.session_stream import SessionStream, Waiter
from frontend_shim.links.video_streams import VIDEO_IN_FLIGHT, VideoCut, VideoSettings, VideoStreams
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import logs, raster
from services.common.raster import Rect, Surface
from services.common.video_codec import VIDEO_VERSION
from services.devices import svga_regs as R
from services.devices.svga import (
    AccessError,
    Buffer,
    Copy,
    Cursor,
    CursorDefined,
    CursorMoved,
    Fence,
    FifoResult,
    Fill,
    Mode,
    ModeChanged,
    SvgaII,
    Update,
)
from services.devices.svga_convert import (
    ENCODING_ENUM,
    VIDEO_CODEC_ENUM,
    VIDEO_CODEC_NAME,
    cursor_to_proto,
    registers_to_proto,
)

log = logs.get("shim.display")
CoherenceMode = Literal["backend", "mirrored"]
MODES: dict[str, int] = {"backend": common_pb2.COHERENCE_MODE_BACKEND, "mirrored": common_pb2.COHERENCE_MODE_MIRRORED}
_ALL_ONES = 0xFFFFFFFF
_MAX_MESSAGE = 16 * 1024 * 1024
_FRAME_PAYLOAD_BUDGET = 4 * 1024 * 1024  # split frames above this many payload bytes (service limit is 8 MiB)
_BAND_BYTES = 512 * 1024  # pixel rectangles larger than this are cut into row bands (pipelining, per-band auto)
_MAX_RECTS = 32  # damage rectangles kept per frame before the closest ones are merged
_TILE = 64  # tile side for tile diff
_REFRESH_PERIOD = 0.016  # seconds between timer-driven FIFO passes
_MAX_PASSES = 64  # passes per SYNC while the device reports it stopped at its per-pass bound
_BACKOFF_MAX = 1.0  # seconds between reconnect attempts at most: a restarted service is back in use within ~1 s


# ----------------------------------------------------------------------------------------------- statistics
@dataclass
class DisplayStats:
    reads: int = 0
    writes: int = 0
    read_timeouts: int = 0
    fifo_passes: int = 0
    fifo_commands: int = 0
    fifo_errors: int = 0
    frames: int = 0
    frames_acked: int = 0
    pictures_presented: int = 0  # batches (all damage of one take, maybe split in frames) wholly acknowledged
    pixel_rects: int = 0
    fills: int = 0
    copies: int = 0
    copies_as_pixels: int = 0
    cursor_updates: int = 0
    tiles_sent: int = 0
    tiles_skipped: int = 0
    pixel_bytes: int = 0  # decoded pixel bytes sent
    payload_bytes: int = 0  # encoded pixel bytes sent
    encode_ns: int = 0  # shim time spent choosing and encoding pixel payloads
    tile_diff_rests: int = 0  # times tile diff switched itself off because it did not pay
    video_frames: int = 0  # lossy video pictures sent (frontend_shim/links/video_streams.py)
    video_bytes: int = 0
    bytes_to_service: int = 0
    bytes_from_service: int = 0
    messages_to_service: int = 0
    reconnects: int = 0
    encodings: Counter[str] = field(default_factory=Counter)
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # oldest damage -> presented

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        d["encodings"] = dict(self.encodings)
        d["compression_ratio"] = round(self.pixel_bytes / self.payload_bytes, 3) if self.payload_bytes else 0.0
        return d


# ----------------------------------------------------------------------------------------------- damage
def add_damage(rects: list[Rect], new: Rect) -> None:
    """Add `new` to a list of damage rectangles, merging where the union wastes little area."""
    if new.empty:
        return
    while True:
        for i, r in enumerate(rects):
            if r.contains(new):
                return
            u = r.union(new)
            if (
                new.contains(r)
                or u.area <= (r.area + new.area) * 5 // 4
                or r.intersection(new).area * 2 >= min(r.area, new.area)
            ):
                del rects[i]
                new = u
                break
        else:
            rects.append(new)
            break
    while len(rects) > _MAX_RECTS:  # merge the pair whose union wastes least
        best = None
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                u = rects[i].union(rects[j])
                waste = u.area - rects[i].area - rects[j].area
                if best is None or waste < best[0]:
                    best = (waste, i, j, u)
        assert best is not None
        _, i, j, u = best
        del rects[j], rects[i]
        rects.append(u)


def _overlaps_any(rects: Sequence[Rect], r: Rect) -> bool:
    return any(not p.intersection(r).empty for p in rects)


@dataclass
class _Batch:
    """What a builder hands over for one frame: commands and VRAM cut at the same instant."""

    mode: Mode
    commands: list[tuple]  # ("fill", rect, color) | ("copy", src_x, src_y, dst rect)
    pixels: list[tuple[Rect, bytes]]  # with tile diff, command targets too: they are checked against the shadow
    cursor: Cursor | None
    cursor_move: tuple[int, int, bool] | None
    full: bool
    sent_ns: int
    video: list[VideoCut] = field(default_factory=list)  # video streams' pictures, encoded outside the lock
    video_ends: list[int] = field(default_factory=list)


class _Builder:
    """One service's frame under construction. `add` and `take` run under the link's device lock."""

    def __init__(self, tile_diff: bool, video: VideoSettings) -> None:
        self.tile_diff = tile_diff
        self.gate = TileDiffGate(tile_diff)
        self.viewport: Rect | None = None  # None: the whole desktop
        self.video = VideoStreams(video)
        self.reset()

    def reset(self) -> None:
        """A new session at the service: it has nothing (black desktop, no cursor) until a full frame."""
        self.full = True
        self.commands: list[tuple] = []
        self.pending: list[Rect] = []
        self.verify: list[Rect] = []
        self.cursor: Cursor | None = None
        self.cursor_dirty = False
        self.cursor_move: tuple[int, int, bool] | None = None
        self.sent_mode: tuple[int, int, int] | None = None
        self.first_ns = 0
        self.shadow = bytearray()
        self.shadow_surface = Surface(0, 0, 0, 4)
        self.force_all = False  # the shadow cannot be trusted: send everything once and rebuild it
        self.video.reset()

    @property
    def dirty(self) -> bool:
        return bool(
            self.full
            or self.commands
            or self.pending
            or self.cursor_dirty
            or self.cursor_move is not None
            or self.video.dirty
        )

    def _view(self, mode: Mode) -> Rect:
        desktop = Rect(0, 0, mode.width, mode.height)
        return desktop if self.viewport is None else self.viewport.intersection(desktop)

    def add(self, effects: Sequence[object], mode: Mode, stats: DisplayStats) -> None:
        if not effects:
            return
        if not self.first_ns:
            self.first_ns = time.monotonic_ns()
        view = self._view(mode)
        for e in effects:
            if isinstance(e, Update):
                if not self.full:
                    for piece in self.video.observe(e.rect.intersection(view), time.monotonic()):  # video hook
                        add_damage(self.pending, piece)
            elif isinstance(e, Fill):
                if self.full or e.rect.intersection(view).empty:
                    continue
                self.commands.append(("fill", e.rect, e.color))
                self.pending = [p for p in self.pending if not e.rect.contains(p)]
                if self.tile_diff:
                    self.verify.append(e.rect.intersection(view))
            elif isinstance(e, Copy):
                dst = e.rect.intersection(view)
                if self.full or dst.empty:
                    continue
                src = Rect(e.src_x, e.src_y, e.rect.w, e.rect.h)
                if not view.contains(src) or _overlaps_any(self.pending, src) or self.video.shadows(src):
                    add_damage(self.pending, dst)  # the service cannot copy what it does not have right
                    stats.copies_as_pixels += 1
                else:
                    self.commands.append(("copy", e.src_x, e.src_y, e.rect))
                    if self.tile_diff:
                        self.verify.append(dst)
            elif isinstance(e, CursorDefined):
                self.cursor, self.cursor_dirty = e.cursor, True
            elif isinstance(e, CursorMoved):
                self.cursor_move = (e.x, e.y, e.visible)
            elif isinstance(e, ModeChanged):
                self.full = True
        if self.full:
            self.commands.clear()
            self.pending.clear()
            self.verify.clear()

    def take(self, model: SvgaII, link_bps: float = 125e6) -> _Batch | None:
        mode, surface = model.mode, model.surface
        if surface is None or not mode.enabled:
            # Nothing to show; what is pending will be part of the full frame once there is.
            self.full = True
            self.commands, self.pending, self.verify = [], [], []
            return None
        key = (mode.width, mode.height, mode.bpp)
        if key != self.sent_mode:
            self.full = True
        view = self._view(mode)
        cursor = self.cursor if self.cursor_dirty else None
        cursor_move = self.cursor_move
        if self.full:
            rects = [view] if not view.empty else []
            commands: list[tuple] = []
            # The service may be new (reconnect): it gets the cursor as the device has it now.
            cursor = model.cursor
            pos = model.cursor_position
            cursor_move = (pos.x, pos.y, pos.visible)
            self.video.end_all()
            cuts: list[VideoCut] = []
        else:
            # video hook: streams' damage leaves the lossless path, ended streams' regions come back to it
            pending, cuts = self.video.claim(self.pending, model.vram, surface, time.monotonic(), link_bps)
            rects, commands = pending + self.verify, self.commands
        pixels = [(r, raster.read_rect(model.vram, surface, r)) for r in rects if not r.empty]
        batch = _Batch(
            mode=mode,
            commands=commands,
            pixels=pixels,
            cursor=cursor,
            cursor_move=cursor_move,
            full=self.full,
            sent_ns=self.first_ns or time.monotonic_ns(),
            video=cuts,
            video_ends=self.video.take_ends(),
        )
        self.full = False
        self.commands, self.pending, self.verify = [], [], []
        self.cursor_dirty, self.cursor_move, self.first_ns = False, None, 0
        self.sent_mode = key
        return batch

    # ------------------------------------------------------------------ outside the device lock
    def frames(
        self, batch: _Batch, policy: EncodingPolicy, next_id: Iterator[int], stats: DisplayStats, max_frame: int
    ) -> list[tuple[display_pb2.FrontendMessage, int]]:
        """Encode a batch into one or more ready-to-send messages with their payload bytes (split to stay far
        below the gRPC message limit). Everything is written in place: wrapping a built submessage in another
        message would copy its pixels each time."""
        mode = batch.mode
        bypp = mode.bytes_per_pixel
        out: list[tuple[display_pb2.FrontendMessage, int]] = []

        def new_frame() -> display_pb2.Frame:
            msg = display_pb2.FrontendMessage()
            f = msg.frame
            f.frame_id = next(next_id)
            m = f.mode
            m.width, m.height, m.bpp, m.pitch, m.enabled = mode.width, mode.height, mode.bpp, mode.pitch, mode.enabled
            f.sent_ns = batch.sent_ns
            f.full = batch.full and not out
            out.append((msg, 0))
            return f

        frame = new_frame()
        for c in batch.commands:
            u = frame.updates.add()
            if c[0] == "fill":
                _, r, color = c
                _set_rect(u.fill.rect, r)
                u.fill.color = color
                stats.fills += 1
            else:
                _, sx, sy, r = c
                u.copy.src_x, u.copy.src_y = sx, sy
                _set_rect(u.copy.dst, r)
                stats.copies += 1
        payload = decoded = 0
        for sid in batch.video_ends:  # video hook: ended streams, then this frame's pictures
            frame.updates.add().video_end.stream_id = sid
        for v in self.video.encode(batch.video):
            if len(frame.updates) and payload + len(v.payload) > _FRAME_PAYLOAD_BUDGET:
                out[-1] = (out[-1][0], payload)
                frame = new_frame()
                payload = decoded = 0
            vf = frame.updates.add().video
            vf.version, vf.stream_id, vf.keyframe = VIDEO_VERSION, v.stream_id, v.keyframe
            vf.codec = VIDEO_CODEC_ENUM[v.codec]  # type: ignore[assignment]
            _set_rect(vf.rect, v.rect)
            vf.payload = v.payload
            payload += len(v.payload)
            decoded += v.rect.area * bypp
            stats.video_frames += 1
            stats.video_bytes += len(v.payload)
            if self.tile_diff:
                self._unknown_to_shadow(v.rect, v.pixels, mode.width, bypp)
        for rect, data in self._pixels_to_send(batch, bypp, stats, policy.link_bps):
            for band, chunk in _bands(rect, data, rect.w * bypp):
                t = time.perf_counter_ns()
                enc, encoded = policy.encode(chunk, band.w if bypp == 4 else 0)
                stats.encode_ns += time.perf_counter_ns() - t
                if len(frame.updates) and (
                    payload + len(encoded) > _FRAME_PAYLOAD_BUDGET or decoded + len(chunk) > max_frame
                ):
                    out[-1] = (out[-1][0], payload)
                    frame = new_frame()
                    payload = decoded = 0
                px = frame.updates.add().pixels
                _set_rect(px.rect, band)
                px.encoding = ENCODING_ENUM[enc]
                px.payload = encoded
                px.decoded_size = len(chunk)
                payload += len(encoded)
                decoded += len(chunk)
                stats.pixel_rects += 1
                stats.pixel_bytes += len(chunk)
                stats.payload_bytes += len(encoded)
                stats.encodings[enc] += 1
        out[-1] = (out[-1][0], payload)
        if batch.cursor is not None:
            frame.updates.add().cursor_define.CopyFrom(cursor_to_proto(batch.cursor))
            stats.cursor_updates += 1
        if batch.cursor_move is not None:
            cm = frame.updates.add().cursor_move
            cm.x, cm.y, cm.visible = batch.cursor_move
            stats.cursor_updates += 1
        return out

    def _unknown_to_shadow(self, rect: Rect, pixels: bytes, width: int, bypp: int) -> None:
        """The service shows lossy pixels here: make the shadow differ from every byte VRAM has now (its
        inverse), so the lossless refresh after the stream is sent whole rather than skipped as known."""
        surface = self.shadow_surface
        if surface.width == width and surface.bytes_per_pixel == bypp:
            raster.write_rect(self.shadow, surface, rect, pixels.translate(_INVERT))

    def _pixels_to_send(
        self, batch: _Batch, bypp: int, stats: DisplayStats, link_bps: float
    ) -> list[tuple[Rect, bytes]]:
        if not self.tile_diff:
            return batch.pixels
        mode = batch.mode
        surface = Surface(mode.width, mode.height, mode.width * bypp, bypp)
        if batch.full or surface != self.shadow_surface:
            if surface != self.shadow_surface:
                self.shadow = bytearray(mode.width * mode.height * bypp)  # the service starts black too
                self.shadow_surface = surface
        shadow = self.shadow
        for c in batch.commands:  # the service will do these first: so does the shadow
            if c[0] == "fill":
                raster.fill(shadow, surface, c[1], c[2])
            else:
                _, sx, sy, r = c
                raster.copy(shadow, surface, Rect(sx, sy, r.w, r.h), r.x, r.y)
        if self.force_all or not self.gate.active():  # everything goes; the shadow only follows
            self.force_all = False
            for rect, data in batch.pixels:
                raster.write_rect(shadow, surface, rect, data)
            return batch.pixels
        out: list[tuple[Rect, bytes]] = []
        started, sent = time.perf_counter(), 0
        for rect, data in batch.pixels:
            for run, run_data in _changed_tiles(shadow, surface, rect, data, stats):
                raster.write_rect(shadow, surface, run, run_data)
                out.append((run, run_data))
                sent += len(run_data)
        total = sum(len(data) for _, data in batch.pixels)
        rests = self.gate.switched_off
        self.gate.record(total, total - sent, time.perf_counter() - started, link_bps)
        stats.tile_diff_rests += self.gate.switched_off - rests
        return out


_INVERT = bytes(255 - i for i in range(256))


def _set_rect(msg: display_pb2.Rect, r: Rect) -> None:
    msg.x, msg.y, msg.width, msg.height = r.x, r.y, r.w, r.h


def _bands(rect: Rect, data: bytes, row: int) -> Iterator[tuple[Rect, bytes | memoryview]]:
    """Cut a packed rectangle into row bands of at most _BAND_BYTES (at least one row each)."""
    if len(data) <= _BAND_BYTES:
        yield rect, data
        return
    rows = max(1, _BAND_BYTES // row)
    view = memoryview(data)
    for y in range(0, rect.h, rows):
        h = min(rows, rect.h - y)
        yield Rect(rect.x, rect.y + y, rect.w, h), view[y * row : (y + h) * row]


def _changed_tiles(
    shadow: bytearray, surface: Surface, rect: Rect, data: bytes, stats: DisplayStats
) -> list[tuple[Rect, bytes]]:
    """Runs of horizontally adjacent tiles of `rect` whose pixels differ from the shadow, with their data.

    Per band of tile rows: whole rows are compared first and the band shrinks to its first..last differing
    row; then each tile is compared on those rows only until one differs (usually the first). Cost is about
    one comparison per row plus one per tile when everything changed. Comparisons slice the bytes and the
    bytearray themselves: that copies, but compares with memcmp, where memoryview comparison goes byte by byte.
    """
    bypp = surface.bytes_per_pixel
    row = rect.w * bypp
    pitch = surface.pitch
    base = rect.y * pitch + rect.x * bypp
    tile_bytes = _TILE * bypp
    ntx = -(-rect.w // _TILE)
    new, old = data, shadow
    view = memoryview(data)
    out: list[tuple[Rect, bytes]] = []
    for y0 in range(0, rect.h, _TILE):
        y1 = min(rect.h, y0 + _TILE)
        rows = [
            y for y in range(y0, y1) if new[y * row : (y + 1) * row] != old[base + y * pitch : base + y * pitch + row]
        ]
        if not rows:
            stats.tiles_skipped += ntx
            continue
        top, bottom = rows[0], rows[-1]
        changed = []
        for tx in range(ntx):
            a, b = tx * tile_bytes, min(row, (tx + 1) * tile_bytes)
            changed.append(
                any(new[y * row + a : y * row + b] != old[base + y * pitch + a : base + y * pitch + b] for y in rows)
            )
        tx = 0
        while tx < ntx:
            if not changed[tx]:
                stats.tiles_skipped += 1
                tx += 1
                continue
            start = tx
            while tx < ntx and changed[tx]:
                tx += 1
            stats.tiles_sent += tx - start
            x0 = start * _TILE
            w = min(rect.w, tx * _TILE) - x0
            run = Rect(rect.x + x0, rect.y + top, w, bottom - top + 1)
            if run.w == rect.w:
                run_data = bytes(view[top * row : (bottom + 1) * row])
            else:
                a, b = x0 * bypp, (x0 + w) * bypp
                run_data = b"".join([view[y * row + a : y * row + b] for y in range(top, bottom + 1)])
            out.append((run, run_data))
    return out


# ----------------------------------------------------------------------------------------------- connection
class _DisplayServiceStream(SessionStream):
    """One session stream to one display service, with its flow-control window."""

    def __init__(self, slot: _Slot, credentials: grpc.ChannelCredentials | None) -> None:
        super().__init__(slot.target, credentials, slot.link.stats, display_pb2.FrontendMessage, _MAX_MESSAGE)
        self.slot = slot
        self.viewport: Rect | None = None
        self.max_in_flight = 4
        self.max_frame_bytes = 64 * 1024 * 1024
        self.in_flight: dict[int, tuple[float, int]] = {}  # frame id -> (perf_counter at send, payload bytes)
        self.video_codecs: list[str] | None = None  # what the service decodes; None: no video there
        self.batch_ends: set[int] = set()  # ids of frames that end a batch
        self.frame_ids = itertools.count(1)
        stub = display_pb2_grpc.DisplayServiceStub(self.channel)
        self.start(stub.Session, slot.dispatch, slot.lost, f"display-rx-{slot.target}")  # type: ignore[arg-type]


class _Slot:
    """One display service: its connection (replaced on reconnect), frame builder and sender thread."""

    def __init__(self, link: DisplayLink, target: str, primary: bool) -> None:
        self.link = link
        self.target = target
        self.primary = primary
        self.builder = _Builder(link.tile_diff, link.video)
        self.policy = EncodingPolicy(link.encoding)
        self.conn: _DisplayServiceStream | None = None
        self.cond = threading.Condition()  # in-flight window and "the builder has work"
        self.kick = False
        self.offline_since: float | None = None
        self.last_error = ""
        self.sending = False  # a batch left the builder and is not yet all in flight

    @property
    def connected(self) -> bool:
        """A session is open (not merely being opened) on a live stream."""
        conn = self.conn
        return conn is not None and conn.alive and conn.opened.is_set()

    # ------------------------------------------------------------------ connecting
    def connect(self, timeout: float) -> bool:
        link = self.link
        with link.lock:  # no write may slip between the register snapshot and the open
            conn = _DisplayServiceStream(self, link.credentials)
            mode = MODES[link.mode] if self.primary else common_pb2.COHERENCE_MODE_MIRRORED
            opening = display_pb2.Open(
                vm=link.vm,
                mode=mode,
                registers=registers_to_proto(link.model.snapshot()),
                vram_size=len(link.model.vram),
                fifo_size=len(link.model.fifo),
            )
            conn.send(display_pb2.FrontendMessage(open=opening))
            self.conn = conn
        if conn.opened.wait(timeout) and conn.alive:
            with link.lock:
                self.builder.reset()
                self.builder.viewport = conn.viewport
                self.builder.video.configure(conn.video_codecs)
            self.offline_since = None
            log.info("session open", extra={"target": self.target, "session": conn.session_id, "mode": link.mode})
            self.wake()
            return True
        conn.close()
        if self.conn is conn:
            self.conn = None
        return False

    def dispatch(self, conn: _DisplayServiceStream, msg: display_pb2.BackendMessage) -> None:
        """Runs on the connection's reader thread."""
        link = self.link
        link.stats.bytes_from_service += msg.ByteSize() + _FRAME_OVERHEAD
        kind = msg.WhichOneof("kind")
        if kind == "frame_ack":
            self._acked(conn, msg.frame_ack)
        elif kind == "value" or kind == "barrier_ack":
            body = getattr(msg, kind)
            waiter = link.waiters.pop(body.seq, None)
            if waiter is not None:
                waiter.set(body.value if kind == "value" else body)
        elif kind == "opened":
            o = msg.opened
            conn.session_id = o.session_id
            v = o.viewport
            conn.viewport = None if v.width == 0 and v.height == 0 else Rect(v.x, v.y, v.width, v.height)
            conn.max_in_flight = max(1, o.max_frames_in_flight or 1)
            if o.max_frame_bytes:
                conn.max_frame_bytes = o.max_frame_bytes
            if o.HasField("video") and o.video.version == VIDEO_VERSION:
                conn.video_codecs = [VIDEO_CODEC_NAME[c] for c in o.video.codecs if c in VIDEO_CODEC_NAME]
            conn.opened.set()
        elif kind == "notice":
            log.info("service notice", extra={"target": self.target, "notice": msg.notice.message})
            if msg.notice.video_stream_id:  # a dropped video stream: its region is refreshed losslessly
                with link.lock:
                    self.builder.video.dropped(msg.notice.video_stream_id)
                self.wake()

    def _acked(self, conn: _DisplayServiceStream, ack: display_pb2.FrameAck) -> None:
        now = time.perf_counter()
        with self.cond:
            sent = conn.in_flight.pop(ack.frame_id, None)
            self.cond.notify_all()
        stats = self.link.stats
        stats.frames_acked += 1
        if ack.frame_id in conn.batch_ends:
            conn.batch_ends.discard(ack.frame_id)
            stats.pictures_presented += 1
        if sent is not None:
            sent_at, nbytes = sent
            service_s = max(0, ack.presented_ns - ack.received_ns) / 1e9
            self.policy.link(nbytes, now - sent_at - service_s)
        if ack.sent_ns and ack.presented_ns:
            stats.latency_ns.append(ack.presented_ns - ack.sent_ns)
        if ack.presented_ns > self.link.last_presented_ns:
            self.link.last_presented_ns = ack.presented_ns
        with self.link.flushed:
            self.link.flushed.notify_all()

    def lost(self, conn: _DisplayServiceStream, error: str) -> None:
        link = self.link
        if self.primary:
            for seq in list(link.waiters):
                waiter = link.waiters.pop(seq, None)
                if waiter is not None:
                    waiter.set()  # value stays None: the reader sees a failed access
        with self.cond:
            conn.in_flight.clear()
            self.cond.notify_all()
        with link.flushed:
            link.flushed.notify_all()
        if link.stopping.is_set() or conn is not self.conn:
            return
        self.last_error = error
        if self.offline_since is None:
            log.warning("display session lost", extra={"target": self.target, "error": error})
            self.offline_since = time.monotonic()
        link.wake_supervisor.set()

    # ------------------------------------------------------------------ sending frames
    def wake(self) -> None:
        with self.cond:
            self.kick = True
            self.cond.notify_all()

    def idle(self) -> bool:
        """Nothing waiting to be sent and nothing unacknowledged (caller holds the device lock). Damage while the
        guest shows nothing (display disabled, a mode that does not fit VRAM) waits for a mode: nothing to send."""
        conn = self.conn
        model = self.link.model
        showing = model.surface is not None and model.mode.enabled
        if self.sending or (self.builder.dirty and showing):
            return conn is None or not conn.alive
        return conn is None or not conn.alive or not conn.in_flight

    def _window(self, conn: _DisplayServiceStream) -> int:
        """Frames allowed in flight: the service's bound, tighter while video plays (a queue of pictures is
        latency; the damage coalesces instead and the next picture is the newest)."""
        return min(conn.max_in_flight, VIDEO_IN_FLIGHT) if self.builder.video.streams else conn.max_in_flight

    def run_sender(self) -> None:
        link = self.link
        while not link.stopping.is_set():
            with self.cond:
                while not link.stopping.is_set():
                    conn = self.conn
                    if self.kick and conn is not None and conn.alive and len(conn.in_flight) < self._window(conn):
                        break
                    self.cond.wait(0.05)
                self.kick = False
            if link.stopping.is_set():
                return
            with link.lock:
                if not self.builder.dirty:
                    continue
                batch = self.builder.take(link.model, self.policy.link_bps)
                self.sending = batch is not None
            if batch is None:
                continue
            try:
                frames = self.builder.frames(batch, self.policy, conn.frame_ids, link.stats, conn.max_frame_bytes)
            except Exception:  # a bug here must not stop the display: log it and redraw everything next time
                log.exception("building a frame failed", extra={"target": self.target})
                with link.lock:
                    self.builder.full, self.builder.force_all, self.sending = True, True, False
                continue
            for msg, payload in frames:
                with self.cond:
                    while conn.alive and len(conn.in_flight) >= self._window(conn) and not link.stopping.is_set():
                        self.cond.wait(0.05)
                    if not conn.alive:
                        break
                    conn.in_flight[msg.frame.frame_id] = (time.perf_counter(), payload)
                    if msg is frames[-1][0]:
                        conn.batch_ends.add(msg.frame.frame_id)
                conn.send(msg)
                link.stats.frames += 1
            with link.lock:
                self.sending = False
                if self.builder.dirty:
                    self.kick = True
            with link.flushed:
                link.flushed.notify_all()


# ----------------------------------------------------------------------------------------------- the device
class DisplayLink:
    """Implements `frontend_shim.guests.guest.Device` for an SVGA II whose screens are remote display services."""

    def __init__(
        self,
        targets: Sequence[str],
        mode: CoherenceMode,
        vram: Buffer,
        fifo: Buffer,
        *,
        vm: str = "vm",
        encoding: str = "auto",
        tile_diff: bool = False,
        access_timeout: float = 0.25,
        refresh_period: float = _REFRESH_PERIOD,
        credentials: grpc.ChannelCredentials | None = None,
        video: VideoSettings | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        if not targets:
            raise ValueError("at least one display service is needed")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        self.mode = mode
        self.vm = vm
        self.encoding = encoding
        self.tile_diff = tile_diff
        self.access_timeout = access_timeout
        self.refresh_period = refresh_period
        self.credentials = credentials
        self.video = video or VideoSettings(mode="off")  # lossy video streams (frontend_shim/links/video_streams.py)
        self.stats = DisplayStats()
        # The FIFO engine over guest memory; in mirrored mode also the register file that answers reads.
        self.model = SvgaII(vram=vram, fifo=fifo)
        self.lock = threading.RLock()  # the model, the builders, and the order changes enter the streams
        self.flushed = threading.Condition()
        self.stopping = threading.Event()
        self.wake_supervisor = threading.Event()
        self.waiters: dict[int, Waiter] = {}
        self.last_presented_ns = 0  # service CLOCK_MONOTONIC of the latest present acknowledged (same host)
        self._seq = itertools.count(1)
        self.slots = [_Slot(self, t, i == 0) for i, t in enumerate(targets)]
        self._holding: list[_DisplayServiceStream] = []  # the streams hold_writes() held
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, connect_timeout: float = 5.0) -> None:
        """Connect to every service (ConnectionError if one cannot be reached) and start the background work."""
        for slot in self.slots:
            if not slot.connect(connect_timeout):
                self.close(drain=False)
                raise ConnectionError(f"cannot open a display session at {slot.target}: {slot.last_error}")
        for slot in self.slots:
            self._spawn(slot.run_sender, f"display-tx-{slot.target}")
        self._spawn(self._supervise, "display-supervisor")
        if self.refresh_period > 0:
            self._spawn(self._refresh, "display-refresh")
        if self.video.mode != "off":
            self._spawn(self._video_timer, "display-video")

    def _spawn(self, target: object, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self, drain: bool = True, timeout: float = 10.0) -> None:
        if drain:
            for slot in self.slots:  # live video streams end: the services keep an exact last picture
                with self.lock:
                    slot.builder.video.expire(float("inf"))
            self.flush(timeout)
        self.stopping.set()
        self.wake_supervisor.set()
        for slot in self.slots:
            slot.wake()
            conn, slot.conn = slot.conn, None
            if conn is not None:
                conn.finish(timeout) if drain else conn.close()
        for t in self._threads:
            t.join(timeout)

    @property
    def connected(self) -> bool:
        return all(s.connected for s in self.slots)

    # ------------------------------------------------------------------ Device interface
    def io_read(self, bar: int, offset: int, size: int) -> int:
        if bar:
            raise AccessError(f"the SVGA II has port I/O on BAR0 only, not BAR{bar}")
        self.stats.reads += 1
        if self.mode == "mirrored":
            with self.lock:
                value = self.model.io_read(offset, size)
                res = self.model.take_pending()  # a BUSY read may have run the FIFO
                if res.ran or res.effects:
                    self._after_pass(res)
            return value
        mask = (1 << (8 * size)) - 1
        if size not in (1, 2, 4) or offset < 0 or offset + size > R.IO_BAR_SIZE:
            raise AccessError(f"{size}-byte access at offset {offset} is outside the {R.IO_BAR_SIZE}-byte BAR0")
        value = self._round_trip("value", common_pb2.RegisterAccess(offset=offset, size=size), self.access_timeout)
        if value is None:
            self.stats.read_timeouts += 1
            return mask  # nothing answered: read as a card that is gone
        return int(value) & mask

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar:
            raise AccessError(f"the SVGA II has port I/O on BAR0 only, not BAR{bar}")
        self.stats.writes += 1
        with self.lock:
            res = self.model.io_write(offset, size, value)  # a SYNC write runs the FIFO pass here
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.post_write(offset, size, value)
            passes = 1
            while res.ran and res.bounded and passes < _MAX_PASSES:
                res.merge(self.model.process_fifo(self.model.sync_max_commands))
                passes += 1
            if res.ran or res.effects or res.errors:
                self._after_pass(res)

    def hold_writes(self) -> None:
        """`frontend_shim.guest.HoldsWrites`: posted writes wait until release_writes() (SessionStream.hold)."""
        self._holding = [slot.conn for slot in self.slots if slot.conn is not None]
        for conn in self._holding:
            conn.hold()

    def release_writes(self) -> None:
        held, self._holding = self._holding, []
        for conn in held:
            conn.release()

    # ------------------------------------------------------------------ FIFO results
    def process_fifo(self) -> FifoResult:
        """One FIFO pass now (what the refresh timer does; QEMU runs one on every display refresh)."""
        with self.lock:
            res = self.model.process_fifo()
            # A pass that found nothing changed nothing the services know (BUSY, interrupt flags): telling them
            # would be a message per refresh period per service while the guest idles.
            if res.commands or res.effects or res.errors:
                self._after_pass(res)
            return res

    def _after_pass(self, res: FifoResult) -> None:
        """Caller holds the lock: tell the services what BUSY says now, hand the effects to the builders."""
        s = self.stats
        if res.ran:
            s.fifo_passes += 1
            s.fifo_commands += res.commands
            flags = R.IRQFLAG_FIFO_PROGRESS if res.commands else 0
            if res.errors:
                flags |= R.IRQFLAG_ERROR
            if any(isinstance(e, Fence) for e in res.effects):
                flags |= R.IRQFLAG_ANY_FENCE
            done = display_pb2.FrontendMessage(
                fifo_done=display_pb2.FifoDone(busy=self.model.busy, irq_flags=flags, commands=res.commands)
            )
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.send(done)
        elif res.errors:
            # A pass refused outright (FIFO registers out of bounds) cleared BUSY and raised the error flag here;
            # the services set BUSY on the SYNC and must hear it cleared. Sending our whole IRQSTATUS is exact: the
            # services only ever hold bits we raised and the guest has not cleared since.
            done = display_pb2.FrontendMessage(
                fifo_done=display_pb2.FifoDone(busy=self.model.busy, irq_flags=int(self.model.snapshot()["irq_status"]))
            )
            for slot in self.slots:
                conn = slot.conn
                if conn is not None:
                    conn.send(done)
        if res.errors:
            s.fifo_errors += len(res.errors)
            log.info("device refused guest input", extra={"errors": "; ".join(res.errors[:4])})
        if res.effects:
            mode = self.model.mode
            for slot in self.slots:
                slot.builder.add(res.effects, mode, s)
                slot.wake()

    # ------------------------------------------------------------------ measurements and checks
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every service has been sent and has acknowledged (presented) all damage so far."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.wake()
        with self.flushed:
            while True:
                with self.lock:
                    done = all(s.idle() for s in self.slots)
                if done:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.flushed.wait(min(left, 0.02))

    def barrier(self, timeout: float = 5.0) -> display_pb2.BarrierAck | None:
        """Everything sent so far to the first service has been applied there; returns its state then."""
        return self._round_trip("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()), timeout)

    def compare_mirror(
        self, timeout: float = 5.0
    ) -> tuple[display_pb2.SvgaRegisters, display_pb2.SvgaRegisters | None]:
        """(our register file, the first service's) at the same point of its stream; equal in mirrored mode. The
        cursor image reaches the service in frames: compare after `flush` when it matters."""
        with self.lock:  # nothing enters the stream between our snapshot and the barrier
            ours = registers_to_proto(self.model.snapshot())
            seq, waiter = self._post("barrier", common_pb2.Barrier(sent_ns=time.monotonic_ns()))
        ack = self._wait(seq, waiter, timeout)
        return ours, ack.registers if ack is not None else None  # type: ignore[attr-defined]

    def latencies(self) -> list[int]:
        """Frame latencies in ns: oldest damage in the frame (shim) to presented (service), same host only."""
        return list(self.stats.latency_ns)

    # ------------------------------------------------------------------ internals
    def _round_trip(self, kind: str, payload: object, timeout: float) -> object:
        seq, waiter = self._post(kind, payload)
        return self._wait(seq, waiter, timeout)

    def _post(self, kind: str, payload: object) -> tuple[int, Waiter | None]:
        """Send a message that expects an answer; the waiter is None when there is no session."""
        conn = self.slots[0].conn
        if conn is None or not conn.alive:
            return 0, None
        seq = next(self._seq)
        payload.seq = seq  # type: ignore[attr-defined]
        waiter = Waiter()
        self.waiters[seq] = waiter
        conn.send(display_pb2.FrontendMessage(**{"access" if kind == "value" else kind: payload}))
        return seq, waiter

    def _wait(self, seq: int, waiter: Waiter | None, timeout: float) -> object:
        if waiter is None:
            return None
        if not waiter.wait(timeout):
            self.waiters.pop(seq, None)
            return None
        return waiter.value

    def _supervise(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            self.wake_supervisor.wait(1.0)
            self.wake_supervisor.clear()
            for slot in self.slots:
                if self.stopping.is_set() or slot.connected:
                    continue
                if slot.connect(timeout=2.0):
                    self.stats.reconnects += 1
                    backoff = 0.1
                else:
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    self.wake_supervisor.set()

    def _refresh(self) -> None:
        while not self.stopping.wait(self.refresh_period):
            self.process_fifo()

    def _video_timer(self) -> None:
        """Video streams that stopped changing end, and their regions get the lossless refresh."""
        while not self.stopping.wait(0.05):
            now = time.monotonic()
            for slot in self.slots:
                with self.lock:
                    ended = slot.builder.video.expire(now)
                if ended:
                    slot.wake()

    def video_state(self) -> list[dict[str, object]]:
        """Per service: codec, live streams, frames and bytes encoded."""
        with self.lock:
            return [slot.builder.video.as_dict() for slot in self.slots]
