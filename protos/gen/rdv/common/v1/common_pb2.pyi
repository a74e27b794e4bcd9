from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CoherenceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COHERENCE_MODE_UNSPECIFIED: _ClassVar[CoherenceMode]
    COHERENCE_MODE_BACKEND: _ClassVar[CoherenceMode]
    COHERENCE_MODE_MIRRORED: _ClassVar[CoherenceMode]
COHERENCE_MODE_UNSPECIFIED: CoherenceMode
COHERENCE_MODE_BACKEND: CoherenceMode
COHERENCE_MODE_MIRRORED: CoherenceMode

class RegisterAccess(_message.Message):
    __slots__ = ("seq", "bar", "offset", "size", "write", "value")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    BAR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    bar: int
    offset: int
    size: int
    write: bool
    value: int
    def __init__(self, seq: _Optional[int] = ..., bar: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., write: _Optional[bool] = ..., value: _Optional[int] = ...) -> None: ...

class RegisterWrites(_message.Message):
    __slots__ = ("pairs", "sizes")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedScalarFieldContainer[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, pairs: _Optional[_Iterable[int]] = ..., sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterValue(_message.Message):
    __slots__ = ("seq", "value")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    value: int
    def __init__(self, seq: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...

class Barrier(_message.Message):
    __slots__ = ("seq", "sent_ns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    sent_ns: int
    def __init__(self, seq: _Optional[int] = ..., sent_ns: _Optional[int] = ...) -> None: ...

class GetServiceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("service", "version", "listen", "features", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    listen: str
    features: _containers.RepeatedScalarFieldContainer[str]
    config: _containers.ScalarMap[str, str]
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., listen: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "vm", "mode", "peer", "age_seconds", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    vm: str
    mode: CoherenceMode
    peer: str
    age_seconds: float
    counters: _containers.ScalarMap[str, int]
    def __init__(self, session_id: _Optional[str] = ..., vm: _Optional[str] = ..., mode: _Optional[_Union[CoherenceMode, str]] = ..., peer: _Optional[str] = ..., age_seconds: _Optional[float] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...
