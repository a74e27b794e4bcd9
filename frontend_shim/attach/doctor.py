"""`doctor`: check what attaching a VM needs, and say in words what to do about each failure.

Checks: the QEMU binary has `vfio-user-pci` (QEMU >= 10.1); the TLS folder is complete; each endpoint answers
grpc.health.v1; each service answers its device RPC (pairing: not PERMISSION_DENIED); the runtime directory
and rdv's QMP socket path are usable, and no other process serves this VM's sockets.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.attach import endpoints
from frontend_shim.attach.config import VmConfig
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2_grpc
from rdv.input.v1 import input_pb2_grpc
from services.common import tls

MIN_QEMU = (10, 1)
GET_QEMU = (
    "vfio-user-pci is in QEMU 10.1 and later (built by default on Linux): a distribution with such a QEMU, e.g. "
    "Debian unstable (10.2; Debian 12 and 13 ship older ones), or build QEMU 10.2.2 from Debian's source with "
    "tests/tools/build_qemu_vfio_user.sh (into ~/.cache/rdv), then point qemu.binary at it "
    "(--set qemu.binary=PATH)"
)
_STUBS = {
    "audio": audio_pb2_grpc.AudioServiceStub,
    "display": display_pb2_grpc.DisplayServiceStub,
    "input": input_pb2_grpc.InputServiceStub,
}
_SERVICE = {"audio": "services.audio", "display": "services.display", "input": "services.input"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"]
        if not self.ok and self.fix:
            out.append(f"      -> {self.fix}")
        return out


def run_checks(cfg: VmConfig, timeout: float = 3.0) -> list[Check]:
    checks = [check_qemu(cfg.qemu_binary)]
    tls_ok = True
    if cfg.tls_dir:
        c = check_tls_dir(cfg.tls_dir)
        tls_ok = c.ok
        checks.append(c)
    for _key, device, target in cfg.endpoint_list():
        if tls_ok:
            checks += list(check_endpoint(device, target, cfg.tls_dir, timeout))
    checks += check_paths(cfg)
    return checks


def check_qemu(binary: str) -> Check:
    name = "qemu"
    path = shutil.which(binary)
    if path is None:
        return Check(name, False, f"{binary} not found", GET_QEMU)
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        devices = subprocess.run([path, "-device", "help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, False, f"{path} does not run: {exc}", GET_QEMU)
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", version)
    found = f"QEMU {m.group(1)}.{m.group(2)}.{m.group(3) or 0}" if m else "an unknown QEMU version"
    if '"vfio-user-pci"' not in devices:
        old = m is not None and (int(m.group(1)), int(m.group(2))) < MIN_QEMU
        why = f"is {found}, older than 10.1" if old else f"is {found} without vfio-user-pci (built without it?)"
        return Check(name, False, f"{path} {why}", GET_QEMU)
    return Check(name, True, f"{path} is {found} with vfio-user-pci")


def check_tls_dir(tls_dir: str) -> Check:
    try:
        tls.channel_credentials(tls_dir)
    except tls.TlsError as exc:
        return Check("tls", False, str(exc), "python -m services.common.certs shim --ca CA --out DIR --name VM "
                     "--devices audio,display,input (see the README's Security section)")  # fmt: skip
    return Check("tls", True, f"{tls_dir} has ca.pem, cert.pem, key.pem")


def check_endpoint(device: str, target: str, tls_dir: str | None, timeout: float) -> Iterator[Check]:
    name = f"{device} {target}"
    hint = f"start `python -m {_SERVICE[device]}` there (or `docker compose up` in deploy/ on that node)"
    try:
        address = endpoints.resolve(target, device)
    except endpoints.NodeNotFound as exc:
        yield Check(f"{name} discovery", False, str(exc), "start the node's services (they announce themselves "
                    "when listening beyond loopback), or write HOST:PORT instead of node:NAME")  # fmt: skip
        return
    with tls.channel(address, tls_dir) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            detail = exc.details() or exc.code().name
            fix = hint
            if tls_dir and ("handshake" in detail.lower() or "ssl" in detail.lower()):
                fix = "the TLS handshake failed: the service and this VM need certificates from the same CA"
            elif not tls_dir and exc.code() == grpc.StatusCode.UNAVAILABLE:
                fix = f"{hint}; a service started with --tls-dir needs tls_dir here too"
            yield Check(f"{name} health", False, f"{exc.code().name}: {detail}", fix)
            return
        serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        yield Check(f"{name} health", serving, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
                    "" if serving else "the service is up but not serving: see its log")  # fmt: skip
        try:
            info = _STUBS[device](channel).GetServiceInfo(common_pb2.GetServiceInfoRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            fix = (
                f"this VM's certificate is not paired for {device}: python -m services.common.certs shim "
                f"--devices {device},... (with the same CA)"
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED
                else "see the service's log"
            )
            yield Check(f"{name} pairing", False, f"{exc.code().name}: {exc.details()}", fix)
            return
        yield Check(f"{name} pairing", True, f"answers {device} RPCs ({_describe(info)})")


def _describe(info: common_pb2.ServiceInfo) -> str:
    return f"{info.service or '?'} service {info.version}".strip()


def check_paths(cfg: VmConfig) -> list[Check]:
    out: list[Check] = []
    runtime = cfg.runtime_dir
    parent = runtime
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent) or "/"
    if not os.access(parent, os.W_OK | os.X_OK):
        return [Check("runtime_dir", False, f"{runtime}: cannot write in {parent}",
                      f"create it for this user: sudo install -d -o $USER {runtime}")]  # fmt: skip
    out.append(Check("runtime_dir", True, f"{runtime} {'exists' if parent == runtime else 'can be created'}"))
    for label, path in [("audio socket", cfg.audio and cfg.audio.socket), ("display socket", cfg.display and
                        cfg.display.socket), ("qmp socket", cfg.input and cfg.qmp)]:  # fmt: skip
        if not path:
            continue
        directory = os.path.dirname(path) or "."
        if os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK):
            out.append(Check(label, False, f"{directory} is not writable", f"make {directory} writable for "
                             "this user (QEMU creates the QMP socket there)"))  # fmt: skip
        elif _listening(path):
            out.append(Check(label, False, f"{path}: something listens there already",
                             "another rdv-shim or QEMU uses this VM's sockets: stop it, or pick another "
                             "runtime_dir"))  # fmt: skip
        else:
            out.append(Check(label, True, f"{path} is free"))
    return out


def _listening(path: str) -> bool:
    if not os.path.exists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
