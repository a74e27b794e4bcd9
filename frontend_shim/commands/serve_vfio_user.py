"""`serve-vfio-user`: be a device of an unmodified QEMU (10.1+) through its vfio-user-pci client.

    qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=512M,share=on -machine pc,memory-backend=mem \\
        -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/run/rdv/es1370.sock"}}'

The server must listen before QEMU starts. It serves one QEMU at a time, and the next one after it leaves.

`--device svga` serves a VMware SVGA II (use `-vga none` so it is the only display): BAR0 port accesses are
trapped, VRAM and FIFO memory are memfds QEMU maps into the guest, and the damage goes to the display services.
Its VALUE port is a 32-bit access at BAR0+1: stock QEMU 10.2 under KVM splits it into 1+2+1 byte pieces (the
model reassembles them); under TCG stock QEMU refuses it as unaligned (see tests/tools/README.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from frontend_shim.commands import options
from frontend_shim.links.display import ENCODINGS
from frontend_shim.vfio_user.served import DeviceOptions, ServedDevice
from services.common import tls


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-vfio-user", help="serve a remote device to QEMU's vfio-user-pci client")
    p.add_argument("--socket", required=True, help="UNIX socket path QEMU connects to")
    p.add_argument("--device", choices=["es1370", "svga"], default="es1370")
    options.audio(p)
    options.display(p, "display service for --device svga")
    options.mode(p)
    p.add_argument("--encoding", choices=ENCODINGS, default="auto", help="svga: pixel encoding (auto: per rectangle)")
    p.add_argument("--tile-diff", action="store_true", help="svga: send only tiles that differ from what was sent")
    options.video(p)
    p.add_argument(
        "--vram-scan-ms",
        type=float,
        default=500.0,
        help="svga: compare the visible framebuffer with what was reported this often and send changes no FIFO "
        "command announced (0: off; Linux vmwgfx announces everything)",
    )
    p.add_argument("--vm", default=None, help="name shown in the service's session list (default from --socket)")
    p.add_argument(
        "--access-timeout-ms",
        type=float,
        default=500.0,
        help="backend mode: longest a register read waits for the service before reading as all ones",
    )
    p.add_argument("--irq-recheck-ms", type=float, default=5.0, help="INTx re-check delay after writes and UNMASK")
    p.add_argument("--access-log", default=None, help="write the register traffic here (.gz: gzip)")
    p.add_argument("--dma-log", default=None, help=argparse.SUPPRESS)  # tests: es1370 DMA reads, saved on exit
    p.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    options.tls_dir(p)
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.display and args.device != "svga":
        print("error: --display applies to --device svga only", file=sys.stderr)
        return 2
    try:
        credentials = tls.channel_credentials(args.tls_dir) if args.tls_dir else None
    except tls.TlsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    device = ServedDevice(
        DeviceOptions(
            device=args.device,
            socket=args.socket,
            targets=options.displays(args) if args.device == "svga" else [args.audio],
            mode=args.mode,
            vm=args.vm,
            encoding=args.encoding,
            tile_diff=args.tile_diff,
            vram_scan_ms=args.vram_scan_ms,
            access_timeout_ms=args.access_timeout_ms,
            irq_recheck_ms=args.irq_recheck_ms,
            access_log=args.access_log,
            dma_log=args.dma_log,
            credentials=credentials,
            clock_scale=args.clock_scale,
            video=options.video_settings(args),
        )
    )
    try:
        try:
            device.start()
        except ConnectionError as exc:
            print(f"error: {exc} (is `python -m {device.service}` running there?)", file=sys.stderr)
            return 1
        try:
            device.listen()
        except OSError as exc:
            print(f"error: cannot listen on {args.socket}: {exc}", file=sys.stderr)
            return 1
        print(f"listening on {args.socket}", flush=True)
        device.serve(on_exit=stop.set)
        stop.wait()  # a signal, or the server gone (a signal's handler runs while this waits)
    finally:
        device.close()
    if args.json:
        print(json.dumps(device.summary()), flush=True)
    return 0
