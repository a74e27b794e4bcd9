"""ES1370 state <-> protobuf, shared by the shim and the audio service."""

from __future__ import annotations

from rdv.audio.v1 import audio_pb2
from services.devices.es1370 import Channel, Es1370State


def state_to_proto(state: Es1370State) -> audio_pb2.Es1370State:
    return audio_pb2.Es1370State(
        control=state.control,
        status=state.status,
        mempage=state.mempage,
        codec=state.codec,
        serial_control=state.serial_control,
        uart_control=state.uart_control,
        channels=[
            audio_pb2.Es1370Channel(
                leftover=c.leftover, scount=c.scount, frame_addr=c.frame_addr, frame_cnt=c.frame_cnt
            )
            for c in state.channels
        ],
        codec_regs=state.codec_regs,
    )


def state_from_proto(msg: audio_pb2.Es1370State) -> Es1370State:
    """Raises ValueError for a state no ES1370 can be in (so a bad resync never reaches the model)."""
    default = Es1370State()
    if len(msg.channels) != len(default.channels):
        raise ValueError(f"ES1370 state needs {len(default.channels)} channels, got {len(msg.channels)}")
    if msg.codec_regs and len(msg.codec_regs) != len(default.codec_regs):
        raise ValueError(f"ES1370 state needs {len(default.codec_regs)} codec registers")
    if msg.mempage > 0xF or msg.uart_control > 0xFF or any(c.leftover > 3 for c in msg.channels):
        raise ValueError("ES1370 state has out-of-range fields")
    return Es1370State(
        control=msg.control,
        status=msg.status,
        mempage=msg.mempage,
        codec=msg.codec,
        serial_control=msg.serial_control,
        uart_control=msg.uart_control,
        channels=[
            Channel(leftover=c.leftover, scount=c.scount, frame_addr=c.frame_addr, frame_cnt=c.frame_cnt)
            for c in msg.channels
        ],
        codec_regs=[v & 0xFF for v in msg.codec_regs] or default.codec_regs,
    )
