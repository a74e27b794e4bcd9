"""SvgaII register snapshots <-> SvgaRegisters messages, and the encoding names <-> enum (shim and service)."""

from __future__ import annotations

import base64

from rdv.display.v1 import display_pb2
from services.devices.svga import Cursor

ENCODING_ENUM: dict[str, int] = {
    "raw": display_pb2.ENCODING_RAW,
    "lzo": display_pb2.ENCODING_LZO,
    "lz4": display_pb2.ENCODING_LZ4,
    "zstd": display_pb2.ENCODING_ZSTD,
}
ENCODING_NAME: dict[int, str] = {v: k for k, v in ENCODING_ENUM.items()}
VIDEO_CODEC_ENUM: dict[str, int] = {"h264": display_pb2.VIDEO_CODEC_H264, "jpeg": display_pb2.VIDEO_CODEC_JPEG}
VIDEO_CODEC_NAME: dict[int, str] = {v: k for k, v in VIDEO_CODEC_ENUM.items()}

_SCALARS = (
    "index", "svga_id", "enable", "width", "height", "bpp", "pitchlock", "config_done", "guest_id",
    "cursor_id", "cursor_x", "cursor_y", "cursor_on", "irq_mask", "irq_status",
)  # fmt: skip


def registers_to_proto(snap: dict[str, object]) -> display_pb2.SvgaRegisters:
    msg = display_pb2.SvgaRegisters(
        **{name: int(snap[name]) for name in _SCALARS},  # type: ignore[call-overload]
        cursor_visible=bool(snap["cursor_visible"]),
        busy=bool(snap["busy"]),
        fb_start=int(snap["fb_start"]),  # type: ignore[call-overload]
        mem_start=int(snap["mem_start"]),  # type: ignore[call-overload]
        scratch=list(snap["scratch"]),  # type: ignore[call-overload]
        palette=list(snap["palette"]),  # type: ignore[call-overload]
    )
    cursor = snap.get("cursor")
    if isinstance(cursor, dict):
        msg.cursor.CopyFrom(
            display_pb2.CursorDefine(
                width=cursor["width"],
                height=cursor["height"],
                hot_x=cursor["hot_x"],
                hot_y=cursor["hot_y"],
                argb=base64.b64decode(cursor["argb"]),
            )
        )
    return msg


def registers_from_proto(msg: display_pb2.SvgaRegisters) -> dict[str, object]:
    """A snapshot dict for SvgaII.restore (which validates it and raises SnapshotError)."""
    snap: dict[str, object] = {"version": 1}
    for name in _SCALARS:
        snap[name] = getattr(msg, name)
    snap.update(
        cursor_visible=msg.cursor_visible,
        busy=msg.busy,
        fb_start=msg.fb_start,
        mem_start=msg.mem_start,
        scratch=list(msg.scratch),
        palette=list(msg.palette),
        cursor=None
        if not msg.HasField("cursor")
        else {
            "width": msg.cursor.width,
            "height": msg.cursor.height,
            "hot_x": msg.cursor.hot_x,
            "hot_y": msg.cursor.hot_y,
            "argb": base64.b64encode(msg.cursor.argb).decode("ascii"),
        },
    )
    return snap


def cursor_to_proto(cursor: Cursor) -> display_pb2.CursorDefine:
    return display_pb2.CursorDefine(
        width=cursor.width, height=cursor.height, hot_x=cursor.hot_x, hot_y=cursor.hot_y, argb=cursor.argb
    )
