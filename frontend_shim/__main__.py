"""`python -m frontend_shim COMMAND`: the local node's shim beside QEMU."""

from __future__ import annotations

import importlib
import sys

from frontend_shim.commands import options
from frontend_shim.links import grpc_direct
from services.common import heap, logs, settings
from services.common.version import VERSION

# Each command lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = (
    "frontend_shim.commands.play",
    "frontend_shim.commands.record",
    "frontend_shim.commands.demo",
    "frontend_shim.commands.draw_demo",
    "frontend_shim.commands.forward_input",
    "frontend_shim.commands.serve_vfio_user",
    "frontend_shim.commands.replay",
    "frontend_shim.commands.vm",
    "frontend_shim.commands.run",
    "frontend_shim.commands.doctor",
    "frontend_shim.commands.replay_frames",
    "frontend_shim.commands.pair",
    "frontend_shim.commands.discover",
)


def build_parser() -> settings.SettingsParser:
    p = settings.SettingsParser(
        prog="rdv-shim",
        description="rdv frontend shim: traps a guest's device accesses and serves them from remote rdv services.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    options.log_level(p)
    p.add_settings([options.GRPC_DIRECT])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    for command in sub.choices.values():
        options.log_level(command, top=False)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    grpc_direct.enabled = args.grpc_direct
    heap.settle()  # every command's modules are imported: a guest's real time must not wait for them in the GC
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
