"""SVGA II refresh cost, the paper's Table 3: time from the guest's UPDATE to the rectangle being presented at
the display service, divided by the rectangle's area (ns per pixel).

Each sample: the scripted guest redraws a window-sized rectangle in VRAM (pre-made content, so drawing is not
timed), then the clock starts, it queues UPDATE and SYNCs (the FIFO pass, cutting from VRAM, encoding, the
stream, decoding, the desktop copy, SDL's texture upload and present all count), and it stops at the
`presented` time the service reports in its acknowledgement (CLOCK_MONOTONIC, same host). Samples are spaced
one refresh interval apart so the service's frame pacing never adds a wait: this is the latency of one
refresh, as in the paper, not throughput.

- mode: the encoding (`+tiles` with tile diff), or `local`: the same SVGA model and SDL presenter in one
  process with no network (the paper's local card).
- content: `desktop` (flat regions, title bars, text) or `photo` (gradients + noise, high entropy). Four
  variants of each alternate so every refresh really changes pixels.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from frontend_shim.commands.processes import start_service
from frontend_shim.guests.scripted_svga import CELL_H, CELL_W, ScriptedSvgaDriver, new_memory
from frontend_shim.links.display import DisplayLink
from services.common import raster
from services.common.raster import Rect
from services.devices.svga import SvgaII
from services.display.desktop import Desktop, DesktopMode, Prepared, _Op
from services.display.presenters import RenderJob
from services.display.presenters.sdl import SdlPresenter
from tests.bench.netlinks import Link
from tests.bench.stats import record, resource_usage

DESKTOP = (1024, 768)
WINDOW = Rect(192, 144, 640, 480)  # the refreshed area: a window of 307,200 pixels
# The paper's Table 3 (ns per pixel): its 100 Mb figures stand beside loopback too.
PAPER_100 = {"lzo": 1123.0, "raw": 1483.0, "local": 270.0}
PAPER = {"loopback": PAPER_100, "100mbit": PAPER_100, "1gbit": {"lzo": 767.0, "raw": 839.0, "local": 266.0}}
REFRESH_GAP = 1 / 60 + 0.001  # keeps the service's pacing out of the measurement
CONFIGS = ("raw", "lzo", "lz4", "zstd", "image", "auto", "lz4+tiles", "auto+tiles")


_MADE: dict[str, list[bytes]] = {}


def _contents(driver: ScriptedSvgaDriver, kind: str, n: int = 4) -> list[bytes]:
    """`n` variants of window content: packed XRGB rows of WINDOW's size (made once per run)."""
    if kind not in _MADE:
        _MADE[kind] = _make_contents(driver, kind, n)
    return _MADE[kind]


def _make_contents(driver: ScriptedSvgaDriver, kind: str, n: int) -> list[bytes]:
    w, h = WINDOW.w, WINDOW.h
    out = []
    rng = random.Random(7)
    for i in range(n):
        if kind == "photo":
            base = bytearray(driver.photo(w, h))
            noise = rng.randbytes(len(base) // 4)
            base[i % 3 :: 4] = bytes((a ^ (b & 0x0F)) for a, b in zip(base[i % 3 :: 4], noise, strict=True))
            out.append(bytes(base))
            continue
        # desktop: white page, coloured title bar, lines of text-like glyphs that differ per variant
        saved = raster.read_rect(driver.vram, driver.surface, WINDOW)
        driver.put_pixels(WINDOW, b"\xf0\xf0\xf0\x00" * (w * h))
        driver.put_pixels(Rect(WINDOW.x, WINDOW.y, w, 20), b"\x97\x57\x2b\x00" * (w * 20))
        line = "".join(chr(33 + (rng.randrange(94))) if rng.random() > 0.2 else " " for _ in range(w // CELL_W))
        for row in range(1, (h - 24) // CELL_H):
            shift = (row * 7 + i * 13) % len(line)
            text = line[shift:] + line[:shift]
            driver.draw_text(WINDOW.x + 4, WINDOW.y + 24 + row * CELL_H, text, 0x101010, 0xF0F0F0)
        out.append(raster.read_rect(driver.vram, driver.surface, WINDOW))
        driver.put_pixels(WINDOW, saved)
    return out


def _measure_remote(address: str, config: str, kind: str, n: int, link_name: str = "loopback") -> dict:
    encoding, _, tiles = config.partition("+")
    vram, fifo = new_memory()
    link = DisplayLink([address], "mirrored", vram, fifo, encoding=encoding, tile_diff=bool(tiles), refresh_period=0)
    link.start()
    driver = ScriptedSvgaDriver(link, vram, fifo)
    driver.probe()
    driver.set_mode(*DESKTOP)
    driver.init_fifo()
    driver.desktop(photo=False)
    link.flush(10)
    variants = _contents(driver, kind)
    area = WINDOW.area
    samples = []
    payload0, pixels0 = link.stats.payload_bytes, link.stats.pixel_bytes
    frames0, encode0 = link.stats.frames, link.stats.encode_ns
    for i in range(n + 3):
        driver.put_pixels(WINDOW, variants[i % len(variants)])
        t0 = time.monotonic_ns()
        driver.update(WINDOW)
        driver.sync()
        link.flush(10)
        if i >= 3:  # the first refreshes warm up codecs, the auto policy's estimates and SDL's texture
            samples.append((link.last_presented_ns - t0) / area)
        else:
            payload0, pixels0, frames0 = link.stats.payload_bytes, link.stats.pixel_bytes, link.stats.frames
            encode0 = link.stats.encode_ns
        wait = link.last_presented_ns / 1e9 + REFRESH_GAP - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    s = link.stats
    payload, pixels, frames = s.payload_bytes - payload0, s.pixel_bytes - pixels0, s.frames - frames0
    link.close()
    return record(
        "display_refresh_ns_per_px",
        config,
        samples,
        PAPER[link_name].get(config),
        link=link_name,
        content=kind,
        window=f"{WINDOW.w}x{WINDOW.h}",
        bytes_per_frame=round(payload / max(1, frames)),
        compression_ratio=round(pixels / payload, 2) if payload else None,
        encodings=dict(s.encodings),
        encode_ms_per_mpx=round((s.encode_ns - encode0) / 1e6 / max(1e-9, pixels / 4 / 1e6), 2),
    )


def _measure_local(kind: str, n: int) -> dict:
    """The same refresh without a network: model, cut from VRAM, desktop copy, SDL present, one process."""
    vram, fifo = new_memory()
    dev = SvgaII(vram=vram, fifo=fifo)
    direct = _Direct(dev)
    driver = ScriptedSvgaDriver(direct, vram, fifo)
    driver.probe()
    driver.set_mode(*DESKTOP)
    driver.init_fifo()
    os.environ.pop("DISPLAY", None)
    presenter = SdlPresenter(headless=True)
    presenter.open()
    desktop = Desktop()
    w, h = DESKTOP
    mode = DesktopMode(w, h, 32, w * 4)
    view = Rect(0, 0, w, h)
    desktop.apply(Prepared(mode, [], None, None))
    variants = _contents(driver, kind)
    samples = []
    try:
        for i in range(n + 3):
            driver.put_pixels(WINDOW, variants[i % len(variants)])
            t0 = time.monotonic_ns()
            driver.update(WINDOW)
            driver.sync()
            ops = []
            effects, direct.effects = direct.effects, []
            for e in effects:
                rect = getattr(e, "rect", None)
                if rect is not None:
                    ops.append(_Op("pixels", rect, data=raster.read_rect(vram, dev.surface, rect)))
            desktop.apply(Prepared(mode, ops, None, None))
            presenter.render(RenderJob(desktop, view, WINDOW, False, None, b"", "local"))
            if i >= 3:
                samples.append((time.monotonic_ns() - t0) / WINDOW.area)
    finally:
        presenter.close()
    return record("display_refresh_ns_per_px", "local", samples, PAPER_100["local"], link="none", content=kind,
                  window=f"{WINDOW.w}x{WINDOW.h}", bytes_per_frame=0, compression_ratio=None)  # fmt: skip


class _Direct:
    """The model as a Device for the scripted guest (what QEMU's own card is to its guest)."""

    def __init__(self, dev: SvgaII) -> None:
        self.dev = dev
        self.effects: list[object] = []

    def io_read(self, bar: int, offset: int, size: int) -> int:
        value = self.dev.read(offset, size)
        self.effects += self.dev.take_pending().effects
        return value

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.effects += self.dev.write(offset, size, value).effects


def run(quick: bool, workdir: Path, link: Link | None = None) -> list[dict]:
    link = link or Link("loopback", "127.0.0.1", None)
    results = []
    if link.name == "loopback":
        n, configs, kinds = (25 if quick else 300), CONFIGS, ("desktop", "photo")
        results += [_measure_local(kind, n) for kind in kinds]
    else:  # shaped links: fewer, slower samples (a raw refresh is ~0.1 s at 100 Mb/s)
        n, configs = (8 if quick else 60), ("raw", "lzo", "image", "auto")
        kinds = ("desktop",) if quick else ("desktop", "photo")
    svc = start_service(  # SDL's dummy driver: its texture upload counts, as in every run before
        "display", workdir / "logs", "--presenter", "sdl", "--headless",
        listen=f"{link.remote_host}:0", prefix=link.prefix, env=link.env,
    )  # fmt: skip
    try:
        with resource_usage("display refresh, every encoding", link.name, {"display service": svc.proc.pid}) as usage:
            for kind in kinds:
                for config in configs:
                    r = _measure_remote(svc.address, config, kind, n, link.name)
                    r["wire_ns_per_px"] = link.wire_ns_per_px()
                    results.append(r)
        results += usage
    finally:
        svc.stop()
    return results


if __name__ == "__main__":
    import json

    for r in run(os.environ.get("BENCH_QUICK") == "1", Path("build/bench")):
        print(json.dumps({k: v for k, v in r.items() if k != "samples"}))
