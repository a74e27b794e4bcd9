"""`forward-input`: the remote node's mouse and keyboard into this machine's QEMU guest (QMP input-send-event).

Give QEMU a QMP socket of its own for this, e.g. `-qmp unix:/run/rdv/vm1-input.sock,server=on,wait=off`
(QEMU serves one client per QMP socket), and a tablet for absolute pointing: `-device usb-ehci
-device usb-tablet` (or virtio-tablet-pci). A tablet bound to a display (`display=video0`) only takes events
sent with that device id: pass `--qmp-device video0`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from frontend_shim.commands import options
from frontend_shim.links.input_forward import InputForwarder


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "forward-input",
        help="inject the remote node's mouse and keyboard into a local QEMU through QMP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        default=os.environ.get("RDV_INPUT", "127.0.0.1:50053"),
        help="input service HOST:PORT (default $RDV_INPUT or 127.0.0.1:50053)",
    )
    p.add_argument("--qmp", required=True, metavar="UNIX_SOCKET_PATH", help="QEMU's QMP socket")
    p.add_argument(
        "--qmp-device",
        default=None,
        metavar="ID",
        help="QMP input-send-event `device`: the display device id a tablet is bound to",
    )
    p.add_argument(
        "--vm",
        default=os.environ.get("RDV_VM", "vm"),
        help="this VM's name at the input service (focus and SetFocus use it; default $RDV_VM or vm)",
    )
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    options.tls_dir(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    forwarder = InputForwarder(args.input, args.qmp, args.vm, device=args.qmp_device, tls_dir=args.tls_dir)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, forwarder.stop)
        print(f"rdv forward-input: vm {args.vm} from {args.input} into {args.qmp}", flush=True)
        await forwarder.run()

    asyncio.run(main())
    counters = dict(forwarder.stats)
    if args.json:
        print(json.dumps(counters))
    else:
        print(
            "stopped: " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "nothing forwarded"),
            file=sys.stderr,
        )
    return 0
