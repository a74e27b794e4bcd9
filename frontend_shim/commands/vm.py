"""`vm --config VM.toml`: serve every configured device of one VM from this process.

Start it before QEMU (or use `run`, which starts QEMU too). `--print-qemu-args` prints the QEMU arguments that
belong to rdv and `--libvirt-xml` the libvirt domain XML for them; neither needs a service to be up.
"""

from __future__ import annotations

import argparse
import sys

from frontend_shim.attach import libvirt
from frontend_shim.attach.qemu_args import format_args, rdv_args
from frontend_shim.attach.runner import serve
from frontend_shim.commands import options
from services.common import logs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vm",
        help="serve every device of one VM from its config file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.vm_config(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--print-qemu-args",
        nargs="?",
        const="lines",
        choices=["lines", "shell"],
        default=None,
        help="print rdv's QEMU arguments and exit: one per line (default) or as a shell fragment",
    )
    what.add_argument("--libvirt-xml", action="store_true", help="print the libvirt domain XML for rdv and exit")
    p.add_argument("--no-status", action="store_true", help="no status lines (logs only)")
    p.add_argument("--json", action="store_true", help="print a JSON summary per device on exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cfg = options.load_vm_config(args)
    if cfg is None:
        return 2
    if args.print_qemu_args:
        sys.stdout.write(format_args(rdv_args(cfg), args.print_qemu_args))
        return 0
    if args.libvirt_xml:
        sys.stdout.write(libvirt.domain_xml(cfg))
        return 0
    logs.setup(cfg.log_level)
    return serve(cfg, status=not args.no_status, summary=args.json, dma_log=args.dma_log)
