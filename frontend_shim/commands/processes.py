"""Start rdv services as child processes on this machine (the demo, tests and benchmarks use it)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    name: str
    address: str
    proc: subprocess.Popen
    log: Path

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc.poll() is None:
            (self.proc.kill if sig_kill else self.proc.terminate)()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_service(
    name: str,
    log_dir: Path,
    *args: str,
    listen: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    cwd: Path = ROOT,
) -> ServiceProcess:
    """Start `python -m services.NAME` and return once it reports SERVING (port 0 picks a free port).

    `prefix` runs it under another command (e.g. `ip netns exec NS`); `cwd`: the checkout it runs from.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", f"services.{name}", "--listen", listen, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "RDV_LOG_LEVEL": os.environ.get("RDV_LOG_LEVEL", "info"), **(env or {})},
        )
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {line!r}\n{log.read_text()}")
    address = line.rsplit(" ", 1)[-1].strip()
    tls_dir = args[args.index("--tls-dir") + 1] if "--tls-dir" in args else (env or {}).get("RDV_TLS_DIR")
    host, _, port = address.rpartition(":")
    try:
        wait_serving(f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]") else address, tls_dir=tls_dir)
    except BaseException:
        proc.kill()  # never leave a service behind that nobody holds a handle to
        proc.wait(5)
        raise
    return ServiceProcess(name, address, proc, log)


def wait_serving(address: str, timeout: float = 10.0, tls_dir: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    with tls.channel(address, tls_dir) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
