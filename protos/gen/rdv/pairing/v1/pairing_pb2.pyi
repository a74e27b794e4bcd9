from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginRequest(_message.Message):
    __slots__ = ("vm", "devices", "spake2_message")
    VM_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SPAKE2_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    vm: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    spake2_message: bytes
    def __init__(self, vm: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., spake2_message: _Optional[bytes] = ...) -> None: ...

class BeginResponse(_message.Message):
    __slots__ = ("exchange_id", "spake2_message")
    EXCHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAKE2_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    exchange_id: str
    spake2_message: bytes
    def __init__(self, exchange_id: _Optional[str] = ..., spake2_message: _Optional[bytes] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("exchange_id", "csr_der", "confirm")
    EXCHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    exchange_id: str
    csr_der: bytes
    confirm: bytes
    def __init__(self, exchange_id: _Optional[str] = ..., csr_der: _Optional[bytes] = ..., confirm: _Optional[bytes] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ("ca_pem", "cert_pem", "confirm")
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    ca_pem: bytes
    cert_pem: bytes
    confirm: bytes
    def __init__(self, ca_pem: _Optional[bytes] = ..., cert_pem: _Optional[bytes] = ..., confirm: _Optional[bytes] = ...) -> None: ...

class OpenPairingRequest(_message.Message):
    __slots__ = ("seconds",)
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    seconds: int
    def __init__(self, seconds: _Optional[int] = ...) -> None: ...

class OpenPairingResponse(_message.Message):
    __slots__ = ("pin", "seconds_left")
    PIN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    pin: str
    seconds_left: float
    def __init__(self, pin: _Optional[str] = ..., seconds_left: _Optional[float] = ...) -> None: ...

class ListPairingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PairingRecord(_message.Message):
    __slots__ = ("serial", "vm", "devices", "issued_unix", "revoked", "peer")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    serial: str
    vm: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    issued_unix: int
    revoked: bool
    peer: str
    def __init__(self, serial: _Optional[str] = ..., vm: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., issued_unix: _Optional[int] = ..., revoked: _Optional[bool] = ..., peer: _Optional[str] = ...) -> None: ...

class ListPairingsResponse(_message.Message):
    __slots__ = ("pairings",)
    PAIRINGS_FIELD_NUMBER: _ClassVar[int]
    pairings: _containers.RepeatedCompositeFieldContainer[PairingRecord]
    def __init__(self, pairings: _Optional[_Iterable[_Union[PairingRecord, _Mapping]]] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("serial", "vm")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    serial: str
    vm: str
    def __init__(self, serial: _Optional[str] = ..., vm: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revoked: _Optional[_Iterable[str]] = ...) -> None: ...
