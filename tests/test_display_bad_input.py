"""A display service facing a broken or hostile shim: every bad frame ends that session with a clear status,
nothing is written out of bounds, and the service goes on serving its other sessions."""

from __future__ import annotations

import struct
import threading

import grpc
import lz4.block
import pytest
import zstandard

from frontend_shim.links.display import DisplayLink
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import codec
from services.devices import svga_regs as R
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.helpers import start_service

DW, DH = 64, 48
MODE = display_pb2.FrameMode(width=DW, height=DH, bpp=32, pitch=DW * 4, enabled=True)
OPEN = display_pb2.FrontendMessage(open=display_pb2.Open(vm="hostile", mode=common_pb2.COHERENCE_MODE_MIRRORED))


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory):
    svc = start_service("display", tmp_path_factory.mktemp("display"), "--headless")
    yield svc
    svc.stop()


def rect(x: int, y: int, w: int, h: int) -> display_pb2.Rect:
    return display_pb2.Rect(x=x, y=y, width=w, height=h)


def pixels(r: display_pb2.Rect, encoding: int, payload: bytes, size: int | None = None) -> display_pb2.DisplayUpdate:
    size = r.width * r.height * 4 if size is None else size
    return display_pb2.DisplayUpdate(
        pixels=display_pb2.PixelRect(rect=r, encoding=encoding, payload=payload, decoded_size=size)
    )


def frame(*updates: display_pb2.DisplayUpdate, frame_id: int = 1, mode=MODE) -> display_pb2.FrontendMessage:  # noqa: ANN001
    return display_pb2.FrontendMessage(frame=display_pb2.Frame(frame_id=frame_id, mode=mode, updates=list(updates)))


def run_session(address: str, *messages: display_pb2.FrontendMessage) -> tuple[grpc.StatusCode, str, list]:
    with grpc.insecure_channel(address) as ch:
        replies = []
        try:
            for reply in display_pb2_grpc.DisplayServiceStub(ch).Session(iter(messages), timeout=10):
                replies.append(reply)
        except grpc.RpcError as exc:
            return exc.code(), exc.details(), replies
    return grpc.StatusCode.OK, "", replies


zeros64 = bytes(DW * DH * 4)
LZ4_BOMB = lz4.block.compress(bytes(2**20), store_size=False)  # 4 KiB that would decode to 1 MiB
BAD = {
    "no open first": ((frame(),), grpc.StatusCode.INVALID_ARGUMENT, "starts with an `open`"),
    "rect outside": (
        (OPEN, frame(pixels(rect(60, 0, 10, 10), display_pb2.ENCODING_RAW, bytes(400)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the 64x48 desktop",
    ),
    "negative rect": (
        (OPEN, frame(display_pb2.DisplayUpdate(fill=display_pb2.Fill(rect=rect(-5, 0, 10, 10))))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the 64x48 desktop",
    ),
    "decoded size lies": (
        (OPEN, frame(pixels(rect(0, 0, 8, 8), display_pb2.ENCODING_RAW, bytes(256), size=512))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "decoded_size 512",
    ),
    "zstd bomb": (
        (OPEN, frame(pixels(rect(0, 0, DW, DH), display_pb2.ENCODING_ZSTD,
                            zstandard.ZstdCompressor().compress(bytes(100 * 2**20))))),  # fmt: skip
        grpc.StatusCode.INVALID_ARGUMENT,
        "declares 104857600 bytes",
    ),
    "lz4 bomb": (
        (OPEN, frame(pixels(rect(0, 0, DW, DH), display_pb2.ENCODING_LZ4, LZ4_BOMB))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "lz4",
    ),
    "truncated lzo": (
        (OPEN, frame(pixels(rect(0, 0, DW, DH), display_pb2.ENCODING_LZO, codec.encode("lzo", zeros64)[:-3]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "lzo",
    ),
    "truncated zstd": (
        (OPEN, frame(pixels(rect(0, 0, DW, DH), display_pb2.ENCODING_ZSTD, codec.encode("zstd", zeros64)[:-2]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "truncated",
    ),
    "raw payload short": (
        (OPEN, frame(pixels(rect(0, 0, 8, 8), display_pb2.ENCODING_RAW, bytes(255)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "payload has 255 bytes, expected 256",
    ),
    "unknown encoding": (
        (OPEN, frame(pixels(rect(0, 0, 8, 8), 99, bytes(256)))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown encoding 99",
    ),
    "huge mode": (
        (OPEN, frame(mode=display_pb2.FrameMode(width=100_000, height=100_000, bpp=32))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside 1..8192",
    ),
    "odd bpp": (
        (OPEN, frame(mode=display_pb2.FrameMode(width=10, height=10, bpp=24))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "24 bits per pixel",
    ),
    "frame decodes to too much": (
        (OPEN, frame(
            *[pixels(rect(0, 0, 4096, 4096), display_pb2.ENCODING_ZSTD, codec.encode("zstd", bytes(4096 * 4096 * 4)))
              for _ in range(5)],
            mode=display_pb2.FrameMode(width=4096, height=4096, bpp=32))),  # fmt: skip
        grpc.StatusCode.INVALID_ARGUMENT,
        "split it into frames",
    ),
    "copy from outside": (
        (OPEN, frame(display_pb2.DisplayUpdate(copy=display_pb2.Copy(src_x=60, src_y=40, dst=rect(0, 0, 10, 10))))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "source",
    ),
    "giant cursor": (
        (OPEN, frame(display_pb2.DisplayUpdate(
            cursor_define=display_pb2.CursorDefine(width=1000, height=1000, argb=b"")))),  # fmt: skip
        grpc.StatusCode.INVALID_ARGUMENT,
        "cursor 1000x1000",
    ),
    "frame ids go back": (
        (OPEN, frame(frame_id=5), frame(frame_id=5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must increase",
    ),
    "bad registers in open": (
        (display_pb2.FrontendMessage(open=display_pb2.Open(
            mode=common_pb2.COHERENCE_MODE_BACKEND,
            registers=display_pb2.SvgaRegisters(svga_id=R.ID_2, bpp=7, width=10, height=10))),),  # fmt: skip
        grpc.StatusCode.INVALID_ARGUMENT,
        "bits per pixel 7",
    ),
    "register access outside BAR0": (
        (OPEN, display_pb2.FrontendMessage(access=common_pb2.RegisterAccess(offset=15, size=4))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the 16-byte BAR0",
    ),
    "batched write outside BAR0": (
        (OPEN, display_pb2.FrontendMessage(writes=common_pb2.RegisterWrites(pairs=[R.INDEX_PORT, R.REG_ID, 15, 0]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the 16-byte BAR0",
    ),
    "batch of writes without their values": (
        (OPEN, display_pb2.FrontendMessage(writes=common_pb2.RegisterWrites(pairs=[R.INDEX_PORT]))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "offset-value pairs",
    ),
    "open twice": ((OPEN, OPEN), grpc.StatusCode.FAILED_PRECONDITION, "already open"),
}


def test_bad_frames_get_clear_statuses_and_others_keep_working(display) -> None:
    driver, link = start_guest([display.address], "mirrored", "lz4")
    try:
        for name, (messages, code, text) in BAD.items():
            got, details, _ = run_session(display.address, *messages)
            assert got == code, f"{name}: {got} {details}"
            assert text in details, f"{name}: {details!r}"
            # The good session is unharmed after every refusal: it keeps drawing and its picture stays exact.
            driver.run(seconds=30, fps=0, max_ticks=1)
            driver.sync()
            assert link.flush(10), name
        w, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
        assert link.connected and link.stats.reconnects == 0
    finally:
        link.close()


def test_a_refused_frame_changes_nothing(display) -> None:
    """A frame is checked whole before any of it is applied: its good fill must not land either."""

    def fill(color: int) -> display_pb2.DisplayUpdate:
        return display_pb2.DisplayUpdate(fill=display_pb2.Fill(rect=rect(0, 0, DW, DH), color=color))

    acked = threading.Event()

    def messages():  # noqa: ANN202
        yield OPEN
        yield frame(fill(0x123456))
        acked.wait(5)  # the good frame is applied and presented before the bad one arrives
        yield frame(fill(0xFFFFFF), pixels(rect(0, 0, 8, 8), display_pb2.ENCODING_ZSTD, b"\x28\xb5\x2f\xfdjunk"),
                    frame_id=2)  # fmt: skip

    with grpc.insecure_channel(display.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            for reply in display_pb2_grpc.DisplayServiceStub(ch).Session(messages(), timeout=10):
                if reply.WhichOneof("kind") == "frame_ack":
                    acked.set()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, _, rgb, _ = screenshot(display.address)  # the closed session's picture stays on screen
    assert rgb == bytes((0x12, 0x34, 0x56)) * (DW * DH)


def test_malformed_fifo_contents_are_survived(display) -> None:
    driver, link = start_guest([display.address], "backend", "raw")
    try:
        lo = driver.writer.lo
        words = [0xDEAD, 1, 2, 3, R.CMD_RECT_FILL, 0xFF, 10**9, 10**9, 5, 5, R.CMD_UPDATE, 0, 0, 0xFFFFFFFF, 3]
        driver.writer.write_words(words)
        driver.sync()  # unknown command: the device skips to NEXT_CMD and says so
        struct.pack_into("<I", driver.fifo, 0, 3)  # MIN not aligned, overlapping the registers
        driver.write_reg(R.REG_SYNC, 1)
        struct.pack_into("<I", driver.fifo, 0, lo)
        driver.writer.fifo[lo : lo + 4] = b"\x00\x00\x00\x00"
        driver.run(seconds=30, fps=0, max_ticks=5)
        driver.sync()
        assert link.flush(10)
        assert link.stats.fifo_errors >= 2
        w, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), w)
    finally:
        link.close()


def test_link_refuses_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="encoding"):
        DisplayLink(["127.0.0.1:1"], "mirrored", bytearray(4096), bytearray(4096), encoding="png")
