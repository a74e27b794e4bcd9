"""`python -m frontend_shim COMMAND`: the local node's shim beside QEMU."""

from __future__ import annotations

import argparse
import importlib
import sys

from services.common import logs

# Each command lives in its own module with `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = (
    "frontend_shim.cmd_play",
    "frontend_shim.cmd_record",
    "frontend_shim.cmd_demo",
    "frontend_shim.cmd_draw_demo",
    "frontend_shim.cmd_forward_input",
    "frontend_shim.cmd_vfio_user",
    "frontend_shim.cmd_replay",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m frontend_shim",
        description="rdv frontend shim: traps a guest's device accesses and serves them from remote rdv services.",
    )
    p.add_argument("--log-level", default=None, help="debug, info, warning (default $RDV_LOG_LEVEL or warning)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
