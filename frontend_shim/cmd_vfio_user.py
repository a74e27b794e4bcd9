"""`serve-vfio-user`: be a device of an unmodified QEMU (10.1+) through its vfio-user-pci client.

    qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem \\
        -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/run/rdv/es1370.sock"}}'

The server must listen before QEMU starts. It serves one QEMU at a time, and the next one after it leaves.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from frontend_shim.audio_link import MODES, AudioLink
from frontend_shim.vfio_user.devices import es1370_over_link
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.server import VfioUserServer
from frontend_shim.vfio_user.trace import AccessLog
from services.common import logs
from services.common.clock import Clock

log = logs.get("shim.vfio_user")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-vfio-user", help="serve a remote device to QEMU's vfio-user-pci client")
    p.add_argument("--socket", required=True, help="UNIX socket path QEMU connects to")
    p.add_argument("--device", choices=["es1370", "svga"], default="es1370")
    p.add_argument("--audio", default=os.environ.get("RDV_AUDIO", "127.0.0.1:50051"), help="audio service HOST:PORT")
    p.add_argument("--display", default=None, help="display service HOST:PORT (with --device svga)")
    p.add_argument("--mode", choices=sorted(MODES), default="mirrored", help="coherence mode (default mirrored)")
    p.add_argument("--vm", default=None, help="name shown in the service's session list (default from --socket)")
    p.add_argument(
        "--access-timeout-ms",
        type=float,
        default=500.0,
        help="backend mode: longest a register read waits for the service before reading as all ones",
    )
    p.add_argument("--irq-recheck-ms", type=float, default=5.0, help="INTx re-check delay after writes and UNMASK")
    p.add_argument("--access-log", default=None, help="write the register traffic here (.gz: gzip)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.device == "svga":
        print(
            "error: --device svga is not implemented yet (the SVGA II link to the display service is still to "
            "come); only --device es1370 can be served",
            file=sys.stderr,
        )
        return 2
    if args.display:
        print("error: --display applies to --device svga only", file=sys.stderr)
        return 2

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    access_log = AccessLog(args.access_log, f"device={args.device} mode={args.mode}") if args.access_log else None
    memory = DmaMemory()
    irq = IrqController(args.irq_recheck_ms / 1000, on_event=access_log.event if access_log else None)
    link = AudioLink(
        args.audio,
        args.mode,
        memory,
        irq,
        vm=args.vm or f"vfio-user:{os.path.basename(args.socket)}",
        clock=Clock(args.clock_scale),
        access_timeout=args.access_timeout_ms / 1000,
    )
    try:
        link.start()
    except ConnectionError as exc:
        print(f"error: {exc} (is `python -m services.audio` running there?)", file=sys.stderr)
        irq.close()
        return 1
    server = VfioUserServer(
        es1370_over_link(link, irq),
        memory,
        irq,
        on_access=access_log.access if access_log else None,
        on_event=access_log.event if access_log else None,
    )
    try:
        server.listen(args.socket)
    except OSError as exc:
        print(f"error: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        link.close(drain=False)
        irq.close()
        return 1
    print(f"listening on {args.socket}", flush=True)
    log.info("serving", extra={"socket": args.socket, "device": args.device, "mode": args.mode})
    serving = threading.Thread(target=server.serve_forever, name="vfio-user-accept", daemon=True)
    serving.start()
    try:
        while not stop.wait(0.5) and serving.is_alive():
            pass
    finally:
        server.stop()
        server.wait_idle(5.0)
        link.close(drain=True, timeout=5.0)
        irq.close()
        server.function.close()
        if access_log:
            access_log.close()
    if args.json:
        summary = {
            "device": args.device,
            "mode": args.mode,
            **server.stats.as_dict(),
            "irq": vars(irq.stats),
            "memory": vars(memory.stats),
            "link": link.stats.as_dict(),
            "access_log_lines": access_log.count if access_log else 0,
        }
        print(json.dumps(summary), flush=True)
    return 0
