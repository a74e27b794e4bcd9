"""A display session's video streams: one decoder per stream, hostile payloads refused per stream.

A video frame is checked (version, codec, rectangle inside the desktop, payload size) and decoded into the
stream rectangle's BGRX pixels, which the desktop copy takes like any pixel rectangle: the SDL presenter and
`Screenshot` therefore show exactly what was decoded (lossy while the stream lives, exact after the shim's
lossless refresh). A bad video frame does not end the session: the stream is dropped, one `Notice` naming it
goes back (the shim refreshes the region losslessly and may start a new stream), later frames of that stream
are counted as dropped, and the other streams and the lossless updates of the same frame go on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from rdv.display.v1 import display_pb2
from services.common import logs, video_codec
from services.common.raster import Rect
from services.devices.svga_convert import VIDEO_CODEC_ENUM as CODEC_ENUM
from services.devices.svga_convert import VIDEO_CODEC_NAME as CODEC_NAME

log = logs.get("display.video")
MAX_STREAMS = 4
_RATE_WINDOW = 2.0  # seconds over which fps and bitrate are reported


def support() -> display_pb2.VideoSupport:
    """What this service decodes (sent in `opened`)."""
    return display_pb2.VideoSupport(
        version=video_codec.VIDEO_VERSION,
        codecs=[CODEC_ENUM[c] for c in video_codec.available()],
        max_streams=MAX_STREAMS,
    )


def _max_payload(rect: Rect) -> int:
    """More than any sane encoder writes for one picture (raw BGRX plus headers)."""
    return rect.w * rect.h * 4 + 65536


@dataclass
class _Stream:
    stream_id: int
    rect: Rect
    codec: str
    decoder: video_codec.Decoder
    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=512))  # (time, payload bytes)


class VideoStreams:
    def __init__(self) -> None:
        self.streams: dict[int, _Stream] = {}
        self.refused: set[int] = set()  # dropped stream ids: later frames are counted, not noticed again
        self.notices: list[display_pb2.Notice] = []
        self.frames = self.bytes = self.dropped = 0

    def decode(self, v: display_pb2.VideoFrame, bounds: Rect, where: str) -> tuple[Rect, memoryview] | None:
        """The rectangle and BGRX pixels of one video frame, or None when it was dropped (notice queued)."""
        sid = v.stream_id
        payload = v.payload  # each attribute read copies the bytes: read it once
        self.bytes += len(payload)
        if sid in self.refused:
            self.dropped += 1
            return None
        try:
            rect, pixels = self._decode(v, payload, bounds)
        except video_codec.VideoError as exc:
            self._refuse(sid, f"{where}: video stream {sid}: {exc}")
            return None
        s = self.streams[sid]
        s.frames += 1
        s.bytes += len(payload)
        s.recent.append((time.monotonic(), len(payload)))
        self.frames += 1
        return rect, pixels

    def _decode(self, v: display_pb2.VideoFrame, payload: bytes, bounds: Rect) -> tuple[Rect, memoryview]:
        if v.version != video_codec.VIDEO_VERSION:
            raise video_codec.VideoError(
                f"version {v.version} not supported (this service decodes version {video_codec.VIDEO_VERSION})"
            )
        codec = CODEC_NAME.get(v.codec)
        if codec is None or codec not in video_codec.available():
            raise video_codec.VideoError(f"codec {v.codec} not supported here (have {video_codec.available()})")
        r = v.rect
        rect = Rect(r.x, r.y, r.width, r.height)
        if rect.w <= 0 or rect.h <= 0 or not bounds.contains(rect):
            raise video_codec.VideoError(
                f"rectangle {rect.w}x{rect.h}+{rect.x}+{rect.y} outside the {bounds.w}x{bounds.h} desktop"
            )
        if len(payload) > _max_payload(rect):
            raise video_codec.VideoError(f"{len(payload)}-byte payload for a {rect.w}x{rect.h} picture")
        s = self.streams.get(v.stream_id)
        if s is None or s.rect != rect or s.codec != codec:
            if not v.keyframe:
                raise video_codec.VideoError(
                    "unknown stream (a stream starts with a keyframe)" if s is None else "changed without a keyframe"
                )
            if s is None and len(self.streams) >= MAX_STREAMS:
                raise video_codec.VideoError(f"more than {MAX_STREAMS} streams at once")
            s = _Stream(v.stream_id, rect, codec, video_codec.make_decoder(codec, rect.w, rect.h))
            self.streams[v.stream_id] = s
        pixels = s.decoder.decode(payload)
        if len(pixels) != rect.w * rect.h * 4:
            raise video_codec.VideoError(f"decoded {len(pixels)} bytes for a {rect.w}x{rect.h} picture")
        return rect, pixels

    def _refuse(self, sid: int, message: str) -> None:
        self.dropped += 1
        gone = self.streams.pop(sid, None)
        if gone is not None:
            gone.dropped += 1
        self.refused.add(sid)
        log.info("video frame refused", extra={"error": message})
        self.notices.append(display_pb2.Notice(message=message, video_stream_id=sid))

    def end(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self.refused.discard(sid)

    def reset(self) -> None:
        """A mode change: every stream's picture is gone with the old desktop."""
        self.streams.clear()

    def take_notices(self) -> list[display_pb2.Notice]:
        out, self.notices = self.notices, []
        return out

    def state(self) -> list[display_pb2.VideoStreamState]:
        now = time.monotonic()
        out = []
        for s in list(self.streams.values()):
            recent = [(t, n) for t, n in s.recent if now - t <= _RATE_WINDOW]
            span = (now - recent[0][0]) if len(recent) > 1 else 0.0
            fps = (len(recent) - 1) / span if span > 0 else 0.0
            mbps = sum(n for _, n in recent[1:]) * 8 / span / 1e6 if span > 0 else 0.0
            r = s.rect
            out.append(
                display_pb2.VideoStreamState(
                    stream_id=s.stream_id,
                    rect=display_pb2.Rect(x=r.x, y=r.y, width=r.w, height=r.h),
                    codec=CODEC_ENUM[s.codec],
                    frames=s.frames,
                    bytes=s.bytes,
                    fps=fps,
                    bitrate_mbps=mbps,
                    dropped=s.dropped,
                )
            )
        return out
