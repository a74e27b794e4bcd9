"""mTLS and pairing: a stranger on the home network cannot use a device; a paired shim can, for its devices only."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.guests.pcm import melody, write_wav
from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2_grpc
from services.common import certs, tls
from services.devices.es1370 import PcmFormat
from tests.helpers import ROOT, run_shim


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_ca(root / "ca")
    certs.issue(root / "ca", root / "node", "remote", ["localhost", "127.0.0.1"], ["input"])
    certs.issue(root / "ca", root / "vm1", "vm1", [], ["audio"])
    certs.issue(root / "ca", root / "vm2", "vm2", [], ["display", "input"])
    certs.make_ca(root / "other-ca")  # somebody else's CA: a certificate from it means nothing here
    certs.issue(root / "other-ca", root / "stranger", "stranger", [], ["*"])
    return root


@pytest.mark.parametrize("name", ["audio", "display", "input"])
def test_refuses_plaintext_beyond_loopback(name: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", f"services.{name}", "--listen", "0.0.0.0:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert res.returncode != 0
    assert "--tls-dir" in res.stderr and "--insecure" in res.stderr


def test_insecure_opt_out_warns(services) -> None:
    svc = services("input", listen="0.0.0.0:0", env={"RDV_INSECURE": "1"})
    port = svc.address.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    svc.stop()
    assert "WARNING" in svc.logs() and "PLAINTEXT" in svc.logs()


def _health(address: str, tls_dir: Path | None) -> grpc.StatusCode:
    with tls.channel(address, str(tls_dir) if tls_dir else None) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_only_certificates_from_our_ca_get_in(services, pki: Path) -> None:
    svc = services("audio", "--sink", "null", "--tls-dir", str(pki / "node"))
    address = f"localhost:{svc.address.rpartition(':')[2]}"
    assert _health(address, pki / "vm1") == grpc.StatusCode.OK
    assert _health(address, pki / "vm2") == grpc.StatusCode.OK  # health needs a valid certificate, not a pairing
    assert _health(address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext is not even a TLS handshake
    assert _health(address, pki / "stranger") == grpc.StatusCode.UNAVAILABLE  # handshake refused


def test_pairing_decides_which_devices_a_shim_may_use(services, pki: Path, tmp_path: Path) -> None:
    audio = services("audio", "--sink", "null", "--tls-dir", str(pki / "node"))
    address = f"localhost:{audio.address.rpartition(':')[2]}"
    fmt = PcmFormat(22050, 1, 8)
    wav = tmp_path / "in.wav"
    write_wav(str(wav), fmt, melody(fmt, 0.2))
    ok = run_shim("play", "--wav", str(wav), "--audio", address, "--tls-dir", str(pki / "vm1"), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["interrupts"] == json.loads(ok.stdout)["periods"]
    refused = run_shim("play", "--wav", str(wav), "--audio", address, "--tls-dir", str(pki / "vm2"))
    assert refused.returncode != 0
    with tls.channel(address, str(pki / "vm2")) as ch:
        from rdv.audio.v1 import audio_pb2_grpc

        with pytest.raises(grpc.RpcError) as err:
            audio_pb2_grpc.AudioServiceStub(ch).ListSessions(common_pb2.ListSessionsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "paired for display, input, not for audio" in err.value.details()


def test_input_service_pairing(services, pki: Path) -> None:
    svc = services("input", "--tls-dir", str(pki / "node"))
    address = f"localhost:{svc.address.rpartition(':')[2]}"
    for who, allowed in (("vm2", True), ("vm1", False), ("node", True)):
        with tls.channel(address, str(pki / who)) as ch:
            stub = input_pb2_grpc.InputServiceStub(ch)
            try:
                stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
        assert (code == grpc.StatusCode.OK) == allowed, who


def test_display_and_input_over_mtls(services, pki: Path, tmp_path: Path) -> None:
    node = str(pki / "node")
    inp = services("input", "--tls-dir", node)
    disp = services("display", "--headless", "--tls-dir", node, "--input", inp.address)
    drawn = run_shim("draw-demo", "--display", disp.address, "--seconds", "0.3", "--encoding", "lz4",
                     "--width", "320", "--height", "200", "--tls-dir", str(pki / "vm2"), "--json")  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(drawn.stdout)["flushed"]
    refused = run_shim("draw-demo", "--display", disp.address, "--seconds", "0.3", "--tls-dir", str(pki / "vm1"))
    assert refused.returncode != 0  # vm1 is paired for audio only
    # The shim's input forwarder subscribes over mTLS (QEMU need not exist for the subscription to be made).
    fwd = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "forward-input", "--input", inp.address, "--qmp",
         str(tmp_path / "no-qemu.sock"), "--vm", "vm2", "--tls-dir", str(pki / "vm2")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with tls.channel(inp.address, node) as ch:
            from rdv.input.v1 import input_pb2

            stub = input_pb2_grpc.InputServiceStub(ch)
            for _ in range(100):
                if "vm2" in stub.GetFocus(input_pb2.GetFocusRequest(), timeout=5).subscribed:
                    break
                time.sleep(0.05)
            assert "vm2" in stub.GetFocus(input_pb2.GetFocusRequest(), timeout=5).subscribed
    finally:
        fwd.terminate()
        fwd.wait(10)


def test_certs_service_names_the_compose_services_and_shares_the_key_with_a_group(tmp_path: Path) -> None:
    """The node's services reach each other by compose service name (display -> input:50053); `--group` makes
    the key readable to a group (0640) for a service running as another user."""
    import os
    import stat

    from cryptography import x509

    assert certs.main(["ca", "--dir", str(tmp_path / "ca")]) == 0
    group = os.getgid()
    out = tmp_path / "node"
    assert certs.main(["service", "--ca", str(tmp_path / "ca"), "--out", str(out), "--host", "tv.lan",
                       "--group", str(group)]) == 0  # fmt: skip
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "audio", "display", "input", "tv.lan"]
    key = (out / "key.pem").stat()
    assert (stat.S_IMODE(key.st_mode), key.st_gid) == (0o640, group)
    shim = tmp_path / "vm1"
    assert certs.main(["shim", "--ca", str(tmp_path / "ca"), "--out", str(shim), "--name", "vm1"]) == 0
    assert stat.S_IMODE((shim / "key.pem").stat().st_mode) == 0o600  # without --group: the owner alone
