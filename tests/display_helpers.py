"""Shared by the display tests: a scripted guest drawing through a real DisplayLink, and screenshots."""

from __future__ import annotations

import grpc

from frontend_shim.guests.scripted_svga import ScriptedSvgaDriver, new_memory
from frontend_shim.links.display import DisplayLink
from frontend_shim.links.video_streams import VideoSettings
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import raster
from services.common.png import bgrx_to_rgb, decode
from services.common.raster import Rect

W, H = 640, 480


def start_guest(
    targets: list[str],
    mode: str = "mirrored",
    encoding: str = "auto",
    tile_diff: bool = False,
    fifo_size: int = 6144,
    partial_every: int = 0,
    width: int = W,
    height: int = H,
    video: VideoSettings | None = None,
    photo: bool = True,
    vm: str = "vm",
    seed: int = 1,
) -> tuple[ScriptedSvgaDriver, DisplayLink]:
    """A guest whose desktop is drawn and shown (nothing animated yet)."""
    vram, fifo = new_memory(fifo_size=fifo_size)
    link = DisplayLink(targets, mode, vram, fifo, encoding=encoding, tile_diff=tile_diff, access_timeout=2.0,
                       video=video, vm=vm)  # fmt: skip
    link.start()
    driver = ScriptedSvgaDriver(link, vram, fifo, partial_every=partial_every, seed=seed)
    driver.probe()
    driver.set_mode(width, height)
    driver.init_fifo()
    driver.desktop(photo=photo)
    return driver, link


def screenshot(
    address: str, session_id: str = "", vm: str = ""
) -> tuple[int, int, bytes, display_pb2.ScreenshotReply]:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        reply = display_pb2_grpc.DisplayServiceStub(ch).Screenshot(
            display_pb2.ScreenshotRequest(session_id=session_id, vm=vm), timeout=10
        )
    w, h, rgb = decode(reply.png)
    return w, h, rgb, reply


def guest_rgb(driver: ScriptedSvgaDriver, view: Rect | None = None) -> bytes:
    """The guest's framebuffer (or part of it) as packed RGB, what a screenshot must equal."""
    view = view or Rect(0, 0, driver.width, driver.height)
    return bytes(bgrx_to_rgb(raster.read_rect(driver.vram, driver.surface, view)))


def first_difference(a: bytes, b: bytes, width: int) -> str:
    if len(a) != len(b):
        return f"sizes differ: {len(a)} vs {len(b)}"
    bad = [i // 3 for i in range(0, len(a), 3) if a[i : i + 3] != b[i : i + 3]]
    if not bad:
        return "equal"
    xs, ys = [p % width for p in bad], [p // width for p in bad]
    return f"{len(bad)} pixels differ within x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}"
