"""rdv's processes run gRPC's core without the EventEngine client and listener (services/common/grpc_runtime.py):
a message is then read by the thread that waits for it, with no EventEngine thread woken in between. The
observable: during a burst of calls, the `event_engine` threads of a service, of the shim and of this process (a
client) hardly wake; with gRPC's defaults (a user's GRPC_EXPERIMENTS="") they wake several times per call."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.commands.processes import ROOT
from services.common import grpc_runtime
from services.devices import es1370_regs as R
from tests.bench.vfio import serve_vfio_user
from tests.bench.vfio_client import SyncVfioUserClient
from tests.test_idle_wakeups import _switches

CALLS = 200


def _event_engine_wakes(pid: int) -> int:
    """Voluntary context switches so far of a process's threads named `event_engine` (gRPC names them so)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == "event_engine":
                total += _switches(pid, int(tid))
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


@pytest.mark.parametrize("experiments, hops", [(None, False), ("", True)])
def test_the_shim_reads_a_backend_value_without_an_event_engine_hop(
    tmp_path: Path, experiments: str | None, hops: bool
) -> None:
    """The shim as QEMU starts it (`python -m frontend_shim serve-vfio-user`, backend ES1370): a register read
    crosses its gRPC stream to the service and back; only a user's GRPC_EXPERIMENTS="" brings the hop back."""
    env = None if experiments is None else {"GRPC_EXPERIMENTS": experiments}
    with serve_vfio_user("es1370", "backend", tmp_path, env=env) as shim:
        client = SyncVfioUserClient(shim.socket)
        try:
            client.version()
            client.read32(0, R.STATUS)
            before = _event_engine_wakes(shim.proc.pid)
            for _ in range(CALLS):
                client.read32(0, R.STATUS)
            per_read = (_event_engine_wakes(shim.proc.pid) - before) / CALLS
        finally:
            client.close()
    if hops:
        assert per_read > 1.0, f"with gRPC's defaults the shim's event_engine threads woke only {per_read:.2f}/read"
    else:
        assert per_read < 0.5, f"the shim's event_engine threads woke {per_read:.2f} times per backend read"


def test_a_program_that_imports_grpc_first_keeps_grpcs_defaults(services) -> None:
    """gRPC reads GRPC_EXPERIMENTS at `import grpc`: rdv's packages must come first (python -m does that)."""
    svc = services("audio", "--sink", "null")
    probe = (
        "import grpc, os, sys\n"
        "import frontend_shim\n"
        "from tests.test_grpc_runtime import _wakes_per_call\n"
        f"print(_wakes_per_call({svc.address!r}, [os.getpid()])[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 1.0, f"a client that imported grpc first woke its event_engine threads {out.stdout}"


def test_configure_keeps_a_value_already_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_client")
    grpc_runtime.configure()
    assert os.environ["GRPC_EXPERIMENTS"] == "-event_engine_client"
    monkeypatch.delenv("GRPC_EXPERIMENTS")
    grpc_runtime.configure()
    assert os.environ["GRPC_EXPERIMENTS"] == grpc_runtime.EXPERIMENTS
