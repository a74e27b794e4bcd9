"""Video streams at the shim: which damaged regions are video, and their lossy encoding (one per service).

Detection (as SPICE does it): every UPDATE rectangle of at least MIN_AREA pixels is a *candidate*, followed
from frame to frame (the same rectangle, or the same size moved). A candidate updated PROMOTE_UPDATES times at
MIN_FPS or faster whose pixels look like a photo (they do not compress: the lossless path's own measure, an lz4
sample) becomes a *stream*. Text, UI and cursors never do: they are small, rare, or compress well (a scrolling
text window updates at video rates but its pixels compress). A stream's damage no longer travels lossless: at
each frame the builder asks for the stream's whole rectangle cut from VRAM and it is encoded (h264 or jpeg,
services/common/video_codec.py). The part of an update outside every stream stays lossless.

Streams start, move and resize with the content (a candidate overlapping a stream promotes after 2 updates and
replaces it) and end when their region has stopped changing: for STILL_FRAMES of the stream's own frame
intervals, at least MIN_STILL_SECONDS and at most `still_seconds` (default 0.5 s): 0.27 s for a 30 frames/s film,
0.5 s for a 10 frames/s animation, so a jittery slow stream is not cut at every late frame. The region is then
sent once more, lossless, so a paused picture and the desktop around it end up pixel-exact within a second (#17:
the lossless refresh of a grainy 1080p picture, 3-5.6 MB, is 0.25-0.45 s of wire time at 100 Mbit).
A service that drops a stream (its notice names it) gets the same lossless refresh.

Rate control: each stream's encoder is capped at min(--video-max-mbps, LINK_SHARE of the measured link speed)
divided among the streams; the frames-in-flight window still holds (and narrows to VIDEO_IN_FLIGHT while a
stream plays: queued pictures are latency), so a slow link sends fewer frames (the skipped ones coalesce: the
next frame is cut from VRAM as it is then).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.common import codec, logs, raster, video_codec
from services.common.raster import Buffer, Rect, Surface

log = logs.get("shim.video")
VIDEO_MODES = ("auto", "off", "h264", "jpeg")
MIN_AREA = 128 * 96  # smaller updates are never video (cursors, text, icons)
PROMOTE_UPDATES = 4  # updates in a row at video rate before a candidate is looked at
MIN_FPS = 10.0
STILL_SECONDS = 0.5  # a stream unchanged this long ends with a lossless refresh (within 1 s, said #17), at most
STILL_FRAMES = 8  # ... or for this many of its frame intervals, if that is shorter
MIN_STILL_SECONDS = 0.25  # ... but never sooner
_FRAME_GAP = 0.004  # updates closer than this belong to one guest frame (several rectangles of one picture)
PHOTO_RATIO = 0.5  # lz4 size / size of a pixel sample above this: photo-like
MAX_STREAMS = 4
MAX_CANDIDATES = 16
LINK_SHARE = 0.7  # of the measured link speed, for all streams together
VIDEO_IN_FLIGHT = 2  # frames in flight while a stream plays (the service may allow more)
_RECHECK = 0.5  # seconds before a candidate that did not look like a photo is sampled again


@dataclass(frozen=True)
class VideoSettings:
    mode: str = "auto"  # auto: h264 if both sides have it, else jpeg; off: everything lossless
    max_mbps: float = 20.0
    quality: int = 75  # 1..100
    still_seconds: float = STILL_SECONDS

    def __post_init__(self) -> None:
        if self.mode not in VIDEO_MODES:
            raise ValueError(f"--video must be one of {', '.join(VIDEO_MODES)}, not {self.mode!r}")
        if not self.max_mbps > 0:
            raise ValueError(f"--video-max-mbps must be positive, not {self.max_mbps}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--video-quality must be 1..100, not {self.quality}")
        if not 0 < self.still_seconds <= 1:
            raise ValueError(f"video still time must be in (0, 1] s, not {self.still_seconds}")


def subtract(r: Rect, s: Rect) -> list[Rect]:
    """`r` without `s`: up to four rectangles (bands above and below, pieces left and right)."""
    i = r.intersection(s)
    if i.empty:
        return [r]
    out = [
        Rect(r.x, r.y, r.w, i.y - r.y),
        Rect(r.x, i.bottom, r.w, r.bottom - i.bottom),
        Rect(r.x, i.y, i.x - r.x, i.h),
        Rect(i.right, i.y, r.right - i.right, i.h),
    ]
    return [p for p in out if not p.empty]


def photo_like(pixels: bytes, row: int) -> bool:
    """The lossless path's content measure on a sample of rows: photos and film do not compress."""
    rows = len(pixels) // row
    step = max(1, rows // 8)
    sample = b"".join(pixels[y * row : (y + 1) * row] for y in range(0, rows, step))[:65536]
    return len(codec.encode("lz4", sample)) > PHOTO_RATIO * len(sample)


@dataclass
class _Candidate:
    rect: Rect
    times: deque[float] = field(default_factory=lambda: deque(maxlen=PROMOTE_UPDATES))
    checked: float = float("-inf")  # when it last failed the photo test
    quick: bool = False  # overlaps a stream: a move or resize, promoted after 2 updates

    def ready(self) -> bool:
        n = len(self.times)
        need = 2 if self.quick else PROMOTE_UPDATES
        return n >= need and (self.times[-1] - self.times[-need]) <= (need - 1) / MIN_FPS


@dataclass
class VideoStream:
    stream_id: int
    rect: Rect
    encoder: video_codec.Encoder
    last_update: float
    times: deque[float] = field(default_factory=lambda: deque(maxlen=STILL_FRAMES + 1))  # its recent frames
    dirty: bool = True
    keyframe: bool = True
    updates: int = 0
    frames: int = 0
    bytes: int = 0

    def updated(self, now: float) -> None:
        self.dirty, self.last_update = True, now
        self.updates += 1
        if not self.times or now - self.times[-1] >= _FRAME_GAP:
            self.times.append(now)

    def still_for(self, longest: float) -> float:
        """How long the region must stay unchanged for the stream to end: STILL_FRAMES of its mean frame interval
        of late, within [MIN_STILL_SECONDS, longest]."""
        n = len(self.times)
        if n < 2:
            return longest
        interval = (self.times[-1] - self.times[0]) / (n - 1)
        return min(longest, max(MIN_STILL_SECONDS, STILL_FRAMES * interval))

    def ends_at(self, longest: float) -> float:
        """When the stream ends if its region changes no more."""
        return self.last_update + self.still_for(longest)


@dataclass
class VideoCut:
    """One stream's picture cut from VRAM under the device lock, encoded outside it."""

    stream: VideoStream
    pixels: bytes
    keyframe: bool


@dataclass
class VideoFrameOut:
    stream_id: int
    rect: Rect
    codec: str
    keyframe: bool
    payload: bytes
    pixels: bytes  # what was encoded (tile diff needs to know what the service does not have exactly)


class VideoStreams:
    """The streams of one service connection. `observe`, `claim`, `dropped` run under the link's device lock;
    `encode` runs on the sender thread."""

    def __init__(self, settings: VideoSettings) -> None:
        self.settings = settings
        self.codec: str | None = None
        self.streams: list[VideoStream] = []
        self.candidates: list[_Candidate] = []
        self.ends: list[int] = []  # stream ids to announce as ended
        self.refresh: list[Rect] = []  # regions owed a lossless refresh
        self._ids = 0
        self.started = self.ended = self.encoded_frames = self.encoded_bytes = 0
        self.encode_seconds = 0.0
        self.on_start: Callable[[], None] | None = None  # a stream started (the link's video timer wakes)

    def configure(self, offered: Sequence[str] | None) -> None:
        """A new session at a service that decodes `offered` (None: no video there)."""
        self.reset()
        wanted = self.settings.mode
        self.codec = None if wanted == "off" or not offered else video_codec.choose(wanted, offered)
        if wanted in ("h264", "jpeg") and self.codec != wanted:
            log.info("video codec unavailable, falling back", extra={"wanted": wanted, "using": self.codec or "off"})

    def reset(self) -> None:
        """A new session at the service: it knows no stream."""
        self.streams, self.candidates, self.ends, self.refresh = [], [], [], []

    def end_all(self) -> None:
        """A full redraw in the same session: every stream ends (the service hears it), the redraw is lossless."""
        self.ends += [s.stream_id for s in self.streams]
        self.streams, self.candidates, self.refresh = [], [], []

    @property
    def active(self) -> bool:
        return self.codec is not None

    @property
    def dirty(self) -> bool:
        return bool(self.ends or self.refresh or any(s.dirty for s in self.streams))

    # ------------------------------------------------------------------ under the device lock
    def observe(self, rect: Rect, now: float) -> list[Rect]:
        """An UPDATE rectangle: returns the parts that stay lossless (none when a stream covers it)."""
        if self.codec is None or rect.area < MIN_AREA and not self.streams:
            return [rect]
        if rect.area >= MIN_AREA:
            self._candidate(rect, now)
        pieces = [rect]
        for s in self.streams:
            rest = []
            for p in pieces:
                if not p.intersection(s.rect).empty:
                    s.updated(now)
                    rest += subtract(p, s.rect)
                else:
                    rest.append(p)
            pieces = rest
        return pieces

    def _candidate(self, rect: Rect, now: float) -> None:
        for c in self.candidates:
            if c.rect == rect or ((c.rect.w, c.rect.h) == (rect.w, rect.h) and not c.rect.intersection(rect).empty):
                c.rect = rect
                c.times.append(now)
                return
        c = _Candidate(rect)
        c.times.append(now)
        c.quick = any(not s.rect.intersection(rect).empty and _even(rect) != s.rect for s in self.streams)
        self.candidates.append(c)
        if len(self.candidates) > MAX_CANDIDATES:
            self.candidates.sort(key=lambda k: k.times[-1])
            del self.candidates[0]

    def shadows(self, rect: Rect) -> bool:
        """Whether the service's pixels in `rect` may be lossy (a copy from there would copy the loss)."""
        return any(not s.rect.intersection(rect).empty for s in self.streams)

    def claim(
        self, pending: list[Rect], vram: Buffer, surface: Surface, now: float, link_bps: float
    ) -> tuple[list[Rect], list[VideoCut]]:
        """Take a frame's video: start, end and cut streams. Returns the lossless damage left and the cuts."""
        if self.codec is None:
            return pending, []
        if surface.bytes_per_pixel != 4:  # video only in 32 bpp modes
            for s in self.streams:
                self._end(s)
            pending = pending + self.refresh
            self.refresh = []
            return pending, []
        desktop = Rect(0, 0, surface.width, surface.height)
        self._promote(vram, surface, desktop, now)
        for s in list(self.streams):
            if now >= s.ends_at(self.settings.still_seconds):
                self._end(s)
        pending = [p for p in pending if not any(s.rect.contains(p) for s in self.streams)] + self.refresh
        self.refresh = []
        cuts = []
        kbps = self._kbps(link_bps)
        for s in self.streams:
            if s.dirty:
                s.encoder.retarget(kbps)
                cuts.append(VideoCut(s, raster.read_rect(vram, surface, s.rect), s.keyframe))
                s.dirty = s.keyframe = False
        now_cands = [c for c in self.candidates if now - c.times[-1] < 1.0]
        self.candidates = now_cands
        return pending, cuts

    def _kbps(self, link_bps: float) -> int:
        share = LINK_SHARE * link_bps * 8 / 1000 / max(1, len(self.streams))
        return int(min(self.settings.max_mbps * 1000 / max(1, len(self.streams)), share))

    def _promote(self, vram: Buffer, surface: Surface, desktop: Rect, now: float) -> None:
        for c in list(self.candidates):
            if not c.ready() or now - c.times[-1] >= self.settings.still_seconds:
                continue  # not at video rate, or no longer changing
            if now - c.checked < _RECHECK and not c.quick:
                continue
            rect = _even(c.rect.intersection(desktop))
            if rect.w < 16 or rect.h < 16 or any(s.rect == rect for s in self.streams):
                continue
            if not photo_like(raster.read_rect(vram, surface, rect), rect.w * 4):
                c.checked, c.quick = now, False
                continue
            for s in list(self.streams):  # the content moved or was resized: the old stream ends
                if not s.rect.intersection(rect).empty:
                    self._end(s)
            if len(self.streams) >= MAX_STREAMS:
                continue
            self._ids += 1
            encoder = video_codec.make_encoder(self.codec, rect.w, rect.h, self.settings.quality, 1000)  # type: ignore[arg-type]
            times = deque(c.times, maxlen=STILL_FRAMES + 1)
            self.streams.append(VideoStream(self._ids, rect, encoder, c.times[-1], times))
            self.started += 1
            self.candidates.remove(c)
            if self.on_start is not None:
                self.on_start()
            log.info("video stream started", extra={"stream": self._ids, "rect": _fmt(rect), "codec": self.codec})

    def _end(self, s: VideoStream) -> None:
        self.streams.remove(s)
        self.ends.append(s.stream_id)
        self.refresh.append(s.rect)
        self.ended += 1
        log.info("video stream ended", extra={"stream": s.stream_id, "frames": s.frames, "bytes": s.bytes})

    def dropped(self, stream_id: int) -> None:
        """The service refused a stream (its notice named it): refresh its region losslessly."""
        for s in self.streams:
            if s.stream_id == stream_id:
                self._end(s)
                return

    def take_ends(self) -> list[int]:
        out, self.ends = self.ends, []
        return out

    def expire(self, now: float) -> bool:
        """End the streams that have been still long enough (the link's video timer calls this; the link closing
        passes now = inf to end them all); True if any."""
        still = [s for s in self.streams if now >= s.ends_at(self.settings.still_seconds)]
        for s in still:
            self._end(s)
            # its candidates go too: a stream ended early (now = inf: the link closes) must not start again
            self.candidates = [c for c in self.candidates if c.rect.intersection(s.rect).empty]
        return bool(still)

    def next_still(self, now: float) -> float:
        """Seconds until the first stream would end if nothing changes (inf: no stream)."""
        return min((s.ends_at(self.settings.still_seconds) - now for s in self.streams), default=float("inf"))

    # ------------------------------------------------------------------ sender thread
    def encode(self, cuts: list[VideoCut]) -> list[VideoFrameOut]:
        out = []
        for cut in cuts:
            s = cut.stream
            t = time.perf_counter()
            try:
                payload, key = s.encoder.encode(cut.pixels, cut.keyframe)
            except video_codec.VideoError as exc:
                log.warning("video encoding failed", extra={"stream": s.stream_id, "error": str(exc)})
                continue
            self.encode_seconds += time.perf_counter() - t
            s.frames += 1
            s.bytes += len(payload)
            self.encoded_frames += 1
            self.encoded_bytes += len(payload)
            out.append(VideoFrameOut(s.stream_id, s.rect, s.encoder.codec, key, payload, cut.pixels))
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "codec": self.codec or "off",
            "streams": [{"id": s.stream_id, "rect": _fmt(s.rect), "frames": s.frames} for s in self.streams],
            "started": self.started,
            "ended": self.ended,
            "frames": self.encoded_frames,
            "bytes": self.encoded_bytes,
            "encode_seconds": round(self.encode_seconds, 3),
        }


def _even(r: Rect) -> Rect:
    """H.264 pictures have even sides: the odd last column / row stays lossless."""
    return Rect(r.x, r.y, r.w & ~1, r.h & ~1)


def _fmt(r: Rect) -> str:
    return f"{r.w}x{r.h}+{r.x}+{r.y}"
