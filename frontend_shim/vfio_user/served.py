"""One rdv device served to QEMU over vfio-user: its link to the remote service, its PCI function and the server
on its UNIX socket. `serve-vfio-user` serves one; `rdv-shim vm` serves every device of a VM in one process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from frontend_shim.guests.guest import DmaLog
from frontend_shim.links.audio import AudioLink
from frontend_shim.links.video_streams import VideoSettings
from frontend_shim.vfio_user.devices import es1370_over_link, svga_over_link
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.pci import PciFunction
from frontend_shim.vfio_user.server import VfioUserServer
from frontend_shim.vfio_user.svga import SvgaLink, SvgaMemory
from frontend_shim.vfio_user.trace import AccessLog
from services.common import logs
from services.common.clock import Clock

log = logs.get("shim.vfio_user")
DEVICES = ("es1370", "svga")
SERVICE = {"es1370": "services.audio", "svga": "services.display"}


class Link(Protocol):
    """What serving needs of a device's link, whichever device it is."""

    stats: Any
    connected: bool

    def start(self, connect_timeout: float = 5.0, required: bool = True) -> None: ...

    def close(self, drain: bool = True, timeout: float = 10.0) -> None: ...


@dataclass
class DeviceOptions:
    device: str  # es1370 or svga
    socket: str
    targets: list[str]  # the audio service, or the display services (one per screen)
    mode: str = "mirrored"
    vm: str | None = None
    encoding: str = "auto"
    tile_diff: bool = False
    vram_scan_ms: float = 500.0
    access_timeout_ms: float = 500.0
    irq_recheck_ms: float = 5.0
    access_log: str | None = None
    dma_log: str | None = None  # es1370: every DMA read of guest memory, saved here on close (tests)
    credentials: grpc.ChannelCredentials | None = None
    clock_scale: float = 1.0
    video: VideoSettings | None = None  # svga: lossy streams for video regions (None: the link's default)


class ServedDevice:
    """Build with the options, then `start()` (the link), `listen()` (the socket), `serve()`; `close()` always."""

    def __init__(self, opts: DeviceOptions) -> None:
        self.opts = opts
        self.access_log = AccessLog(opts.access_log, f"device={opts.device} mode={opts.mode}") \
            if opts.access_log else None  # fmt: skip
        on_event = self.access_log.event if self.access_log else None
        self.memory = DmaMemory()
        self.dma_log = DmaLog(self.memory) if opts.dma_log else None
        self.irq = IrqController(opts.irq_recheck_ms / 1000, on_event=on_event)
        self.vm = opts.vm or f"vfio-user:{os.path.basename(opts.socket)}"
        self.svga_memory: SvgaMemory | None = None
        self.link: Link
        self.function: PciFunction
        if opts.device == "svga":
            self.svga_memory = SvgaMemory.create()
            self.link = SvgaLink(
                opts.targets,
                opts.mode,
                self.svga_memory,
                vm=self.vm,
                encoding=opts.encoding,
                tile_diff=opts.tile_diff,
                access_timeout=opts.access_timeout_ms / 1000,
                credentials=opts.credentials,
                vram_scan_period=opts.vram_scan_ms / 1000,
                video=opts.video,
            )
            self.function = svga_over_link(self.link)
        else:
            self.link = AudioLink(
                opts.targets[0],
                opts.mode,
                self.dma_log or self.memory,
                self.irq,
                vm=self.vm,
                clock=Clock(opts.clock_scale),
                access_timeout=opts.access_timeout_ms / 1000,
                credentials=opts.credentials,
            )
            self.function = es1370_over_link(self.link, self.irq)
        self.server = VfioUserServer(
            self.function,
            self.memory,
            self.irq,
            on_access=self.access_log.access if self.access_log else None,
            on_event=on_event,
        )
        self._started = False

    @property
    def service(self) -> str:
        return SERVICE[self.opts.device]

    def start(self, required: bool = True) -> None:
        """Open the link; ConnectionError if the service cannot be reached and `required` (otherwise the link keeps
        trying in the background, and the device works as a card whose service is away)."""
        self.link.start(required=required)
        self._started = True

    def listen(self) -> None:
        """Bind the socket (OSError if it cannot be)."""
        self.server.listen(self.opts.socket)
        log.info("serving", extra={"socket": self.opts.socket, "device": self.opts.device, "mode": self.opts.mode})

    def serve(self, on_exit: Callable[[], None] | None = None) -> threading.Thread:
        """Accept QEMU's connections on a thread of their own; `on_exit` runs when that thread ends."""

        def accept() -> None:
            try:
                self.server.serve_forever()
            finally:
                if on_exit is not None:
                    on_exit()

        thread = threading.Thread(target=accept, name="vfio-user-accept", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.server.stop()
        self.server.wait_idle(5.0)
        if self._started:
            self.link.close(drain=True, timeout=5.0)
        self.irq.close()
        self.function.close()
        if self.svga_memory is not None:
            self.svga_memory.close()
        if self.access_log:
            self.access_log.close()
        if self.dma_log is not None and self.opts.dma_log:
            self.dma_log.save(self.opts.dma_log)

    def summary(self) -> dict:
        out = {
            "device": self.opts.device,
            "mode": self.opts.mode,
            **self.server.stats.as_dict(),
            "irq": vars(self.irq.stats),
            "irq_timeline": list(self.irq.timeline),  # (cause, eventfd write) in monotonic ns
            "memory": vars(self.memory.stats),
            "link": self.link.stats.as_dict(),
            "access_log_lines": self.access_log.count if self.access_log else 0,
        }
        if isinstance(self.link, SvgaLink):
            out["vram_scan"] = self.link.scan_stats.as_dict()
        return out
