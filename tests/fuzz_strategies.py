"""Hypothesis strategies for the fuzz tests: well-typed random protobuf messages built from the descriptors, and
device-level traffic (ES1370 and SVGA II accesses, SVGA FIFO contents).

`message(descriptor)` walks a message descriptor and fills fields with random values of the right type:
integers over their whole range (Hypothesis favours the extremes: 0, -1, 2**31-1, 2**64-1, ...), unknown enum
values (proto3 enums are open), strings of any Unicode, bytes from empty to hundreds of KiB, repeated and map
fields, nested messages (to a depth), and exactly one member (or none) of every oneof. `hints` mix in
plausible values for named fields, so the sequences also get past the first check and reach deeper states.

Sizes: Hypothesis draws at most a few KiB per example, so large byte strings are grown from a drawn seed.
How many examples each test runs comes from RDV_FUZZ_EXAMPLES (see `examples`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rdv.audio.v1 import audio_pb2
from rdv.display.v1 import display_pb2
from rdv.input.v1 import input_pb2
from services.common import codec
from services.devices import es1370_regs as AR
from services.devices import svga_regs as SR

Strategy = st.SearchStrategy
SERVICES = {  # every rdv gRPC service, by the name of the process that serves it
    "audio": audio_pb2.DESCRIPTOR.services_by_name["AudioService"],
    "display": display_pb2.DESCRIPTOR.services_by_name["DisplayService"],
    "input": input_pb2.DESCRIPTOR.services_by_name["InputService"],
}
EXTRA = [  # and what each process also serves
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
FD = FieldDescriptor

_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
MAX_DEPTH = 3
MAX_REPEATED = 5
# The statuses an rdv RPC may end with; anything else (UNKNOWN, INTERNAL, UNAVAILABLE) means a bug.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,  # a Subscribe replaced by a newer one for the same vm
}


# ----------------------------------------------------------------------------------------------- run sizes
def examples(ci: int, weight: float = 1.0) -> int:
    """Examples for one test: `ci` in the normal test run; RDV_FUZZ_EXAMPLES * weight in a long (nightly) run."""
    total = os.environ.get("RDV_FUZZ_EXAMPLES")
    return max(ci, int(int(total) * weight)) if total else ci


def fuzz_settings(ci: int, weight: float = 1.0) -> settings:
    """CI runs are derandomized (the same inputs every run: a failure is reproducible, never flaky); a long run
    (RDV_FUZZ_EXAMPLES set) explores new inputs each time."""
    return settings(
        max_examples=examples(ci, weight),
        deadline=None,
        derandomize="RDV_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=list(HealthCheck),
        database=None,
        print_blob=True,
    )


# ----------------------------------------------------------------------------------------------- values
def u32() -> Strategy[int]:
    return st.integers(0, 2**32 - 1)


def blobs(max_small: int = 64, max_large: int = 300_000) -> Strategy[bytes]:
    """Bytes: usually short and drawn byte by byte; sometimes large, grown from a seed."""
    large = st.builds(lambda n, seed: random.Random(seed).randbytes(n), st.integers(0, max_large), st.integers())
    zeros = st.builds(bytes, st.integers(0, max_large))
    return st.one_of(st.binary(max_size=max_small), large, zeros)


def _scalar(field: FieldDescriptor) -> Strategy:
    t = field.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return st.integers(lo, hi)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t == FD.TYPE_FLOAT:
        return st.floats(width=32)
    if t == FD.TYPE_DOUBLE:
        return st.floats()
    if t == FD.TYPE_STRING:
        return st.text(max_size=80)
    if t == FD.TYPE_BYTES:
        return blobs()
    if t == FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field type {t} ({field.full_name})")


def message(descriptor: Descriptor, hints: Mapping[str, Strategy] | None = None, depth: int = 0) -> Strategy[Message]:
    """Random, well-typed instances of `descriptor`'s message class."""
    hints = hints or {}
    cls = message_factory.GetMessageClass(descriptor)

    def value(field: FieldDescriptor) -> Strategy:
        if field.type == FD.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                base: Strategy = st.just(message_factory.GetMessageClass(field.message_type)())
            else:
                base = message(field.message_type, hints, depth + 1)
        else:
            base = _scalar(field)
        hint = hints.get(field.full_name)
        if hint is None:
            return base
        # Plausible values 3 times in 4 (one_of would merge repeated branches, so choose explicitly).
        return st.integers(0, 3).flatmap(lambda pick: base if pick == 0 else hint)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        oneof_fields = {f.full_name for o in descriptor.oneofs for f in o.fields}
        for oneof in descriptor.oneofs:
            choice = draw(st.sampled_from([None, *oneof.fields]))
            if choice is not None:
                _set(msg, choice, draw(value(choice)))
        for field in descriptor.fields:
            if field.full_name in oneof_fields:
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_f, val_f = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
                entries = draw(st.dictionaries(value(key_f), value(val_f), max_size=MAX_REPEATED))
                target = getattr(msg, field.name)
                for k, v in entries.items():
                    if val_f.type == FD.TYPE_MESSAGE:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                hint = hints.get(field.full_name + "[]")  # a hint for the whole list
                items = draw(hint if hint is not None else st.lists(value(field), max_size=MAX_REPEATED))
                target = getattr(msg, field.name)
                for item in items:
                    target.add().CopyFrom(item) if field.type == FD.TYPE_MESSAGE else target.append(item)
            elif field.full_name in hints or draw(st.booleans()):  # hinted fields are always set
                _set(msg, field, draw(value(field)))
        return msg

    return build()


def _set(msg: Message, field: FieldDescriptor, value: object) -> None:
    if field.type == FD.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


# ----------------------------------------------------------------------------------------------- display frames
# Frames for a desktop of at most 80x80: most rectangles land on it, so frames get applied, not only refused.
_small_rect = message(
    display_pb2.Rect.DESCRIPTOR,
    hints={f"rdv.display.v1.Rect.{f}": st.integers(-2, 70) for f in ("x", "y", "width", "height")},
)
FRAME_HINTS: dict[str, Strategy] = {
    "rdv.display.v1.FrameMode.width": st.integers(0, 80),
    "rdv.display.v1.FrameMode.height": st.integers(0, 80),
    "rdv.display.v1.FrameMode.bpp": st.sampled_from([8, 16, 32, 32, 24]),
    "rdv.display.v1.Fill.rect": _small_rect,
    "rdv.display.v1.Copy.dst": _small_rect,
    "rdv.display.v1.Copy.src_x": st.integers(-2, 80),
    "rdv.display.v1.Copy.src_y": st.integers(-2, 80),
    "rdv.display.v1.PixelRect.rect": _small_rect,
    "rdv.display.v1.PixelRect.encoding": st.integers(0, 5),
    "rdv.display.v1.PixelRect.decoded_size": st.integers(0, 80 * 80 * 4),
    "rdv.display.v1.CursorDefine.width": st.integers(0, 300),
    "rdv.display.v1.CursorDefine.height": st.integers(0, 300),
    "rdv.display.v1.PixelRect.payload": st.one_of(
        blobs(max_large=30_000),
        st.builds(lambda enc, n: codec.encode(enc, bytes(n)), st.sampled_from(codec.ENCODINGS),
                  st.integers(0, 80 * 80 * 4)),
        st.builds(lambda w, h, b: codec.encode("image", b.to_bytes(4, "little") * (w * h), w), st.integers(1, 80),
                  st.integers(1, 80), st.integers(0, 2**32 - 1)),
    ),
    "rdv.display.v1.CursorDefine.argb": blobs(max_large=300 * 300 * 4),
}  # fmt: skip
FRAME_HINTS["rdv.display.v1.Frame.mode"] = message(display_pb2.FrameMode.DESCRIPTOR, FRAME_HINTS)
frames = message(display_pb2.Frame.DESCRIPTOR, FRAME_HINTS)


# ----------------------------------------------------------------------------------------------- device traffic
# ES1370: offsets in and just past the 256-byte BAR, sizes legal and not, values with meaning.
es1370_offsets = st.one_of(
    st.sampled_from([0x00, 0x04, 0x08, 0x09, 0x0A, 0x0C, 0x10, 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x3C]),
    st.integers(0, AR.IO_BAR_SIZE + 8),
)
es1370_sizes = st.one_of(st.sampled_from([4, 4, 4, 2, 1]), st.integers(0, 8))
es1370_values = st.one_of(
    u32(),
    st.sampled_from([0, AR.FRAME_PAGE_DAC, AR.FRAME_PAGE_ADC, AR.CTRL_DAC1_EN | AR.CTRL_DAC2_EN, 0xFFFF, 0x100000]),
    st.builds(lambda n: (n << 16) | n, st.integers(0, 0xFFFF)),  # FRAMECNT / SCOUNT shapes
)


@st.composite
def es1370_access(draw: st.DrawFn, legal_only: bool = False) -> tuple[bool, int, int, int]:
    """(write, offset, size, value)."""
    if legal_only:
        size = draw(st.sampled_from([4, 4, 4, 2, 1]))
        offset = draw(st.integers(0, AR.IO_BAR_SIZE // size - 1)) * size
        offset = draw(st.one_of(st.just(offset), es1370_offsets.filter(lambda o: o % size == 0 and o < 256)))
    else:
        size, offset = draw(es1370_sizes), draw(es1370_offsets)
    return draw(st.booleans()), offset, size, draw(es1370_values)


# SVGA II: port accesses are (port, value); most are INDEX (a register) then VALUE.
svga_registers = st.one_of(
    st.integers(0, SR.REG_TOP_IMPLEMENTED + 2),
    st.sampled_from([SR.REG_TRACES, SR.PALETTE_BASE, SR.PALETTE_END - 1, SR.SCRATCH_BASE, SR.SCRATCH_BASE + 63]),
    u32(),
)
svga_values = st.one_of(
    u32(),
    st.sampled_from([0, 1, 8, 16, 24, 32, SR.ID_0, SR.ID_1, SR.ID_2, SR.ENABLE_ENABLE, 0x4000]),
    st.integers(1, 800),  # widths, heights, pitches that fit
)


@st.composite
def svga_port_ops(draw: st.DrawFn) -> list[tuple[str, int, int, int]]:
    """A sequence of ("w" | "r", offset, size, value) port accesses, mostly INDEX/VALUE pairs."""
    ops: list[tuple[str, int, int, int]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["pair", "pair", "pair", "read", "raw"]))
        if kind in ("pair", "read"):
            ops.append(("w", SR.INDEX_PORT, 4, draw(svga_registers)))
            ops.append(("w" if kind == "pair" else "r", SR.VALUE_PORT, 4, draw(svga_values)))
        else:
            ops.append((draw(st.sampled_from("wr")), draw(st.integers(0, SR.IO_BAR_SIZE + 2)),
                        draw(st.sampled_from([1, 2, 4, 3, 0])), draw(u32())))  # fmt: skip
    return ops


_coords = st.integers(0, 4).flatmap(  # mostly inside a small desktop, sometimes just outside, sometimes anywhere
    lambda pick: [st.integers(0, 80), st.integers(0, 80), st.integers(0, 700),
                  st.integers(-5, 5).map(lambda v: v & 0xFFFFFFFF), u32()][pick]
)  # fmt: skip
_small = st.integers(0, 3).flatmap(lambda pick: u32() if pick == 0 else st.integers(0, 40))


@st.composite
def _svga_command(draw: st.DrawFn) -> list[int]:
    """One command as a driver would write it (with random arguments), or something no driver writes."""
    kind = draw(st.sampled_from(["update", "fill", "fill", "copy", "copy", "rop", "fence", "alpha", "mono", "fixed",
                                 "noise"]))  # fmt: skip

    def coords(n: int) -> list[int]:  # 3 in 4: a rectangle on (or overlapping) a small desktop; else anything
        if draw(st.integers(0, 3)):
            return [draw(st.integers(0, 70)) for _ in range(n - 2)] + [draw(st.integers(1, 50)) for _ in range(2)]
        return draw(st.lists(_coords, min_size=n, max_size=n))

    if kind == "update":
        verbose = draw(st.booleans())
        return [SR.CMD_UPDATE_VERBOSE if verbose else SR.CMD_UPDATE, *coords(4), *([draw(u32())] if verbose else [])]
    if kind == "fill":
        return [SR.CMD_RECT_FILL, draw(u32()), *coords(4)]
    if kind == "copy":
        return [SR.CMD_RECT_COPY, *coords(6)]
    if kind == "rop":
        rop = draw(st.sampled_from([SR.ROP_COPY, 0, 0xFF]))
        return [SR.CMD_RECT_ROP_COPY, *coords(6), rop]
    if kind == "fence":
        return [SR.CMD_FENCE, draw(u32())]
    if kind in ("alpha", "mono"):
        w, h = draw(_small), draw(_small)
        if kind == "alpha":
            header = [SR.CMD_DEFINE_ALPHA_CURSOR, draw(u32()), draw(_small), draw(_small), w, h]
            body = (w * h) if w * h <= 1024 else draw(st.integers(0, 64))
        else:
            depth = draw(st.sampled_from([1, 1, 32, 0, 33]))
            header = [SR.CMD_DEFINE_CURSOR, draw(u32()), draw(_small), draw(_small), w, h, depth, depth]
            body = draw(st.integers(0, 128))
        return header + draw(st.lists(u32(), min_size=min(body, 64), max_size=min(body, 64))) + [0] * max(0, body - 64)
    if kind == "fixed":  # any command with a fixed size, arguments anywhere
        cmd = draw(st.sampled_from(sorted(SR.CMD_WORDS)))
        return [cmd, *draw(st.lists(u32(), min_size=SR.CMD_WORDS[cmd] - 1, max_size=SR.CMD_WORDS[cmd] - 1))]
    return draw(st.lists(u32(), min_size=1, max_size=8))  # noise: unknown commands, truncated headers


@st.composite
def svga_fifo_words(draw: st.DrawFn) -> list[int]:
    """Command words for the FIFO: commands with random arguments, unknown commands, raw noise."""
    words: list[int] = []
    for cmd in draw(st.lists(_svga_command(), max_size=8)):
        words += cmd
    return words
