from rdv.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Button(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUTTON_UNSPECIFIED: _ClassVar[Button]
    BUTTON_LEFT: _ClassVar[Button]
    BUTTON_MIDDLE: _ClassVar[Button]
    BUTTON_RIGHT: _ClassVar[Button]
    BUTTON_SIDE: _ClassVar[Button]
    BUTTON_EXTRA: _ClassVar[Button]
BUTTON_UNSPECIFIED: Button
BUTTON_LEFT: Button
BUTTON_MIDDLE: Button
BUTTON_RIGHT: Button
BUTTON_SIDE: Button
BUTTON_EXTRA: Button

class PointerMove(_message.Message):
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

class ButtonEvent(_message.Message):
    __slots__ = ("button", "pressed")
    BUTTON_FIELD_NUMBER: _ClassVar[int]
    PRESSED_FIELD_NUMBER: _ClassVar[int]
    button: Button
    pressed: bool
    def __init__(self, button: _Optional[_Union[Button, str]] = ..., pressed: _Optional[bool] = ...) -> None: ...

class Wheel(_message.Message):
    __slots__ = ("dx", "dy")
    DX_FIELD_NUMBER: _ClassVar[int]
    DY_FIELD_NUMBER: _ClassVar[int]
    dx: int
    dy: int
    def __init__(self, dx: _Optional[int] = ..., dy: _Optional[int] = ...) -> None: ...

class Key(_message.Message):
    __slots__ = ("qcode", "pressed")
    QCODE_FIELD_NUMBER: _ClassVar[int]
    PRESSED_FIELD_NUMBER: _ClassVar[int]
    qcode: str
    pressed: bool
    def __init__(self, qcode: _Optional[str] = ..., pressed: _Optional[bool] = ...) -> None: ...

class Focus(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...

class InputEvent(_message.Message):
    __slots__ = ("pointer_move", "button", "wheel", "key", "focus", "vm", "source", "timestamp_ns", "seq")
    POINTER_MOVE_FIELD_NUMBER: _ClassVar[int]
    BUTTON_FIELD_NUMBER: _ClassVar[int]
    WHEEL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOCUS_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    pointer_move: PointerMove
    button: ButtonEvent
    wheel: Wheel
    key: Key
    focus: Focus
    vm: str
    source: str
    timestamp_ns: int
    seq: int
    def __init__(self, pointer_move: _Optional[_Union[PointerMove, _Mapping]] = ..., button: _Optional[_Union[ButtonEvent, _Mapping]] = ..., wheel: _Optional[_Union[Wheel, _Mapping]] = ..., key: _Optional[_Union[Key, _Mapping]] = ..., focus: _Optional[_Union[Focus, _Mapping]] = ..., vm: _Optional[str] = ..., source: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...

class PublishSummary(_message.Message):
    __slots__ = ("received", "delivered", "unrouted", "dropped", "clamped")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    UNROUTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CLAMPED_FIELD_NUMBER: _ClassVar[int]
    received: int
    delivered: int
    unrouted: int
    dropped: int
    clamped: int
    def __init__(self, received: _Optional[int] = ..., delivered: _Optional[int] = ..., unrouted: _Optional[int] = ..., dropped: _Optional[int] = ..., clamped: _Optional[int] = ...) -> None: ...

class InjectRequest(_message.Message):
    __slots__ = ("vm", "events", "source")
    VM_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    vm: str
    events: _containers.RepeatedCompositeFieldContainer[InputEvent]
    source: str
    def __init__(self, vm: _Optional[str] = ..., events: _Optional[_Iterable[_Union[InputEvent, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class InjectResponse(_message.Message):
    __slots__ = ("vm", "delivered", "dropped", "clamped")
    VM_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CLAMPED_FIELD_NUMBER: _ClassVar[int]
    vm: str
    delivered: int
    dropped: int
    clamped: int
    def __init__(self, vm: _Optional[str] = ..., delivered: _Optional[int] = ..., dropped: _Optional[int] = ..., clamped: _Optional[int] = ...) -> None: ...

class SetFocusRequest(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: str
    def __init__(self, vm: _Optional[str] = ...) -> None: ...

class GetFocusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FocusState(_message.Message):
    __slots__ = ("focused", "chosen", "subscribed", "rule")
    FOCUSED_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    focused: str
    chosen: str
    subscribed: _containers.RepeatedScalarFieldContainer[str]
    rule: str
    def __init__(self, focused: _Optional[str] = ..., chosen: _Optional[str] = ..., subscribed: _Optional[_Iterable[str]] = ..., rule: _Optional[str] = ...) -> None: ...
