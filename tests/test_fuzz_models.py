"""Fuzzing the pure parts in-process (fast, so the most inputs): the ES1370 and SVGA II models under random
trap sequences and FIFO contents, the codecs and the display's frame checker under hostile payloads.

Invariants: only the documented refusals are raised (AccessError for accesses no card could receive,
FrameError / CodecError for bad frames, ValueError for impossible states); no write lands outside the bytes a
device may write (the models get memoryviews into larger buffers with guard bytes, and every byte they may not
touch is compared); DMA windows stay inside the buffer the guest programmed; state round-trips through its
protobuf form.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from frontend_shim.guests.scripted_svga import FifoWriter
from rdv.audio.v1 import audio_pb2
from rdv.display.v1 import display_pb2
from services.common import codec
from services.common.raster import Rect
from services.devices import es1370_regs as AR
from services.devices import svga_regs as SR
from services.devices.es1370 import AccessError, Es1370, check_access
from services.devices.es1370_convert import state_from_proto, state_to_proto
from services.devices.svga import AccessError as SvgaAccessError
from services.devices.svga import SvgaII
from services.display.desktop import Desktop, FrameError
from tests.fuzz_strategies import (
    FRAME_HINTS,
    blobs,
    es1370_access,
    fuzz_settings,
    message,
    svga_fifo_words,
    svga_port_ops,
    u32,
)

GUARD = 64
U32 = 0xFFFFFFFF

# ----------------------------------------------------------------------------------------------- ES1370
es1370_states = message(
    audio_pb2.Es1370State.DESCRIPTOR,
    hints={
        "rdv.audio.v1.Es1370State.channels[]": st.lists(
            message(audio_pb2.Es1370Channel.DESCRIPTOR, {"rdv.audio.v1.Es1370Channel.leftover": st.integers(0, 3)}),
            min_size=3,
            max_size=3,
        ),  # fmt: skip
        "rdv.audio.v1.Es1370State.mempage": st.integers(0, 15),
        "rdv.audio.v1.Es1370State.uart_control": st.integers(0, 255),
        "rdv.audio.v1.Es1370State.codec_regs[]": st.just([]),
    },
)
es1370_ops = st.lists(
    st.one_of(
        es1370_access().map(lambda a: ("io", *a)),
        st.tuples(st.just("dma"), st.integers(0, 2), st.integers(-4, 70_000), st.integers(0, 10)),
    ),
    max_size=40,
)


@fuzz_settings(ci=300, weight=1.0)
@given(state=es1370_states, ops=es1370_ops)
def test_es1370_model_under_random_traffic(state: audio_pb2.Es1370State, ops: list[tuple]) -> None:
    try:
        model = Es1370(state_from_proto(state))
    except ValueError:  # the documented refusal of an impossible state; the power-on state instead
        model = Es1370()
    for op in ops:
        if op[0] == "io":
            _, write, offset, size, value = op
            legal = _legal_es1370(offset, size)
            try:
                if write:
                    model.write(offset, size, value)
                else:
                    assert 0 <= model.read(offset, size) < (1 << (8 * size))
            except AccessError:
                assert not legal, (offset, size)
            else:
                assert legal, (offset, size)
        else:
            _, channel, room, part = op
            ch = model.state.channels[channel]
            addr, length = model.dma_window(channel, room)
            if length:
                # The window is inside the buffer the guest programmed, and within the room given.
                start = ch.frame_addr + (ch.frame_cnt >> 16) * 4 + ch.leftover
                end_of_buffer = ch.frame_addr + ((ch.frame_cnt & 0xFFFF) + 1) * 4
                assert addr == start & U32 and 0 < length <= max(room, 0) and start + length <= end_of_buffer
                frame = model.channel_format(channel).frame_bytes  # commit part of the window, in whole frames
                model.dma_commit(channel, length * part // 10 // frame * frame or length)
        s = model.state
        assert all(0 <= v <= U32 for v in (s.control, s.status, s.codec, s.serial_control))
        assert all(0 <= getattr(c, f) <= U32 for c in s.channels for f in ("scount", "frame_addr", "frame_cnt"))
        assert 0 <= s.mempage <= 0xF and all(0 <= c.leftover <= 3 for c in s.channels)
    assert state_from_proto(state_to_proto(model.state)) == model.state


def test_a_format_change_inside_a_sample_keeps_dma_windows_consistent() -> None:
    """Found by the fuzzer: a guest that changes the sample format while a DAC runs, after a transfer that ended
    inside a sample, left the position mid-sample. Near the buffer's end the window was then shorter than a
    sample, and the window of that length was empty: `dma_commit` refused the window it had been given (the
    shim's DMA thread died with ValueError: the guest's audio stopped for good), and the service refused the
    same bytes as a diverged mirror (FAILED_PRECONDITION, reconnect, resync, refused again, forever)."""
    model = Es1370()
    for offset, value in [
        (AR.MEMPAGE, AR.FRAME_PAGE_DAC),
        (AR.DAC2_FRAMEADR & 0xFF, 0x1000),
        (AR.DAC2_FRAMECNT & 0xFF, 3),  # a 16-byte buffer
        (AR.DAC2_SCOUNT, 15),
        (AR.SERIAL_CONTROL, 0),  # DAC2 8-bit mono
        (AR.CONTROL, AR.CTRL_DAC2_EN),
    ]:
        model.write(offset, 4, value)
    _, length = model.dma_window(AR.DAC2, 3)
    model.dma_commit(AR.DAC2, length)  # three bytes: the position is inside a dword
    model.write(AR.SERIAL_CONTROL, 4, 3 << AR.SCTRL_SH_P2FMT)  # now 16-bit stereo, still running
    moved = 0
    while moved < 13:  # the rest of the buffer
        _, length = model.dma_window(AR.DAC2, 4)
        assert length and model.dma_window(AR.DAC2, length)[1] == length  # a window's own window is itself
        model.dma_commit(AR.DAC2, length)
        moved += length
    assert moved == 13 and model.position_bytes(AR.DAC2) == 0  # wrapped to the buffer's start


def _legal_es1370(offset: int, size: int) -> bool:
    try:
        check_access(offset, size)
    except AccessError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- SVGA II
VRAM, FIFO = 256 * 1024, 16 * 1024

svga_traffic = st.lists(
    st.one_of(
        svga_port_ops().map(lambda ops: ("ports", ops)),
        st.tuples(st.just("fifo"), st.sampled_from([16, 1024, 4096, None]), svga_fifo_words()),
        st.tuples(st.just("pass"), st.integers(1, 300)),
    ),
    min_size=1,
    max_size=12,
)
svga_setup = st.lists(  # usually nothing: most examples keep the sane mode the test starts with
    st.tuples(st.sampled_from([SR.REG_WIDTH, SR.REG_HEIGHT, SR.REG_BITS_PER_PIXEL, SR.REG_ENABLE,
                               SR.REG_CONFIG_DONE, SR.REG_PITCHLOCK]),
              st.one_of(st.integers(1, 256), st.sampled_from([8, 16, 32]), u32())),
    max_size=8,
).flatmap(lambda regs: st.sampled_from([[], [], regs]))  # fmt: skip


@fuzz_settings(ci=200, weight=0.3)
@given(setup=svga_setup, traffic=svga_traffic)
def test_svga_model_under_random_ports_and_fifo(setup: list[tuple[int, int]], traffic: list[tuple]) -> None:
    vram_backing, fifo_backing = bytearray(b"\xa5" * (VRAM + 2 * GUARD)), bytearray(b"\x5a" * (FIFO + 2 * GUARD))
    vram, fifo = memoryview(vram_backing)[GUARD:-GUARD], memoryview(fifo_backing)[GUARD:-GUARD]
    dev = SvgaII(vram=vram, fifo=fifo, width=64, height=64)
    for index, value in [(SR.REG_WIDTH, 64), (SR.REG_HEIGHT, 48), (SR.REG_ENABLE, 1), *setup]:
        dev.write_register(index, value)
    FifoWriter(fifo, min_offset=1024)
    dev.write_register(SR.REG_CONFIG_DONE, 1)
    for step in traffic:
        if step[0] == "fifo":  # the guest writes FIFO memory (a command batch in a sane or insane layout)
            _, lo, words = step
            if lo is None:
                struct.pack_into("<4I", fifo, 0, *(w & U32 for w in words[:4] + [0] * (4 - len(words[:4]))))
            else:
                writer = FifoWriter(fifo, min_offset=lo)
                writer.write_words(words[: (len(fifo) - lo) // 4 - 2])
            continue
        surface = dev.surface
        fb_end = 0 if surface is None else surface.offset + surface.height * surface.pitch
        lo = min(max(16, struct.unpack_from("<I", fifo, 0)[0]), len(fifo))
        vram_before, fifo_before = bytes(vram[fb_end:]), bytes(fifo[lo:])
        if step[0] == "pass":
            dev.process_fifo(step[1])
        else:
            for rw, offset, size, value in step[1]:
                legal = size in (1, 2, 4) and 0 <= offset and offset + size <= SR.IO_BAR_SIZE
                try:
                    if rw == "w":
                        dev.write(offset, size, value)
                    else:
                        assert 0 <= dev.read(offset, size) < (1 << (8 * size))
                except SvgaAccessError:
                    assert not legal, (offset, size)
            dev.take_pending()
        # The device wrote nothing past the visible framebuffer, nor FIFO memory past MIN (its registers only).
        assert bytes(vram[fb_end:]) == vram_before, "VRAM written outside the framebuffer"
        assert bytes(fifo[lo:]) == fifo_before, "FIFO command area written by the device"
    assert vram_backing[:GUARD] == vram_backing[-GUARD:] == b"\xa5" * GUARD
    assert fifo_backing[:GUARD] == fifo_backing[-GUARD:] == b"\x5a" * GUARD
    assert len(vram_backing) == VRAM + 2 * GUARD and len(fifo_backing) == FIFO + 2 * GUARD
    snap = dev.snapshot()
    again = SvgaII(vram=VRAM, fifo=FIFO)
    again.restore(snap)
    assert again.snapshot() == snap


# ----------------------------------------------------------------------------------------------- codecs
payload_kinds = st.one_of(
    blobs(),
    st.builds(lambda enc, data: codec.encode(enc, data), st.sampled_from(codec.ENCODINGS), blobs(max_large=65536)),
    # `image` with a width: its palette and planes methods (whole 32-bit rows; the expected size is drawn apart)
    st.builds(lambda w, rows, data: codec.encode("image", (data * (w * rows * 4))[: w * rows * 4], w),
              st.integers(1, 300), st.integers(1, 60), st.binary(min_size=1, max_size=64)),
)


@fuzz_settings(ci=200, weight=1.0)
@given(
    encoding=st.one_of(st.sampled_from(codec.ENCODINGS), st.text(max_size=8)),
    payload=payload_kinds,
    expected=st.one_of(st.integers(0, 70_000), st.integers(-5, codec.MAX_DECODED_SIZE + 5)),
)
def test_codecs_decode_exactly_or_refuse(encoding: str, payload: bytes, expected: int) -> None:
    try:
        out = codec.decode(encoding, payload, expected)
    except codec.CodecError:
        return
    assert len(out) == expected


def test_decompression_bombs_are_refused_cheaply() -> None:
    """A payload that would decode to far more than the rectangle is refused without being expanded."""
    import resource
    import time

    for encoding in ("lzo", "lz4", "zstd", "image"):
        bomb = codec.encode(encoding, bytes(64 << 20), 4096)  # 64 MiB of zeros: a few hundred KiB or less
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        for claimed in (4096, 1 << 20):
            try:
                codec.decode(encoding, bomb, claimed)
            except codec.CodecError:
                pass
            else:
                raise AssertionError(f"{encoding} bomb decoded")
        grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grew_mib < 16 and time.perf_counter() - started < 1.0, (encoding, grew_mib)


# ----------------------------------------------------------------------------------------------- frames
frames = message(display_pb2.Frame.DESCRIPTOR, FRAME_HINTS)


@fuzz_settings(ci=150, weight=0.2)
@given(sequence=st.lists(frames, min_size=1, max_size=6))
def test_desktop_checks_every_frame_before_applying(sequence: list[display_pb2.Frame]) -> None:
    desktop = Desktop(max_frame_bytes=1 << 20)
    for frame in sequence:
        before = (desktop.mode, bytes(desktop.pixels))
        try:
            prep = desktop.prepare(frame)
        except FrameError:
            assert (desktop.mode, bytes(desktop.pixels)) == before  # refused whole: nothing changed
            continue
        damage, _ = desktop.apply(prep)
        m = desktop.mode
        assert len(desktop.pixels) == m.width * m.height * m.bytes_per_pixel  # never resized by an operation
        assert Rect(0, 0, m.width, m.height).contains(damage) or damage.empty
