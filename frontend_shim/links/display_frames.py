"""Display frames: what one service is sent, built from the FIFO's effects (the display link's frame policy).

Each service has a `FrameBuilder` that collects the effects of FIFO passes per frame: fills and copies travel as
commands (not pixels), UPDATE damage is coalesced (merged rectangles), and when a frame is taken the damaged
rectangles are cut out of VRAM under the device lock, so pixels and commands describe the same instant. A copy
whose source is not known-good at the service (inside damage not delivered yet, or outside that service's
viewport) travels as pixels instead. Pixels are encoded as the `EncodingPolicy` says; with tile diff the
builder keeps a shadow of what the service has and sends only the tiles that differ (commands replayed on the
shadow first, and every command's target is verified the same way).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from frontend_shim.links.base import LinkStats
from frontend_shim.links.encoding_policy import EncodingPolicy, TileDiffGate
from frontend_shim.links.video_streams import VideoCut, VideoSettings, VideoStreams
from rdv.display.v1 import display_pb2
from services.common import raster
from services.common.raster import Rect, Surface
from services.common.video_codec import VIDEO_VERSION
from services.devices.svga import Copy, Cursor, CursorDefined, CursorMoved, Fill, Mode, ModeChanged, SvgaII, Update
from services.devices.svga_convert import ENCODING_ENUM, VIDEO_CODEC_ENUM, cursor_to_proto

FRAME_PAYLOAD_BUDGET = 4 * 1024 * 1024  # split frames above this many payload bytes (service limit is 8 MiB)
BAND_BYTES = 512 * 1024  # pixel rectangles larger than this are cut into row bands (pipelining, per-band auto)
MAX_RECTS = 32  # damage rectangles kept per frame before the closest ones are merged
TILE = 64  # tile side for tile diff


@dataclass
class DisplayStats(LinkStats):
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
    encodings: Counter[str] = field(default_factory=Counter)
    latency_ns: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))  # oldest damage -> presented

    def as_dict(self) -> dict[str, object]:
        d = super().as_dict()
        d["encodings"] = dict(self.encodings)
        d["compression_ratio"] = round(self.pixel_bytes / self.payload_bytes, 3) if self.payload_bytes else 0.0
        return d


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
    while len(rects) > MAX_RECTS:  # merge the pair whose union wastes least
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
class Batch:
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


class FrameBuilder:
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

    def take(self, model: SvgaII, link_bps: float = 125e6) -> Batch | None:
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
        batch = Batch(
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
        self, batch: Batch, policy: EncodingPolicy, next_id: Iterator[int], stats: DisplayStats, max_frame: int
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
            if len(frame.updates) and payload + len(v.payload) > FRAME_PAYLOAD_BUDGET:
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
            for i, (band, chunk) in enumerate(_bands(rect, data, rect.w * bypp)):
                t = time.perf_counter_ns()
                enc, encoded = policy.encode(chunk, band.w if bypp == 4 else 0, band=i > 0)
                stats.encode_ns += time.perf_counter_ns() - t
                if len(frame.updates) and (
                    payload + len(encoded) > FRAME_PAYLOAD_BUDGET or decoded + len(chunk) > max_frame
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
        self, batch: Batch, bypp: int, stats: DisplayStats, link_bps: float
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
    """Cut a packed rectangle into row bands of at most BAND_BYTES (at least one row each)."""
    if len(data) <= BAND_BYTES:
        yield rect, data
        return
    rows = max(1, BAND_BYTES // row)
    view = memoryview(data)
    for y in range(0, rect.h, rows):
        h = min(rows, rect.h - y)
        yield Rect(rect.x, rect.y + y, rect.w, h), view[y * row : (y + h) * row]


def _changed_tiles(
    shadow: bytearray, surface: Surface, rect: Rect, data: bytes, stats: DisplayStats
) -> list[tuple[Rect, bytes]]:
    """Runs of adjacent tiles of `rect` whose pixels (`data`, packed) differ from the shadow, with their data."""
    bypp = surface.bytes_per_pixel
    packed = Surface(rect.w, rect.h, rect.w * bypp, bypp)
    in_shadow = Surface(rect.w, rect.h, surface.pitch, bypp, rect.y * surface.pitch + rect.x * bypp)
    runs = raster.changed_tiles(data, packed, shadow, in_shadow, TILE)
    sent = sum(-(-run.w // TILE) for run in runs)
    stats.tiles_sent += sent
    stats.tiles_skipped += -(-rect.h // TILE) * -(-rect.w // TILE) - sent
    return [(run.translate(rect.x, rect.y), raster.read_rect(data, packed, run)) for run in runs]  # type: ignore[arg-type]
