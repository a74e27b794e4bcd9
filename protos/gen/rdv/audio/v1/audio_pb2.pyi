from rdv.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Es1370State(_message.Message):
    __slots__ = ("control", "status", "mempage", "codec", "serial_control", "uart_control", "channels", "codec_regs")
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MEMPAGE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SERIAL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    UART_CONTROL_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CODEC_REGS_FIELD_NUMBER: _ClassVar[int]
    control: int
    status: int
    mempage: int
    codec: int
    serial_control: int
    uart_control: int
    channels: _containers.RepeatedCompositeFieldContainer[Es1370Channel]
    codec_regs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, control: _Optional[int] = ..., status: _Optional[int] = ..., mempage: _Optional[int] = ..., codec: _Optional[int] = ..., serial_control: _Optional[int] = ..., uart_control: _Optional[int] = ..., channels: _Optional[_Iterable[_Union[Es1370Channel, _Mapping]]] = ..., codec_regs: _Optional[_Iterable[int]] = ...) -> None: ...

class Es1370Channel(_message.Message):
    __slots__ = ("leftover", "scount", "frame_addr", "frame_cnt")
    LEFTOVER_FIELD_NUMBER: _ClassVar[int]
    SCOUNT_FIELD_NUMBER: _ClassVar[int]
    FRAME_ADDR_FIELD_NUMBER: _ClassVar[int]
    FRAME_CNT_FIELD_NUMBER: _ClassVar[int]
    leftover: int
    scount: int
    frame_addr: int
    frame_cnt: int
    def __init__(self, leftover: _Optional[int] = ..., scount: _Optional[int] = ..., frame_addr: _Optional[int] = ..., frame_cnt: _Optional[int] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("vm", "mode", "state")
    VM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    vm: str
    mode: _common_pb2.CoherenceMode
    state: Es1370State
    def __init__(self, vm: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.CoherenceMode, str]] = ..., state: _Optional[_Union[Es1370State, _Mapping]] = ...) -> None: ...

class PcmChunk(_message.Message):
    __slots__ = ("channel", "seq", "data", "sent_ns", "late_dma")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    LATE_DMA_FIELD_NUMBER: _ClassVar[int]
    channel: int
    seq: int
    data: bytes
    sent_ns: int
    late_dma: int
    def __init__(self, channel: _Optional[int] = ..., seq: _Optional[int] = ..., data: _Optional[bytes] = ..., sent_ns: _Optional[int] = ..., late_dma: _Optional[int] = ...) -> None: ...

class DmaData(_message.Message):
    __slots__ = ("request_id", "data", "ok")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    data: bytes
    ok: bool
    def __init__(self, request_id: _Optional[int] = ..., data: _Optional[bytes] = ..., ok: _Optional[bool] = ...) -> None: ...

class CaptureStep(_message.Message):
    __slots__ = ("channel", "length")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    channel: int
    length: int
    def __init__(self, channel: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DmaWritten(_message.Message):
    __slots__ = ("request_id", "ok")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    ok: bool
    def __init__(self, request_id: _Optional[int] = ..., ok: _Optional[bool] = ...) -> None: ...

class FrontendMessage(_message.Message):
    __slots__ = ("open", "access", "pcm", "dma_data", "barrier", "resync", "writes", "capture_step", "dma_written")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    DMA_DATA_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_STEP_FIELD_NUMBER: _ClassVar[int]
    DMA_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    open: Open
    access: _common_pb2.RegisterAccess
    pcm: PcmChunk
    dma_data: DmaData
    barrier: _common_pb2.Barrier
    resync: Es1370State
    writes: _common_pb2.RegisterWrites
    capture_step: CaptureStep
    dma_written: DmaWritten
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., access: _Optional[_Union[_common_pb2.RegisterAccess, _Mapping]] = ..., pcm: _Optional[_Union[PcmChunk, _Mapping]] = ..., dma_data: _Optional[_Union[DmaData, _Mapping]] = ..., barrier: _Optional[_Union[_common_pb2.Barrier, _Mapping]] = ..., resync: _Optional[_Union[Es1370State, _Mapping]] = ..., writes: _Optional[_Union[_common_pb2.RegisterWrites, _Mapping]] = ..., capture_step: _Optional[_Union[CaptureStep, _Mapping]] = ..., dma_written: _Optional[_Union[DmaWritten, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("session_id", "info", "lead_ms", "capture")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    LEAD_MS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    info: _common_pb2.ServiceInfo
    lead_ms: int
    capture: CaptureSourceInfo
    def __init__(self, session_id: _Optional[str] = ..., info: _Optional[_Union[_common_pb2.ServiceInfo, _Mapping]] = ..., lead_ms: _Optional[int] = ..., capture: _Optional[_Union[CaptureSourceInfo, _Mapping]] = ...) -> None: ...

class CaptureSourceInfo(_message.Message):
    __slots__ = ("kind", "latency_ms", "rate", "channels", "bits")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    latency_ms: int
    rate: int
    channels: int
    bits: int
    def __init__(self, kind: _Optional[str] = ..., latency_ms: _Optional[int] = ..., rate: _Optional[int] = ..., channels: _Optional[int] = ..., bits: _Optional[int] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ("level", "status", "sent_ns")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    level: bool
    status: int
    sent_ns: int
    def __init__(self, level: _Optional[bool] = ..., status: _Optional[int] = ..., sent_ns: _Optional[int] = ...) -> None: ...

class DmaSegment(_message.Message):
    __slots__ = ("addr", "length")
    ADDR_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    addr: int
    length: int
    def __init__(self, addr: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DmaRequest(_message.Message):
    __slots__ = ("request_id", "channel", "segments")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    channel: int
    segments: _containers.RepeatedCompositeFieldContainer[DmaSegment]
    def __init__(self, request_id: _Optional[int] = ..., channel: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[DmaSegment, _Mapping]]] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("channel", "bytes_received", "bytes_played", "underruns", "late_dma")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PLAYED_FIELD_NUMBER: _ClassVar[int]
    UNDERRUNS_FIELD_NUMBER: _ClassVar[int]
    LATE_DMA_FIELD_NUMBER: _ClassVar[int]
    channel: int
    bytes_received: int
    bytes_played: int
    underruns: int
    late_dma: int
    def __init__(self, channel: _Optional[int] = ..., bytes_received: _Optional[int] = ..., bytes_played: _Optional[int] = ..., underruns: _Optional[int] = ..., late_dma: _Optional[int] = ...) -> None: ...

class CaptureData(_message.Message):
    __slots__ = ("channel", "data", "start", "captured_ns")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_NS_FIELD_NUMBER: _ClassVar[int]
    channel: int
    data: bytes
    start: bool
    captured_ns: int
    def __init__(self, channel: _Optional[int] = ..., data: _Optional[bytes] = ..., start: _Optional[bool] = ..., captured_ns: _Optional[int] = ...) -> None: ...

class DmaWrite(_message.Message):
    __slots__ = ("channel", "addr", "data", "captured_ns", "request_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_NS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    channel: int
    addr: int
    data: bytes
    captured_ns: int
    request_id: int
    def __init__(self, channel: _Optional[int] = ..., addr: _Optional[int] = ..., data: _Optional[bytes] = ..., captured_ns: _Optional[int] = ..., request_id: _Optional[int] = ...) -> None: ...

class BarrierAck(_message.Message):
    __slots__ = ("seq", "sent_ns", "state", "bytes_received")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_ns: int
    state: Es1370State
    bytes_received: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., sent_ns: _Optional[int] = ..., state: _Optional[_Union[Es1370State, _Mapping]] = ..., bytes_received: _Optional[_Iterable[int]] = ...) -> None: ...

class BackendMessage(_message.Message):
    __slots__ = ("opened", "value", "interrupt", "dma_request", "position", "barrier_ack", "capture", "dma_write")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    DMA_REQUEST_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    BARRIER_ACK_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    DMA_WRITE_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    value: _common_pb2.RegisterValue
    interrupt: Interrupt
    dma_request: DmaRequest
    position: Position
    barrier_ack: BarrierAck
    capture: CaptureData
    dma_write: DmaWrite
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., value: _Optional[_Union[_common_pb2.RegisterValue, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ..., dma_request: _Optional[_Union[DmaRequest, _Mapping]] = ..., position: _Optional[_Union[Position, _Mapping]] = ..., barrier_ack: _Optional[_Union[BarrierAck, _Mapping]] = ..., capture: _Optional[_Union[CaptureData, _Mapping]] = ..., dma_write: _Optional[_Union[DmaWrite, _Mapping]] = ...) -> None: ...

class GetDeviceStateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ChannelView(_message.Message):
    __slots__ = ("name", "enabled", "paused", "rate", "channels", "bits", "frame_addr", "buffer_bytes", "position_bytes", "samples_left", "bytes_played")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    FRAME_ADDR_FIELD_NUMBER: _ClassVar[int]
    BUFFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    POSITION_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_LEFT_FIELD_NUMBER: _ClassVar[int]
    BYTES_PLAYED_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    paused: bool
    rate: int
    channels: int
    bits: int
    frame_addr: int
    buffer_bytes: int
    position_bytes: int
    samples_left: int
    bytes_played: int
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., paused: _Optional[bool] = ..., rate: _Optional[int] = ..., channels: _Optional[int] = ..., bits: _Optional[int] = ..., frame_addr: _Optional[int] = ..., buffer_bytes: _Optional[int] = ..., position_bytes: _Optional[int] = ..., samples_left: _Optional[int] = ..., bytes_played: _Optional[int] = ...) -> None: ...

class DeviceState(_message.Message):
    __slots__ = ("session_id", "raw", "irq", "channels", "underruns", "late_dma")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    IRQ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    UNDERRUNS_FIELD_NUMBER: _ClassVar[int]
    LATE_DMA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    raw: Es1370State
    irq: bool
    channels: _containers.RepeatedCompositeFieldContainer[ChannelView]
    underruns: int
    late_dma: int
    def __init__(self, session_id: _Optional[str] = ..., raw: _Optional[_Union[Es1370State, _Mapping]] = ..., irq: _Optional[bool] = ..., channels: _Optional[_Iterable[_Union[ChannelView, _Mapping]]] = ..., underruns: _Optional[int] = ..., late_dma: _Optional[int] = ...) -> None: ...
