"""`run --config VM.toml -- qemu-system-x86_64 ARGS...`: the VM's devices and QEMU, as one command.

Serves every configured device, waits until each socket listens, then starts QEMU with your arguments and
rdv's (`vm --print-qemu-args` shows them); arguments that would fight rdv's (another -vga, another memory
backend, ...) are refused before anything starts. Signals go to QEMU; when QEMU exits the devices are torn
down and its exit status is this command's.
"""

from __future__ import annotations

import argparse
import sys

from frontend_shim.attach.qemu_args import conflicts
from frontend_shim.attach.runner import serve
from frontend_shim.commands import options
from services.common import logs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="serve one VM's devices and run QEMU with them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.vm_config(p)
    p.add_argument("--no-status", action="store_true", help="no status lines (logs only)")
    p.add_argument("--json", action="store_true", help="print a JSON summary per device on exit")
    p.add_argument("qemu", nargs=argparse.REMAINDER, metavar="-- QEMU ARGS", help="the QEMU command line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    qemu = args.qemu[1:] if args.qemu[:1] == ["--"] else args.qemu
    if not qemu:
        print("error: give the QEMU command after --, e.g. `-- qemu-system-x86_64 -accel kvm ...`", file=sys.stderr)
        return 2
    cfg = options.load_vm_config(args)
    if cfg is None:
        return 2
    problems = conflicts(qemu[1:], cfg)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: QEMU was not started (see `rdv-shim vm --config ... --print-qemu-args`)", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    return serve(cfg, qemu, status=not args.no_status, summary=args.json, dma_log=args.dma_log)
