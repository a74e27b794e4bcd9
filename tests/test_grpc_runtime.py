"""rdv's processes run gRPC's core without the EventEngine client and listener (services/common/grpc_runtime.py):
a message is then read by the thread that waits for it, with no EventEngine thread woken in between. The
observable: during a burst of calls, the `event_engine` threads of a service (and of this process, a client)
hardly wake; with gRPC's defaults (a user's GRPC_EXPERIMENTS="") they wake several times per call."""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import grpc_runtime

CALLS = 200


def _event_engine_wakes(pid: int) -> int:
    """Voluntary context switches so far of a process's threads named `event_engine` (gRPC names them so)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != "event_engine":
                    continue
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return total


def _wakes_per_call(address: str, pids: list[int]) -> list[float]:
    with grpc.insecure_channel(address) as channel:
        check: Callable = health_pb2_grpc.HealthStub(channel).Check
        check(health_pb2.HealthCheckRequest(), timeout=10)  # connected
        before = [_event_engine_wakes(pid) for pid in pids]
        for _ in range(CALLS):
            check(health_pb2.HealthCheckRequest(), timeout=10)
        return [(_event_engine_wakes(pid) - b) / CALLS for pid, b in zip(pids, before, strict=True)]


def test_rdv_processes_read_messages_without_an_event_engine_hop(services) -> None:
    assert os.environ["GRPC_EXPERIMENTS"] == grpc_runtime.EXPERIMENTS  # importing rdv's packages chose it
    svc = services("audio", "--sink", "null")
    service, client = _wakes_per_call(svc.address, [svc.proc.pid, os.getpid()])
    assert service < 0.5, f"the service's event_engine threads woke {service:.2f} times per call"
    assert client < 0.5, f"this client's event_engine threads woke {client:.2f} times per call"


def test_a_users_grpc_experiments_decides(services) -> None:
    """GRPC_EXPERIMENTS="" (gRPC's defaults) is honoured: the listener is EventEngine's again, and the test above
    would tell the difference."""
    svc = services("audio", "--sink", "null", env={"GRPC_EXPERIMENTS": ""})
    (service,) = _wakes_per_call(svc.address, [svc.proc.pid])
    assert service > 1.0, f"with gRPC's defaults the service's event_engine threads woke only {service:.2f}/call"


def test_configure_keeps_a_value_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_client")
    grpc_runtime.configure()
    assert os.environ["GRPC_EXPERIMENTS"] == "-event_engine_client"
    monkeypatch.delenv("GRPC_EXPERIMENTS")
    grpc_runtime.configure()
    assert os.environ["GRPC_EXPERIMENTS"] == grpc_runtime.EXPERIMENTS
