"""`replay-frames`: screen updates from a file, replayed by a scripted SVGA guest through the shim, measured.

The display twin of `replay`: anyone can measure rdv on their own content. Each input line is one guest step
on a width x height x 32 desktop (800x600 unless --width/--height):
  {"op": "put", "x": X, "y": Y, "w": W, "h": H, "bgrx": "<base64 of W*H*4 bytes>"}   pixels into VRAM, silently
  {"op": "update", "x": X, "y": Y, "w": W, "h": H}                  SVGA_CMD_UPDATE, then SYNC
  {"op": "copy", "sx": SX, "sy": SY, "x": X, "y": Y, "w": W, "h": H}  SVGA_CMD_RECT_COPY, then SYNC
Blank lines are skipped. Every `update` and `copy` waits until the service has presented it and gives one
record: `bytes_to_service` (the stream's bytes on the socket for that step, HTTP/2 framing included, as the
kernel counts them on the shim's TCP connection: `TCP_INFO`), `latency_ms` (SYNC to presented, on the service's
clock when it is on this host, else until the acknowledgement is back), the pixel payload and encodings. At the
end the service's picture is compared with the guest's framebuffer pixel for pixel (`verified`).

Exit status: 0 verified, 1 no service, 2 bad input (the message names the line), 3 the pictures differ.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from frontend_shim.commands import options
from frontend_shim.guests.scripted_svga import VRAM_SIZE, GuestError, ScriptedSvgaDriver, new_memory
from frontend_shim.links.display import ENCODINGS, DisplayLink
from frontend_shim.links.socket_bytes import SocketBytes
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import raster
from services.common.png import bgrx_to_rgb, decode
from services.common.raster import Rect

EXIT_NO_SERVICE, EXIT_BAD_INPUT, EXIT_MISMATCH = 1, 2, 3
GAP_MS = 1000 / 60 + 1
_FIELDS = {"put": ("x", "y", "w", "h"), "update": ("x", "y", "w", "h"), "copy": ("sx", "sy", "x", "y", "w", "h")}


class InputError(ValueError):
    """A line of the input file that is not a step (the message names the line)."""


@dataclass(frozen=True)
class Step:
    line: int
    op: str
    rect: Rect
    src: tuple[int, int] = (0, 0)
    bgrx: bytes = b""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay-frames",
        help="replay screen updates from a JSONL file through a remote display and measure bytes and latency",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", required=True, metavar="FILE.jsonl", help="the guest's steps, one JSON object a line")
    p.add_argument(
        "--display",
        default=os.environ.get("RDV_DISPLAY", options.DEFAULT_DISPLAY),
        help=f"display service HOST:PORT (default $RDV_DISPLAY or {options.DEFAULT_DISPLAY})",
    )
    p.add_argument("--encoding", choices=ENCODINGS, default="auto", help="pixel encoding (auto: per rectangle)")
    p.add_argument("--tile-diff", action="store_true", help="send only tiles that differ from what the service has")
    p.add_argument("--width", type=int, default=800, help="desktop width (default 800)")
    p.add_argument("--height", type=int, default=600, help="desktop height (default 600)")
    p.add_argument("--timeout", type=float, default=30.0, help="longest wait for one step to be presented (s)")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=GAP_MS,
        help=f"least time from one presented step to the next SYNC (default {GAP_MS}: the service presents at "
        "most 60 times a second, and a step must not wait for its next refresh)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=run)


# ----------------------------------------------------------------------------------------------- input
def parse_steps(lines: list[str], width: int, height: int) -> list[Step]:
    """Check every line before anything is sent; InputError names the first bad one."""
    desktop = Rect(0, 0, width, height)
    steps = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            steps.append(_step(number, text, desktop))
        except InputError as exc:
            raise InputError(f"line {number}: {exc}") from None
    return steps


def _step(number: int, text: str, desktop: Rect) -> Step:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise InputError("not a JSON object")
    op = obj.get("op")
    if op not in _FIELDS:
        raise InputError(f"op must be one of {', '.join(_FIELDS)}, not {op!r}")
    values = {}
    for name in _FIELDS[op]:
        v = obj.get(name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{op}: {name} must be an integer, not {v!r}")
        values[name] = v
    rect = Rect(values["x"], values["y"], values["w"], values["h"])
    where = f"{rect.w}x{rect.h}+{rect.x}+{rect.y}"
    if rect.w <= 0 or rect.h <= 0 or not desktop.contains(rect):
        raise InputError(f"{op}: rectangle {where} is empty or outside the {desktop.w}x{desktop.h} desktop")
    if op == "copy":
        src = Rect(values["sx"], values["sy"], rect.w, rect.h)
        if not desktop.contains(src):
            raise InputError(f"copy: source {rect.w}x{rect.h}+{src.x}+{src.y} is outside the desktop")
        return Step(number, op, rect, (src.x, src.y))
    if op == "put":
        data = obj.get("bgrx")
        if not isinstance(data, str):
            raise InputError("put: bgrx must be a base64 string")
        try:
            pixels = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("put: bgrx is not valid base64") from None
        if len(pixels) != rect.area * 4:
            raise InputError(f"put: bgrx has {len(pixels)} bytes, {where} needs {rect.area * 4}")
        return Step(number, op, rect, bgrx=pixels)
    return Step(number, op, rect)


# ----------------------------------------------------------------------------------------------- replay
def replay(
    steps: list[Step],
    display: str,
    *,
    encoding: str = "auto",
    tile_diff: bool = False,
    width: int = 800,
    height: int = 600,
    timeout: float = 30.0,
    gap_ms: float = GAP_MS,
) -> dict:
    """Replay `steps` through a DisplayLink to `display` (ConnectionError if it cannot be reached)."""
    wire = SocketBytes(display)
    vram, fifo = new_memory(vram_size=max(VRAM_SIZE, width * height * 4))
    link = DisplayLink([display], "mirrored", vram, fifo, vm="replay-frames", encoding=encoding,
                       tile_diff=tile_diff, refresh_period=0)  # fmt: skip
    try:
        link.start()
        driver = ScriptedSvgaDriver(link, vram, fifo)
        driver.probe()
        driver.set_mode(width, height)
        driver.init_fifo()
        if not link.flush(timeout):
            raise ConnectionError(f"{display} did not present the first frame in {timeout} s")
        records = []
        for step in steps:
            record = _run_step(step, driver, link, wire, timeout, gap_ms / 1000)
            if record:  # `put` steps give none
                records.append(record)
        verified, differing = _verify(display, link, driver)
    finally:
        link.close(drain=False)
    s = link.stats
    return {
        "records": records,
        "verified": verified,
        "differing_pixels": differing,
        "width": width,
        "height": height,
        "encoding": encoding,
        "tile_diff": tile_diff,
        "steps": len(steps),
        "bytes_to_service": sum(r["bytes_to_service"] for r in records),
        "encode_ms": round(s.encode_ns / 1e6, 3),
        "tile_diff_rests": s.tile_diff_rests,
    }


def _run_step(
    step: Step, driver: ScriptedSvgaDriver, link: DisplayLink, wire: SocketBytes, timeout: float, gap: float
) -> dict:
    if step.op == "put":
        driver.put_pixels(step.rect, step.bgrx)
        return {}
    wait = link.last_presented_ns / 1e9 + gap - time.monotonic()  # same host; else at most `gap`
    if wait > 0:
        time.sleep(min(wait, gap))
    s = link.stats
    sent0, payload0, pixels0, encodings0 = wire.counts()[0], s.payload_bytes, s.pixel_bytes, Counter(s.encodings)
    r = step.rect
    if step.op == "update":
        driver.update(r)
    else:
        driver.copy(step.src[0], step.src[1], r.x, r.y, r.w, r.h)
    t0 = time.monotonic_ns()
    driver.sync()
    if not link.flush(timeout):
        raise ConnectionError(f"line {step.line}: not presented within {timeout} s")
    done = time.monotonic_ns()
    presented = link.last_presented_ns
    same_clock = t0 <= presented <= done  # the service runs on this host: its CLOCK_MONOTONIC is ours
    latency = (presented if same_clock else done) - t0
    return {
        "line": step.line,
        "op": step.op,
        "x": r.x,
        "y": r.y,
        "w": r.w,
        "h": r.h,
        "bytes_to_service": wire.counts()[0] - sent0,
        "latency_ms": round(latency / 1e6, 3),
        "latency_clock": "service" if same_clock else "shim",
        "payload_bytes": s.payload_bytes - payload0,
        "pixel_bytes": s.pixel_bytes - pixels0,
        "encodings": dict(Counter(s.encodings) - encodings0),
    }


def _verify(display: str, link: DisplayLink, driver: ScriptedSvgaDriver) -> tuple[bool, int]:
    conn = link.slots[0].conn
    session = conn.session_id if conn is not None else ""
    with grpc.insecure_channel(display) as ch:
        reply = display_pb2_grpc.DisplayServiceStub(ch).Screenshot(
            display_pb2.ScreenshotRequest(session_id=session), timeout=30
        )
    w, h, rgb = decode(reply.png)
    guest = bytes(bgrx_to_rgb(raster.read_rect(driver.vram, driver.surface, Rect(0, 0, driver.width, driver.height))))
    if (w, h) != (driver.width, driver.height) or len(rgb) != len(guest):
        return False, driver.width * driver.height
    differing = sum(rgb[i : i + 3] != guest[i : i + 3] for i in range(0, len(rgb), 3)) if rgb != guest else 0
    return differing == 0, differing


# ----------------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    if not (1 <= args.width <= 8192 and 1 <= args.height <= 8192):
        print("error: --width and --height must be 1..8192", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with open(args.input, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read --input {args.input}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        steps = parse_steps(lines, args.width, args.height)
    except InputError as exc:
        print(f"error: {args.input} {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = replay(steps, args.display, encoding=args.encoding, tile_diff=args.tile_diff, width=args.width,
                        height=args.height, timeout=args.timeout, gap_ms=args.gap_ms)  # fmt: skip
    except (ConnectionError, GuestError, ValueError, grpc.RpcError) as exc:
        print(f"error: {exc} (is `python -m services.display` running at {args.display}?)", file=sys.stderr)
        return EXIT_NO_SERVICE
    if args.json:
        print(json.dumps(report))
    else:
        for r in report["records"]:
            print(f"line {r['line']:5} {r['op']:6} {r['w']}x{r['h']}+{r['x']}+{r['y']}: {r['bytes_to_service']} B "
                  f"to the service, {r['latency_ms']:.2f} ms ({', '.join(r['encodings']) or 'command'})")  # fmt: skip
        print(f"{len(report['records'])} updates, {report['bytes_to_service']} B to the service; "
              f"pictures {'equal' if report['verified'] else 'DIFFER'}")  # fmt: skip
    return 0 if report["verified"] else EXIT_MISMATCH
