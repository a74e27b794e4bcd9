"""Input events: building them and the one validation every entry point uses (service, publisher, shim)."""

from __future__ import annotations

import time

from rdv.input.v1 import input_pb2
from services.common.input_keys import check_qcode
from services.common.sessions import VM_NAME, VM_NAME_RULE

MAX_DESKTOP = 32768  # pixels per side; QEMU's absolute axis has 32768 steps, more could not be told apart
MAX_WHEEL = 64  # clicks per event and direction
MAX_SOURCE = 64  # characters of a source name

BUTTONS: dict[str, int] = {
    "left": input_pb2.BUTTON_LEFT,
    "middle": input_pb2.BUTTON_MIDDLE,
    "right": input_pb2.BUTTON_RIGHT,
    "side": input_pb2.BUTTON_SIDE,
    "extra": input_pb2.BUTTON_EXTRA,
}
BUTTON_NAMES: dict[int, str] = {v: k for k, v in BUTTONS.items()}  # also QEMU's InputButton names


class InvalidEvent(ValueError):
    """An event no guest could receive; the message says what to change."""


def move(x: int, y: int, width: int, height: int) -> input_pb2.InputEvent:
    return input_pb2.InputEvent(pointer_move=input_pb2.PointerMove(x=x, y=y, width=width, height=height))


def button(name: str, pressed: bool) -> input_pb2.InputEvent:
    if name not in BUTTONS:
        raise InvalidEvent(f"unknown button {name!r}: one of {', '.join(BUTTONS)}")
    return input_pb2.InputEvent(button=input_pb2.ButtonEvent(button=BUTTONS[name], pressed=pressed))


def wheel(dx: int = 0, dy: int = 0) -> input_pb2.InputEvent:
    return input_pb2.InputEvent(wheel=input_pb2.Wheel(dx=dx, dy=dy))


def key(qcode: str, pressed: bool) -> input_pb2.InputEvent:
    return input_pb2.InputEvent(key=input_pb2.Key(qcode=qcode, pressed=pressed))


def check(event: input_pb2.InputEvent) -> bool:
    """Validate `event` in place; clamp an off-desktop pointer position onto it. Returns True if clamped.

    Raises InvalidEvent for anything that cannot be delivered.
    """
    kind = event.WhichOneof("kind")
    if len(event.source) > MAX_SOURCE:
        raise InvalidEvent(f"source name longer than {MAX_SOURCE} characters")
    if kind is None:
        raise InvalidEvent("event has no kind: set one of pointer_move, button, wheel, key")
    if event.vm and not VM_NAME.fullmatch(event.vm):
        raise InvalidEvent(f"{VM_NAME_RULE} (got {event.vm[:80]!r})")
    if kind == "focus":
        if not VM_NAME.fullmatch(event.focus.vm):
            raise InvalidEvent(f"focus.{VM_NAME_RULE} (got {event.focus.vm[:80]!r})")
        return False
    if kind == "pointer_move":
        m = event.pointer_move
        for axis, size in (("width", m.width), ("height", m.height)):
            if not 1 <= size <= MAX_DESKTOP:
                raise InvalidEvent(
                    f"pointer_move.{axis} must be the guest desktop's {axis} in pixels, 1..{MAX_DESKTOP} (got {size})"
                )
        x, y = min(max(m.x, 0), m.width - 1), min(max(m.y, 0), m.height - 1)
        if (x, y) != (m.x, m.y):
            m.x, m.y = x, y
            return True
    elif kind == "button":
        if event.button.button not in BUTTON_NAMES:
            raise InvalidEvent(
                f"button.button must be one of {', '.join('BUTTON_' + n.upper() for n in BUTTONS)} "
                f"(got {event.button.button})"
            )
    elif kind == "wheel":
        w = event.wheel
        if w.dx == 0 and w.dy == 0:
            raise InvalidEvent("wheel event with dx = dy = 0 scrolls nothing")
        if abs(w.dx) > MAX_WHEEL or abs(w.dy) > MAX_WHEEL:
            raise InvalidEvent(f"wheel.dx and wheel.dy are clicks, -{MAX_WHEEL}..{MAX_WHEEL}")
    else:
        try:
            check_qcode(event.key.qcode)
        except ValueError as exc:
            raise InvalidEvent(str(exc)) from None
    return False


def stamp(event: input_pb2.InputEvent, source: str, seq: int) -> None:
    """Fill in what the source left empty."""
    if not event.source:
        event.source = source
    if not event.timestamp_ns:
        event.timestamp_ns = time.monotonic_ns()
    if not event.seq:
        event.seq = seq


def describe(event: input_pb2.InputEvent) -> str:
    """Short human form for logs: `key a down`, `move 10,20/1024x768`."""
    kind = event.WhichOneof("kind")
    if kind == "pointer_move":
        m = event.pointer_move
        return f"move {m.x},{m.y}/{m.width}x{m.height}"
    if kind == "button":
        return f"button {BUTTON_NAMES.get(event.button.button, event.button.button)} {_ud(event.button.pressed)}"
    if kind == "wheel":
        return f"wheel {event.wheel.dx},{event.wheel.dy}"
    if kind == "key":
        return f"key {event.key.qcode} {_ud(event.key.pressed)}"
    if kind == "focus":
        return f"focus {event.focus.vm}"
    return "empty"


def _ud(pressed: bool) -> str:
    return "down" if pressed else "up"
