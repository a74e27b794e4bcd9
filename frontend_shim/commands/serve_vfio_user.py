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
import os
import signal
import sys
import threading
from typing import Any, Protocol

from frontend_shim.commands import options
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.display import ENCODINGS
from frontend_shim.vfio_user.devices import es1370_over_link, svga_over_link
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.server import VfioUserServer
from frontend_shim.vfio_user.svga import SvgaLink, SvgaMemory
from frontend_shim.vfio_user.trace import AccessLog
from services.common import logs, tls
from services.common.clock import Clock

log = logs.get("shim.vfio_user")


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
    p.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    options.tls_dir(p)
    p.add_argument("--clock-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


class _Link(Protocol):
    """What `run` needs of the device's link, whichever device it is."""

    stats: Any

    def close(self, drain: bool = True, timeout: float = 10.0) -> None: ...


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

    access_log = AccessLog(args.access_log, f"device={args.device} mode={args.mode}") if args.access_log else None
    memory = DmaMemory()
    irq = IrqController(args.irq_recheck_ms / 1000, on_event=access_log.event if access_log else None)
    vm = args.vm or f"vfio-user:{os.path.basename(args.socket)}"
    svga_memory: SvgaMemory | None = None
    link: _Link
    try:
        if args.device == "svga":
            svga_memory = SvgaMemory.create()
            link = SvgaLink(
                options.displays(args),
                args.mode,
                svga_memory,
                vm=vm,
                encoding=args.encoding,
                tile_diff=args.tile_diff,
                access_timeout=args.access_timeout_ms / 1000,
                credentials=credentials,
                vram_scan_period=args.vram_scan_ms / 1000,
                video=options.video_settings(args),
            )
            link.start()
            function = svga_over_link(link)
        else:
            link = AudioLink(
                args.audio,
                args.mode,
                memory,
                irq,
                vm=vm,
                clock=Clock(args.clock_scale),
                access_timeout=args.access_timeout_ms / 1000,
                credentials=credentials,
            )
            link.start()
            function = es1370_over_link(link, irq)
    except ConnectionError as exc:
        service = "services.display" if args.device == "svga" else "services.audio"
        print(f"error: {exc} (is `python -m {service}` running there?)", file=sys.stderr)
        irq.close()
        if svga_memory is not None:
            svga_memory.close()
        if access_log:
            access_log.close()
        return 1
    server = VfioUserServer(
        function,
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
        function.close()
        if svga_memory is not None:
            svga_memory.close()
        if access_log:
            access_log.close()
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
        function.close()
        if svga_memory is not None:
            svga_memory.close()
        if access_log:
            access_log.close()
    if args.json:
        summary = {
            "device": args.device,
            "mode": args.mode,
            **server.stats.as_dict(),
            "irq": vars(irq.stats),
            "irq_timeline": list(irq.timeline),  # (cause, eventfd write) in monotonic ns
            "memory": vars(memory.stats),
            "link": link.stats.as_dict(),
            "access_log_lines": access_log.count if access_log else 0,
        }
        if isinstance(link, SvgaLink):
            summary["vram_scan"] = link.scan_stats.as_dict()
        print(json.dumps(summary), flush=True)
    return 0
