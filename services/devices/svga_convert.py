"""SvgaState <-> SvgaRegisters messages, and the encoding names <-> enum (shim and service)."""

from __future__ import annotations

from rdv.display.v1 import display_pb2
from services.devices.svga import Cursor, SvgaState

ENCODING_ENUM: dict[str, int] = {
    "raw": display_pb2.ENCODING_RAW,
    "lzo": display_pb2.ENCODING_LZO,
    "lz4": display_pb2.ENCODING_LZ4,
    "zstd": display_pb2.ENCODING_ZSTD,
    "image": display_pb2.ENCODING_IMAGE,
}
ENCODING_NAME: dict[int, str] = {v: k for k, v in ENCODING_ENUM.items()}
VIDEO_CODEC_ENUM: dict[str, int] = {"h264": display_pb2.VIDEO_CODEC_H264, "jpeg": display_pb2.VIDEO_CODEC_JPEG}
VIDEO_CODEC_NAME: dict[int, str] = {v: k for k, v in VIDEO_CODEC_ENUM.items()}


def registers_to_proto(state: SvgaState) -> display_pb2.SvgaRegisters:
    msg = display_pb2.SvgaRegisters(
        **{name: getattr(state, name) for name in SvgaState.PLAIN}, scratch=state.scratch, palette=state.palette
    )
    if state.cursor is not None:
        msg.cursor.CopyFrom(cursor_to_proto(state.cursor))
    return msg


def registers_from_proto(msg: display_pb2.SvgaRegisters) -> SvgaState:
    """The state a message describes; SnapshotError when it is not one an SVGA II can be in."""
    c = msg.cursor
    cursor = Cursor(c.width, c.height, c.hot_x, c.hot_y, c.argb) if msg.HasField("cursor") else None
    plain = {name: getattr(msg, name) for name in SvgaState.PLAIN}
    return SvgaState(**plain, scratch=tuple(msg.scratch), palette=tuple(msg.palette), cursor=cursor)


def cursor_to_proto(cursor: Cursor) -> display_pb2.CursorDefine:
    return display_pb2.CursorDefine(
        width=cursor.width, height=cursor.height, hot_x=cursor.hot_x, hot_y=cursor.hot_y, argb=cursor.argb
    )
