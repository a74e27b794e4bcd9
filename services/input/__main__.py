"""`python -m services.input`: the remote node's mouse and keyboard, delivered to the focused VM's shim."""

from __future__ import annotations

import argparse
import asyncio
import textwrap

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import server, settings
from services.common.settings import Setting
from services.input.evdev import Desktop, EvdevReader
from services.input.hub import FOCUS_RULE, Hub
from services.input.service import InputServicer

DEFAULT_PORT = 50053


SETTINGS = [
    Setting("--evdev", "", "RDV_EVDEV", metavar="PATH[,PATH]",
            help="Linux input devices to read, e.g. /dev/input/by-id/usb-...-event-kbd,/dev/input/event5"),
    Setting("--evdev-grab", False, "RDV_EVDEV_GRAB", switch=True, negatable=True,
            help="take the devices away from this machine's own desktop while rdv reads them"),
    Setting("--desktop", Desktop.parse("1920x1080"), "RDV_DESKTOP", Desktop.parse, metavar="WxH",
            help="desktop that relative mouse motion moves across (sets pointer speed; the shim scales to the guest)"),
    Setting("--queue-limit", 1024, "RDV_INPUT_QUEUE", settings.number(1, 1_000_000, integer=True), metavar="N",
            help="events held per subscriber before motion, then other input, is dropped (counted)"),
]  # fmt: skip


def build_parser() -> settings.SettingsParser:
    return server.parser(
        "input",
        DEFAULT_PORT,
        "Remote input hub. Sources publish mouse and keyboard events (the display service's window, evdev\n"
        "devices given with --evdev, Inject calls from grpcurl); each VM's shim subscribes and injects them into\n"
        f"QEMU.\n{textwrap.fill('Focus: ' + FOCUS_RULE + '.', 104)}",
        SETTINGS,
    )


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
    server.main("input", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
