"""Starting real services and the real shim for tests (subprocesses, as a user would run them)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
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

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_service(
    name: str, log_dir: Path, *args: str, listen: str = "127.0.0.1:0", env: dict | None = None
) -> Service:
    """Start `python -m services.NAME` and wait until it reports SERVING."""
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}", "--listen", listen, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "RDV_LOG_LEVEL": "info", **(env or {})},
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"{name} did not start: {line!r}\n{log.read_text()}")
    address = line.rsplit(" ", 1)[-1].strip()
    wait_serving(address)
    return Service(name, address, proc, log)


def wait_serving(address: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def run_shim(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frontend_shim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
