"""`python -m services.input`: the remote node's mouse and keyboard, delivered to the focused VM's shim."""

from __future__ import annotations

import argparse
import asyncio
import os
import textwrap

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import server
from services.input.evdev import Desktop, EvdevReader
from services.input.hub import FOCUS_RULE, Hub
from services.input.service import InputServicer

DEFAULT_PORT = 50053


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = server.parser(
        "input",
        DEFAULT_PORT,
        "Remote input hub. Sources publish mouse and keyboard events (the display service's window, evdev\n"
        "devices given with --evdev, Inject calls from grpcurl); each VM's shim subscribes and injects them into\n"
        f"QEMU.\n{textwrap.fill('Focus: ' + FOCUS_RULE + '.', 104)}\n"
        "Extra environment defaults: RDV_EVDEV (comma-separated paths), RDV_EVDEV_GRAB (1 = grab),\n"
        "RDV_DESKTOP (1920x1080), RDV_INPUT_QUEUE (1024).",
    )
    p.add_argument(
        "--evdev",
        default=env("RDV_EVDEV", ""),
        metavar="PATH[,PATH]",
        help="Linux input devices to read, e.g. /dev/input/by-id/usb-...-event-kbd,/dev/input/event5",
    )
    p.add_argument(
        "--evdev-grab",
        action=argparse.BooleanOptionalAction,
        default=env("RDV_EVDEV_GRAB", "0") == "1",
        help="take the devices away from this machine's own desktop while rdv reads them",
    )
    p.add_argument(
        "--desktop",
        type=Desktop.parse,
        default=Desktop.parse(env("RDV_DESKTOP", "1920x1080")),
        metavar="WxH",
        help="desktop that relative mouse motion moves across (sets pointer speed; the shim scales to the guest)",
    )
    p.add_argument(
        "--queue-limit",
        type=int,
        default=int(env("RDV_INPUT_QUEUE", "1024")),
        help="events held per subscriber before motion, then other input, is dropped (counted)",
    )
    return p


def build(args: argparse.Namespace) -> server.ServiceParts:
    paths = [p for p in args.evdev.split(",") if p]
    desktop: Desktop = args.desktop
    info = server.service_info(
        "input",
        args.listen,
        ["subscribe", "publish", "inject", "focus", "keys:qcode", *(["evdev"] if paths else [])],
        {
            "queue_limit": str(args.queue_limit),
            "evdev": ",".join(paths),
            "desktop": f"{desktop.width}x{desktop.height}",
        },
    )
    servicer = InputServicer(Hub(args.queue_limit), info, max_streams=args.max_sessions)
    loop = asyncio.get_running_loop()
    readers = []
    for path in paths:
        src = servicer.add_source(f"evdev:{path}")
        reader = EvdevReader(
            path, desktop, lambda e, src=src: loop.call_soon_threadsafe(servicer.feed, src, e), grab=args.evdev_grab
        )
        reader.start()
        readers.append(reader)

    async def stop() -> None:
        for reader in readers:
            await asyncio.to_thread(reader.stop)

    add = input_pb2_grpc.add_InputServiceServicer_to_server
    return server.ServiceParts.of(input_pb2.DESCRIPTOR, "InputService", add, servicer, info, stop)


def main() -> None:
    args = build_parser().parse_args()
    if args.queue_limit < 1:
        raise SystemExit("--queue-limit must be at least 1")
    server.main("input", args, build)


if __name__ == "__main__":
    main()
