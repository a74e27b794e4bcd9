"""Fuzzing the pairing RPCs over the wire, against a real service process with pairing open.

Random, well-typed requests (tests/fuzz_strategies.py) for every PairingService method, from an anonymous pairing
peer and from the node itself; Begin is sometimes given a real SPAKE2 message and Finish a live exchange id, so
examples get past the first checks. Invariants after every example: the service is alive and SERVING, every call
ended OK or with a documented status, and nothing was ever issued (no guess confirms). At the end: nothing logged
at error level.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from rdv.pairing.v1 import pairing_pb2, pairing_pb2_grpc
from services.common import pake, tls
from tests.fuzz_strategies import DOCUMENTED, fuzz_settings, message
from tests.helpers import ServiceProcess, start_service
from tests.test_pairing import _anonymous_channel, _local, _pin

SERVICE = pairing_pb2.DESCRIPTOR.services_by_name["PairingService"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Path, grpc.Channel, grpc.Channel]]:
    logs = tmp_path_factory.mktemp("fuzz-pairing")
    folder = logs / "node"
    svc = start_service("input", logs, "--tls-dir", str(folder), "--pairing")
    _pin(svc)
    anonymous = _anonymous_channel(_local(svc))
    admin = tls.channel(_local(svc), str(folder))
    try:
        yield svc, folder, anonymous, admin
    finally:
        anonymous.close()
        admin.close()
        svc.stop()
    errors = [line for line in svc.logs().splitlines() if "level=error" in line or "Traceback" in line]
    assert not errors, "\n".join(errors[:5])


HINTS = {
    "rdv.pairing.v1.BeginRequest.devices": st.sampled_from(["audio", "display", "input", "", "gpu"]),
    "rdv.pairing.v1.BeginRequest.vm": st.one_of(st.just("vm1"), st.text(max_size=80)),
    "rdv.pairing.v1.OpenPairingRequest.seconds": st.integers(0, 5000),
}


@fuzz_settings(ci=60, weight=0.05)
@given(
    data=st.data(),
    method=st.sampled_from(list(SERVICE.methods)),
    as_admin=st.booleans(),
    real_spake=st.booleans(),
)
def test_pairing_rpcs_answer_documented_statuses_and_issue_nothing(
    node: tuple[ServiceProcess, Path, grpc.Channel, grpc.Channel],
    data: st.DataObject,
    method: object,
    as_admin: bool,
    real_spake: bool,
) -> None:
    svc, folder, anonymous, admin = node
    request = data.draw(message(method.input_type, HINTS))
    channel = admin if as_admin else anonymous
    stub = pairing_pb2_grpc.PairingServiceStub(channel)
    if method.name == "Begin" and real_spake:
        request.spake2_message = pake.shim_side("000000").start()
    if method.name == "Finish" and real_spake:
        try:
            side = pake.shim_side("000000")
            begun = stub.Begin(
                pairing_pb2.BeginRequest(vm="vm1", devices=["audio"], spake2_message=side.start()), timeout=10
            )
            request.exchange_id = begun.exchange_id
        except grpc.RpcError as exc:
            assert exc.code() in DOCUMENTED, exc
    try:
        getattr(stub, method.name)(request, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    assert code in DOCUMENTED, (method.name, code)
    if method.name == "OpenPairing" and code == grpc.StatusCode.OK:
        assert as_admin
    assert svc.proc.poll() is None
    reply = health_pb2_grpc.HealthStub(admin).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not (folder / "pairings.json").exists(), "a certificate was issued without the PIN"
