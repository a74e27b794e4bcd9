"""Every configured device of one VM, served from this process: a vfio-user socket per PCI device (ES1370, SVGA)
and the input forwarder into QEMU's QMP. A device whose service is down starts offline and keeps trying, so it
never keeps the others from working.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.attach import endpoints
from frontend_shim.attach.config import VmConfig
from frontend_shim.links.input_forward import InputForwarder
from frontend_shim.links.video_streams import VideoSettings
from frontend_shim.vfio_user.served import DeviceOptions, ServedDevice
from services.common import logs, tls

log = logs.get("shim.vm")


class AttachError(Exception):
    """The VM's devices could not be set up (a socket, the TLS folder): the message says which and why."""


class _InputThread:
    """The asyncio input forwarder on a thread of its own."""

    def __init__(self, forwarder: InputForwarder) -> None:
        self.forwarder = forwarder
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="input-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self.forwarder.run()

        asyncio.run(run())

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.forwarder.stop)
        self._thread.join(timeout)


class Probe:
    """Round-trip time of a health check to one service: the link latency on the status line."""

    def __init__(self, target: str, tls_dir: str | None) -> None:
        self.channel = tls.channel(target, tls_dir)
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def rtt_ms(self, timeout: float = 1.0) -> float | None:
        t0 = time.perf_counter()
        try:
            self.stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.channel.close()


@dataclass
class DeviceStatus:
    device: str  # es1370, svga, input
    target: str  # where its service is
    state: str  # online / offline
    qemu: bool  # QEMU is connected to it
    rtt_ms: float | None
    rate: float  # bytes/s on the link (input: events/s)
    rate_unit: str
    reconnects: int

    def fields(self) -> dict[str, object]:
        return {
            "device": self.device,
            "state": self.state,
            "qemu": "connected" if self.qemu else "waiting",
            "rtt_ms": "-" if self.rtt_ms is None else f"{self.rtt_ms:.1f}",
            self.rate_unit: round(self.rate),
            "reconnects": self.reconnects,
            "target": self.target,
        }


class VmDevices:
    """Build from a config, `start()`, then `status()` as often as wanted; `close()` always."""

    def __init__(self, cfg: VmConfig, dma_log: str | None = None) -> None:
        self.cfg = cfg
        self.dma_log = dma_log
        self.devices: list[ServedDevice] = []
        self.input: _InputThread | None = None
        self.probes: dict[str, Probe] = {}
        self._last: dict[str, tuple[float, int]] = {}

    def start(self) -> None:
        """Listen on every socket and open every link (AttachError names what failed; nothing is left behind)."""
        cfg = self.cfg
        credentials = None
        if cfg.tls_dir:
            try:
                credentials = tls.channel_credentials(cfg.tls_dir)
            except tls.TlsError as exc:
                raise AttachError(f"tls_dir: {exc}") from None
        try:
            os.makedirs(cfg.runtime_dir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise AttachError(f"runtime_dir: cannot create {cfg.runtime_dir}: {exc.strerror}") from None
        specs = []
        if cfg.audio:
            specs.append(("es1370", cfg.audio.socket, [cfg.audio.endpoint]))
        if cfg.display:
            specs.append(("svga", cfg.display.socket, list(cfg.display.endpoints)))
        try:
            for device, sock, targets in specs:
                d = ServedDevice(
                    DeviceOptions(
                        device=device,
                        socket=sock,
                        targets=[endpoints.resolve(t, device) for t in targets],
                        mode=cfg.mode,
                        vm=cfg.name,
                        encoding=cfg.display.encoding if cfg.display else "auto",
                        tile_diff=bool(cfg.display and cfg.display.tile_diff),
                        credentials=credentials,
                        video=VideoSettings(cfg.display.video, cfg.display.video_max_mbps, cfg.display.video_quality)
                        if cfg.display
                        else None,
                        dma_log=self.dma_log if device == "es1370" else None,
                    )
                )
                self.devices.append(d)
                try:
                    d.listen()
                except OSError as exc:
                    raise AttachError(f"{device}: cannot listen on {sock}: {exc.strerror or exc}") from None
            for d in self.devices:  # connect after every socket is ours: a busy socket fails before any wait
                d.start(required=False)
                d.serve()
            if cfg.input:
                self.input = _InputThread(
                    InputForwarder(
                        endpoints.resolve(cfg.input.endpoint, "input"),
                        cfg.qmp,
                        cfg.name,
                        device=cfg.input.qmp_device,
                        tls_dir=cfg.tls_dir,
                    )
                )
                self.input.start()
        except endpoints.NodeNotFound as exc:
            self.close()
            raise AttachError(str(exc)) from None
        except BaseException:
            self.close()
            raise
        for device, target in self._targets().items():
            if target not in self.probes:
                self.probes[target] = Probe(endpoints.resolve(target, device), cfg.tls_dir)

    def _targets(self) -> dict[str, str]:
        out = {d.opts.device: d.opts.targets[0] for d in self.devices}
        if self.cfg.input:
            out["input"] = self.cfg.input.endpoint
        return out

    def status(self) -> list[DeviceStatus]:
        now = time.monotonic()
        out = []
        for d in self.devices:
            s = d.link.stats
            moved = s.bytes_to_service + s.bytes_from_service
            out.append(
                DeviceStatus(
                    d.opts.device, ",".join(d.opts.targets), "online" if d.link.connected else "offline",
                    d.server.connected, self._rtt(d.opts.targets[0]), self._rate(d.opts.device, now, moved), "bytes_s",
                    s.reconnects,
                )
            )  # fmt: skip
        if self.input is not None and self.cfg.input:
            f = self.input.forwarder
            out.append(
                DeviceStatus(
                    "input", self.cfg.input.endpoint, "online" if f.subscribed.is_set() else "offline",
                    f.qmp_ready.is_set(), self._rtt(self.cfg.input.endpoint),
                    self._rate("input", now, f.stats["injected"]), "events_s", max(0, f.stats["subscriptions"] - 1),
                )
            )  # fmt: skip
        return out

    def _rtt(self, target: str) -> float | None:
        probe = self.probes.get(target)
        return probe.rtt_ms() if probe else None

    def _rate(self, key: str, now: float, total: int) -> float:
        then, before = self._last.get(key, (now, total))
        self._last[key] = (now, total)
        return (total - before) / (now - then) if now > then else 0.0

    def summary(self) -> dict:
        out: dict[str, object] = {d.opts.device: d.summary() for d in self.devices}
        if self.input is not None:
            out["input"] = dict(self.input.forwarder.stats)
        return out

    def close(self) -> None:
        """Stop everything; every socket this VM listened on is gone afterwards."""
        if self.input is not None:
            self.input.stop()
        for d in self.devices:
            d.close()
        for probe in self.probes.values():
            probe.close()
        self.probes.clear()
