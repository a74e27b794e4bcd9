from rdv.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_RAW: _ClassVar[Encoding]
    ENCODING_LZO: _ClassVar[Encoding]
    ENCODING_LZ4: _ClassVar[Encoding]
    ENCODING_ZSTD: _ClassVar[Encoding]
    ENCODING_IMAGE: _ClassVar[Encoding]

class VideoCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_CODEC_UNSPECIFIED: _ClassVar[VideoCodec]
    VIDEO_CODEC_H264: _ClassVar[VideoCodec]
    VIDEO_CODEC_JPEG: _ClassVar[VideoCodec]
ENCODING_UNSPECIFIED: Encoding
ENCODING_RAW: Encoding
ENCODING_LZO: Encoding
ENCODING_LZ4: Encoding
ENCODING_ZSTD: Encoding
ENCODING_IMAGE: Encoding
VIDEO_CODEC_UNSPECIFIED: VideoCodec
VIDEO_CODEC_H264: VideoCodec
VIDEO_CODEC_JPEG: VideoCodec

class Rect(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Viewport(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class FrameMode(_message.Message):
    __slots__ = ("width", "height", "bpp", "pitch", "enabled")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BPP_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    bpp: int
    pitch: int
    enabled: bool
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., bpp: _Optional[int] = ..., pitch: _Optional[int] = ..., enabled: _Optional[bool] = ...) -> None: ...

class SvgaRegisters(_message.Message):
    __slots__ = ("index", "svga_id", "enable", "width", "height", "bpp", "pitchlock", "config_done", "guest_id", "cursor_id", "cursor_x", "cursor_y", "cursor_on", "irq_mask", "irq_status", "cursor_visible", "busy", "fb_start", "mem_start", "scratch", "palette", "cursor")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SVGA_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    BPP_FIELD_NUMBER: _ClassVar[int]
    PITCHLOCK_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DONE_FIELD_NUMBER: _ClassVar[int]
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_X_FIELD_NUMBER: _ClassVar[int]
    CURSOR_Y_FIELD_NUMBER: _ClassVar[int]
    CURSOR_ON_FIELD_NUMBER: _ClassVar[int]
    IRQ_MASK_FIELD_NUMBER: _ClassVar[int]
    IRQ_STATUS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_VISIBLE_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    FB_START_FIELD_NUMBER: _ClassVar[int]
    MEM_START_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_FIELD_NUMBER: _ClassVar[int]
    PALETTE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    index: int
    svga_id: int
    enable: int
    width: int
    height: int
    bpp: int
    pitchlock: int
    config_done: int
    guest_id: int
    cursor_id: int
    cursor_x: int
    cursor_y: int
    cursor_on: int
    irq_mask: int
    irq_status: int
    cursor_visible: bool
    busy: bool
    fb_start: int
    mem_start: int
    scratch: _containers.RepeatedScalarFieldContainer[int]
    palette: _containers.RepeatedScalarFieldContainer[int]
    cursor: CursorDefine
    def __init__(self, index: _Optional[int] = ..., svga_id: _Optional[int] = ..., enable: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., bpp: _Optional[int] = ..., pitchlock: _Optional[int] = ..., config_done: _Optional[int] = ..., guest_id: _Optional[int] = ..., cursor_id: _Optional[int] = ..., cursor_x: _Optional[int] = ..., cursor_y: _Optional[int] = ..., cursor_on: _Optional[int] = ..., irq_mask: _Optional[int] = ..., irq_status: _Optional[int] = ..., cursor_visible: _Optional[bool] = ..., busy: _Optional[bool] = ..., fb_start: _Optional[int] = ..., mem_start: _Optional[int] = ..., scratch: _Optional[_Iterable[int]] = ..., palette: _Optional[_Iterable[int]] = ..., cursor: _Optional[_Union[CursorDefine, _Mapping]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("vm", "mode", "registers", "vram_size", "fifo_size")
    VM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    VRAM_SIZE_FIELD_NUMBER: _ClassVar[int]
    FIFO_SIZE_FIELD_NUMBER: _ClassVar[int]
    vm: str
    mode: _common_pb2.CoherenceMode
    registers: SvgaRegisters
    vram_size: int
    fifo_size: int
    def __init__(self, vm: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.CoherenceMode, str]] = ..., registers: _Optional[_Union[SvgaRegisters, _Mapping]] = ..., vram_size: _Optional[int] = ..., fifo_size: _Optional[int] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("rect", "color")
    RECT_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    rect: Rect
    color: int
    def __init__(self, rect: _Optional[_Union[Rect, _Mapping]] = ..., color: _Optional[int] = ...) -> None: ...

class Copy(_message.Message):
    __slots__ = ("src_x", "src_y", "dst")
    SRC_X_FIELD_NUMBER: _ClassVar[int]
    SRC_Y_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    src_x: int
    src_y: int
    dst: Rect
    def __init__(self, src_x: _Optional[int] = ..., src_y: _Optional[int] = ..., dst: _Optional[_Union[Rect, _Mapping]] = ...) -> None: ...

class PixelRect(_message.Message):
    __slots__ = ("rect", "encoding", "payload", "decoded_size")
    RECT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DECODED_SIZE_FIELD_NUMBER: _ClassVar[int]
    rect: Rect
    encoding: Encoding
    payload: bytes
    decoded_size: int
    def __init__(self, rect: _Optional[_Union[Rect, _Mapping]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., payload: _Optional[bytes] = ..., decoded_size: _Optional[int] = ...) -> None: ...

class CursorDefine(_message.Message):
    __slots__ = ("width", "height", "hot_x", "hot_y", "argb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HOT_X_FIELD_NUMBER: _ClassVar[int]
    HOT_Y_FIELD_NUMBER: _ClassVar[int]
    ARGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    hot_x: int
    hot_y: int
    argb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., hot_x: _Optional[int] = ..., hot_y: _Optional[int] = ..., argb: _Optional[bytes] = ...) -> None: ...

class CursorMove(_message.Message):
    __slots__ = ("x", "y", "visible")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    visible: bool
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., visible: _Optional[bool] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("version", "stream_id", "rect", "codec", "keyframe", "payload")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    RECT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    version: int
    stream_id: int
    rect: Rect
    codec: VideoCodec
    keyframe: bool
    payload: bytes
    def __init__(self, version: _Optional[int] = ..., stream_id: _Optional[int] = ..., rect: _Optional[_Union[Rect, _Mapping]] = ..., codec: _Optional[_Union[VideoCodec, str]] = ..., keyframe: _Optional[bool] = ..., payload: _Optional[bytes] = ...) -> None: ...

class VideoEnd(_message.Message):
    __slots__ = ("stream_id",)
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    def __init__(self, stream_id: _Optional[int] = ...) -> None: ...

class VideoSupport(_message.Message):
    __slots__ = ("version", "codecs", "max_streams")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    codecs: _containers.RepeatedScalarFieldContainer[VideoCodec]
    max_streams: int
    def __init__(self, version: _Optional[int] = ..., codecs: _Optional[_Iterable[_Union[VideoCodec, str]]] = ..., max_streams: _Optional[int] = ...) -> None: ...

class DisplayUpdate(_message.Message):
    __slots__ = ("fill", "copy", "pixels", "cursor_define", "cursor_move", "video", "video_end")
    FILL_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_DEFINE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_MOVE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    VIDEO_END_FIELD_NUMBER: _ClassVar[int]
    fill: Fill
    copy: Copy
    pixels: PixelRect
    cursor_define: CursorDefine
    cursor_move: CursorMove
    video: VideoFrame
    video_end: VideoEnd
    def __init__(self, fill: _Optional[_Union[Fill, _Mapping]] = ..., copy: _Optional[_Union[Copy, _Mapping]] = ..., pixels: _Optional[_Union[PixelRect, _Mapping]] = ..., cursor_define: _Optional[_Union[CursorDefine, _Mapping]] = ..., cursor_move: _Optional[_Union[CursorMove, _Mapping]] = ..., video: _Optional[_Union[VideoFrame, _Mapping]] = ..., video_end: _Optional[_Union[VideoEnd, _Mapping]] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame_id", "mode", "updates", "sent_ns", "full")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    mode: FrameMode
    updates: _containers.RepeatedCompositeFieldContainer[DisplayUpdate]
    sent_ns: int
    full: bool
    def __init__(self, frame_id: _Optional[int] = ..., mode: _Optional[_Union[FrameMode, _Mapping]] = ..., updates: _Optional[_Iterable[_Union[DisplayUpdate, _Mapping]]] = ..., sent_ns: _Optional[int] = ..., full: _Optional[bool] = ...) -> None: ...

class FifoDone(_message.Message):
    __slots__ = ("busy", "irq_flags", "commands")
    BUSY_FIELD_NUMBER: _ClassVar[int]
    IRQ_FLAGS_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    busy: bool
    irq_flags: int
    commands: int
    def __init__(self, busy: _Optional[bool] = ..., irq_flags: _Optional[int] = ..., commands: _Optional[int] = ...) -> None: ...

class FrontendMessage(_message.Message):
    __slots__ = ("open", "access", "frame", "barrier", "fifo_done", "writes")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    BARRIER_FIELD_NUMBER: _ClassVar[int]
    FIFO_DONE_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    open: Open
    access: _common_pb2.RegisterAccess
    frame: Frame
    barrier: _common_pb2.Barrier
    fifo_done: FifoDone
    writes: _common_pb2.RegisterWrites
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., access: _Optional[_Union[_common_pb2.RegisterAccess, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., barrier: _Optional[_Union[_common_pb2.Barrier, _Mapping]] = ..., fifo_done: _Optional[_Union[FifoDone, _Mapping]] = ..., writes: _Optional[_Union[_common_pb2.RegisterWrites, _Mapping]] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("session_id", "info", "viewport", "max_frames_in_flight", "refresh_hz", "max_frame_bytes", "video")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REFRESH_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    info: _common_pb2.ServiceInfo
    viewport: Viewport
    max_frames_in_flight: int
    refresh_hz: int
    max_frame_bytes: int
    video: VideoSupport
    def __init__(self, session_id: _Optional[str] = ..., info: _Optional[_Union[_common_pb2.ServiceInfo, _Mapping]] = ..., viewport: _Optional[_Union[Viewport, _Mapping]] = ..., max_frames_in_flight: _Optional[int] = ..., refresh_hz: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., video: _Optional[_Union[VideoSupport, _Mapping]] = ...) -> None: ...

class FrameAck(_message.Message):
    __slots__ = ("frame_id", "received_ns", "applied_ns", "presented_ns", "presented", "sent_ns")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_NS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_NS_FIELD_NUMBER: _ClassVar[int]
    PRESENTED_NS_FIELD_NUMBER: _ClassVar[int]
    PRESENTED_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    frame_id: int
    received_ns: int
    applied_ns: int
    presented_ns: int
    presented: bool
    sent_ns: int
    def __init__(self, frame_id: _Optional[int] = ..., received_ns: _Optional[int] = ..., applied_ns: _Optional[int] = ..., presented_ns: _Optional[int] = ..., presented: _Optional[bool] = ..., sent_ns: _Optional[int] = ...) -> None: ...

class BarrierAck(_message.Message):
    __slots__ = ("seq", "sent_ns", "registers", "frames_applied", "last_frame_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_ns: int
    registers: SvgaRegisters
    frames_applied: int
    last_frame_id: int
    def __init__(self, seq: _Optional[int] = ..., sent_ns: _Optional[int] = ..., registers: _Optional[_Union[SvgaRegisters, _Mapping]] = ..., frames_applied: _Optional[int] = ..., last_frame_id: _Optional[int] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("message", "video_stream_id")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    message: str
    video_stream_id: int
    def __init__(self, message: _Optional[str] = ..., video_stream_id: _Optional[int] = ...) -> None: ...

class BackendMessage(_message.Message):
    __slots__ = ("opened", "value", "frame_ack", "barrier_ack", "notice")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FRAME_ACK_FIELD_NUMBER: _ClassVar[int]
    BARRIER_ACK_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    value: _common_pb2.RegisterValue
    frame_ack: FrameAck
    barrier_ack: BarrierAck
    notice: Notice
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., value: _Optional[_Union[_common_pb2.RegisterValue, _Mapping]] = ..., frame_ack: _Optional[_Union[FrameAck, _Mapping]] = ..., barrier_ack: _Optional[_Union[BarrierAck, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ...) -> None: ...

class ScreenshotRequest(_message.Message):
    __slots__ = ("session_id", "vm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    vm: str
    def __init__(self, session_id: _Optional[str] = ..., vm: _Optional[str] = ...) -> None: ...

class ScreenshotReply(_message.Message):
    __slots__ = ("png", "width", "height", "session_id", "viewport", "last_frame_id")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    session_id: str
    viewport: Viewport
    last_frame_id: int
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., session_id: _Optional[str] = ..., viewport: _Optional[_Union[Viewport, _Mapping]] = ..., last_frame_id: _Optional[int] = ...) -> None: ...

class GetDisplayStateRequest(_message.Message):
    __slots__ = ("session_id", "vm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    vm: str
    def __init__(self, session_id: _Optional[str] = ..., vm: _Optional[str] = ...) -> None: ...

class DisplayStats(_message.Message):
    __slots__ = ("frames", "frames_presented", "presents", "updates", "fills", "copies", "pixel_rects", "bytes_in", "decoded_bytes", "compression_ratio", "updates_per_second", "register_reads", "register_writes", "video_frames", "video_bytes", "video_dropped")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PRESENTED_FIELD_NUMBER: _ClassVar[int]
    PRESENTS_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    FILLS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    PIXEL_RECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    DECODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATIO_FIELD_NUMBER: _ClassVar[int]
    UPDATES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    REGISTER_READS_FIELD_NUMBER: _ClassVar[int]
    REGISTER_WRITES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FRAMES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_BYTES_FIELD_NUMBER: _ClassVar[int]
    VIDEO_DROPPED_FIELD_NUMBER: _ClassVar[int]
    frames: int
    frames_presented: int
    presents: int
    updates: int
    fills: int
    copies: int
    pixel_rects: int
    bytes_in: int
    decoded_bytes: int
    compression_ratio: float
    updates_per_second: float
    register_reads: int
    register_writes: int
    video_frames: int
    video_bytes: int
    video_dropped: int
    def __init__(self, frames: _Optional[int] = ..., frames_presented: _Optional[int] = ..., presents: _Optional[int] = ..., updates: _Optional[int] = ..., fills: _Optional[int] = ..., copies: _Optional[int] = ..., pixel_rects: _Optional[int] = ..., bytes_in: _Optional[int] = ..., decoded_bytes: _Optional[int] = ..., compression_ratio: _Optional[float] = ..., updates_per_second: _Optional[float] = ..., register_reads: _Optional[int] = ..., register_writes: _Optional[int] = ..., video_frames: _Optional[int] = ..., video_bytes: _Optional[int] = ..., video_dropped: _Optional[int] = ...) -> None: ...

class VideoStreamState(_message.Message):
    __slots__ = ("stream_id", "rect", "codec", "frames", "bytes", "fps", "bitrate_mbps", "dropped")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    RECT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    BITRATE_MBPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    stream_id: int
    rect: Rect
    codec: VideoCodec
    frames: int
    bytes: int
    fps: float
    bitrate_mbps: float
    dropped: int
    def __init__(self, stream_id: _Optional[int] = ..., rect: _Optional[_Union[Rect, _Mapping]] = ..., codec: _Optional[_Union[VideoCodec, str]] = ..., frames: _Optional[int] = ..., bytes: _Optional[int] = ..., fps: _Optional[float] = ..., bitrate_mbps: _Optional[float] = ..., dropped: _Optional[int] = ...) -> None: ...

class DisplayState(_message.Message):
    __slots__ = ("session_id", "vm", "coherence", "mode", "viewport", "presenter", "stats", "registers", "cursor", "on_screen", "refresh_hz", "video_streams", "window_title", "focused", "window_hidden", "connected")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    COHERENCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    VIEWPORT_FIELD_NUMBER: _ClassVar[int]
    PRESENTER_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    REGISTERS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ON_SCREEN_FIELD_NUMBER: _ClassVar[int]
    REFRESH_HZ_FIELD_NUMBER: _ClassVar[int]
    VIDEO_STREAMS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TITLE_FIELD_NUMBER: _ClassVar[int]
    FOCUSED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    vm: str
    coherence: _common_pb2.CoherenceMode
    mode: FrameMode
    viewport: Viewport
    presenter: str
    stats: DisplayStats
    registers: SvgaRegisters
    cursor: CursorMove
    on_screen: bool
    refresh_hz: int
    video_streams: _containers.RepeatedCompositeFieldContainer[VideoStreamState]
    window_title: str
    focused: bool
    window_hidden: bool
    connected: bool
    def __init__(self, session_id: _Optional[str] = ..., vm: _Optional[str] = ..., coherence: _Optional[_Union[_common_pb2.CoherenceMode, str]] = ..., mode: _Optional[_Union[FrameMode, _Mapping]] = ..., viewport: _Optional[_Union[Viewport, _Mapping]] = ..., presenter: _Optional[str] = ..., stats: _Optional[_Union[DisplayStats, _Mapping]] = ..., registers: _Optional[_Union[SvgaRegisters, _Mapping]] = ..., cursor: _Optional[_Union[CursorMove, _Mapping]] = ..., on_screen: _Optional[bool] = ..., refresh_hz: _Optional[int] = ..., video_streams: _Optional[_Iterable[_Union[VideoStreamState, _Mapping]]] = ..., window_title: _Optional[str] = ..., focused: _Optional[bool] = ..., window_hidden: _Optional[bool] = ..., connected: _Optional[bool] = ...) -> None: ...
