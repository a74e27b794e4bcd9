"""PIN pairing end to end (services in their own processes, the shim's `pair` command) and its abuse cases:
wrong PIN, closed pairing, replayed transcripts, a relay that swaps the node's CA, forged chains through the
anonymous credential, revocation."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from frontend_shim.guests.pcm import melody, write_wav
from frontend_shim.links import pairing as shim_pairing
from rdv.audio.v1 import audio_pb2_grpc
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2_grpc
from rdv.pairing.v1 import pairing_pb2, pairing_pb2_grpc
from services.common import pake, tls
from services.common.pairing import MAX_WRONG, PairingRefused, PairingWindow
from services.devices.es1370 import PcmFormat
from tests.helpers import run_shim

PIN_LINE = re.compile(r'msg="pairing open" pin=(\d{6})')


def _pin(svc) -> str:  # noqa: ANN001
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = PIN_LINE.findall(svc.logs())
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no pairing line in the log:\n{svc.logs()}")


def _local(svc) -> str:  # noqa: ANN001
    return f"localhost:{svc.address.rpartition(':')[2]}"


def _wav(tmp_path: Path) -> Path:
    fmt = PcmFormat(22050, 1, 8)
    wav = tmp_path / "in.wav"
    write_wav(str(wav), fmt, melody(fmt, 0.2))
    return wav


def _anonymous_channel(address: str) -> grpc.Channel:
    key, cert = pake.anonymous_client()
    name = shim_pairing._tls_name(address, key, cert, 5)
    creds = grpc.ssl_channel_credentials(pake.pem(pake.anonymous_ca()[1]), key, cert)
    return grpc.secure_channel(address, creds, [("grpc.ssl_target_name_override", name)])


def _code(call) -> grpc.StatusCode:  # noqa: ANN001
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_pair_then_play_over_mtls_for_the_devices_asked_only(services, tmp_path: Path) -> None:
    node = tmp_path / "node"  # empty: the first start makes the node's CA there
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    display = services("display", "--presenter", "headless", "--tls-dir", str(node))  # same node, same CA
    pin = _pin(audio)
    out = tmp_path / "vm1"
    res = run_shim("pair", _local(audio), "--vm", "vm1", "--devices", "audio", "--pin", pin, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (out / "key.pem").stat().st_mode & 0o077 == 0
    assert (out / "ca.pem").read_bytes() == (node / "ca.pem").read_bytes()  # the node's CA, pinned
    assert (node / "key.pem").read_bytes() not in (out / "key.pem").read_bytes()
    # No --vm: the shim names itself after the VM its certificate is made for (it may open that VM's sessions only).
    played = run_shim("play", "--wav", str(_wav(tmp_path)), "--audio", _local(audio), "--tls-dir", str(out), "--json")
    assert played.returncode == 0, played.stderr
    summary = json.loads(played.stdout)
    assert summary["interrupts"] == summary["periods"] > 0
    # The certificate covers audio only: the display of the same node refuses it.
    with tls.channel(_local(display), str(out)) as ch:
        stub = display_pb2_grpc.DisplayServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "paired for audio, not for display" in err.value.details()
    records = json.loads((node / "pairings.json").read_text())
    assert [(r["vm"], r["devices"]) for r in records] == [("vm1", ["audio"])]


def test_wrong_pin_writes_nothing_and_three_close_pairing(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    pin = _pin(audio)
    wrong = f"{(int(pin) + 1) % 10**6:06d}"
    for i in range(MAX_WRONG):
        out = tmp_path / f"try{i}"
        res = run_shim("pair", _local(audio), "--vm", "vm1", "--devices", "audio", "--pin", wrong, "--out", str(out))
        assert res.returncode != 0
        assert "wrong PIN" in res.stderr and "Traceback" not in res.stderr
        assert not out.exists()
    # Closed now: even the right PIN is refused, and nothing was ever issued.
    res = run_shim("pair", _local(audio), "--vm", "vm1", "--pin", pin, "--out", str(tmp_path / "late"))
    assert res.returncode != 0 and "not open" in res.stderr
    assert not (tmp_path / "late").exists()
    assert not (node / "pairings.json").exists()
    assert "pairing closed" in audio.logs() and "3 wrong PINs" in audio.logs()


def test_pairing_is_closed_unless_opened_and_opening_is_for_the_node_itself(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    first = services("input", "--tls-dir", str(node), "--pairing")  # makes the CA
    _pin(first)
    first.stop()
    svc = services("input", "--tls-dir", str(node))  # holds the CA, pairing closed
    res = run_shim("pair", _local(svc), "--vm", "vm1", "--pin", "123456", "--out", str(tmp_path / "out"))
    assert res.returncode != 0 and "FAILED_PRECONDITION" in res.stderr and "not open" in res.stderr
    assert not (tmp_path / "out").exists()
    # An anonymous peer cannot open it, nor list or revoke.
    with _anonymous_channel(_local(svc)) as ch:
        stub = pairing_pb2_grpc.PairingServiceStub(ch)
        for call in (
            lambda: stub.OpenPairing(pairing_pb2.OpenPairingRequest(), timeout=5),
            lambda: stub.ListPairings(pairing_pb2.ListPairingsRequest(), timeout=5),
            lambda: stub.Revoke(pairing_pb2.RevokeRequest(vm="vm1"), timeout=5),
        ):
            assert _code(call) == grpc.StatusCode.PERMISSION_DENIED
    # The node itself (loopback, its own certificate) opens it and gets the PIN it logs.
    with tls.channel(_local(svc), str(node)) as ch:
        opened = pairing_pb2_grpc.PairingServiceStub(ch).OpenPairing(pairing_pb2.OpenPairingRequest(), timeout=5)
    assert opened.pin == _pin(svc) and 100 < opened.seconds_left <= 120
    res = run_shim("pair", _local(svc), "--vm", "vm1", "--pin", opened.pin, "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr


def test_anonymous_peers_reach_only_the_pairing_steps(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    _pin(audio)
    with _anonymous_channel(_local(audio)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)) == denied
        stub = audio_pb2_grpc.AudioServiceStub(ch)
        assert _code(lambda: stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )


def _forged_chain(node_ca: x509.Certificate, ca_name: x509.Name) -> tuple[bytes, bytes]:
    """A client certificate that claims every device, issued by an intermediate named `ca_name` that the (public)
    anonymous key signed: it chains to the anonymous root, which a pairing node accepts at the handshake."""
    anon_key, _ = pake.anonymous_ca()
    fake_ca_key = anon_key  # the intermediate carries a key the attacker has
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(pake.ANONYMOUS_NAME)
        .public_key(fake_ca_key.public_key())
        .serial_number(7)
        .not_valid_before(node_ca.not_valid_before_utc)
        .not_valid_after(node_ca.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(anon_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "mallory")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(8)
        .not_valid_before(node_ca.not_valid_before_utc)
        .not_valid_after(node_ca.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("rdv:device:*")]), critical=False)
        .sign(fake_ca_key, hashes.SHA256())
    )
    return pake.pem_key(key), pake.pem(leaf) + pake.pem(intermediate)


def test_a_forged_chain_through_the_anonymous_root_gets_nothing(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    _pin(audio)
    node_ca = x509.load_pem_x509_certificate((node / "ca.pem").read_bytes())
    roots = (node / "ca.pem").read_bytes()
    other = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "mallory's CA")])
    codes = []
    for name in (node_ca.subject, other):  # the node CA's own name (a clash TLS refuses) and another name
        key, chain = _forged_chain(node_ca, name)
        with grpc.secure_channel(_local(audio), grpc.ssl_channel_credentials(roots, key, chain)) as ch:
            stub = audio_pb2_grpc.AudioServiceStub(ch)
            codes.append(_code(lambda: stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)))  # noqa: B023
    assert codes[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED)
    assert codes[1] == grpc.StatusCode.PERMISSION_DENIED  # through TLS, then refused: not signed by the node CA


def test_replayed_transcript_and_swapped_ca_issue_nothing(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    pin = _pin(audio)
    address = _local(audio)
    with _anonymous_channel(address) as ch:
        stub = pairing_pb2_grpc.PairingServiceStub(ch)
        # A genuine exchange, recorded.
        side = pake.shim_side(pin)
        msg = side.start()
        begun = stub.Begin(pairing_pb2.BeginRequest(vm="vm1", devices=["audio"], spake2_message=msg), timeout=10)
        key = side.finish(begun.spake2_message)
        script = pake.transcript("vm1", ["audio"], msg, begun.spake2_message)
        _, csr = pake.make_csr("vm1")
        finish = pairing_pb2.FinishRequest(
            exchange_id=begun.exchange_id, csr_der=csr, confirm=pake.confirmation(key, "shim", script, csr)
        )
        done = stub.Finish(finish, timeout=10)
        assert pake.confirmation(key, "node", script, done.ca_pem, done.cert_pem) == done.confirm
        issued = len(json.loads((node / "pairings.json").read_text()))
        # Replayed: the same Begin gets a fresh node message, so the old confirmation does not check.
        again = stub.Begin(pairing_pb2.BeginRequest(vm="vm1", devices=["audio"], spake2_message=msg), timeout=10)
        assert again.spake2_message != begun.spake2_message
        replay = pairing_pb2.FinishRequest(exchange_id=again.exchange_id, csr_der=csr, confirm=finish.confirm)
        with pytest.raises(grpc.RpcError) as err:
            stub.Finish(replay, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The used exchange id cannot be finished twice either.
        with pytest.raises(grpc.RpcError) as err:
            stub.Finish(finish, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(json.loads((node / "pairings.json").read_text())) == issued
    # A relay that swaps in its own CA (to be pinned instead of the node's) fails the node's confirmation.
    other = x509.load_pem_x509_certificate((node / "ca.pem").read_bytes())
    with pytest.raises(pake.PairingError):
        pake.check_confirmation(
            pake.confirmation(key, "node", script, pake.pem(other) + b"\n", done.cert_pem), done.confirm, "swapped"
        )


def test_a_node_knowing_another_pin_is_refused_on_both_sides(services, tmp_path: Path) -> None:
    """A man in the middle without the node's PIN (here: the shim typed the PIN of another node, or the relay
    made up its own): the node counts a wrong PIN, the shim keeps nothing."""
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    pin = _pin(audio)
    other_pin = f"{(int(pin) + 500_000) % 10**6:06d}"
    with pytest.raises(grpc.RpcError) as err:
        shim_pairing.pair(_local(audio), "vm1", ["audio"], other_pin)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "wrong PIN" in audio.logs()


def test_revoked_certificate_is_refused_by_every_service(services, tmp_path: Path) -> None:
    node = tmp_path / "node"
    audio = services("audio", "--sink", "null", "--tls-dir", str(node), "--pairing")
    display = services("display", "--presenter", "headless", "--tls-dir", str(node))
    pin = _pin(audio)
    out = tmp_path / "vm1"
    res = run_shim("pair", _local(audio), "--vm", "vm1", "--devices", "audio,display", "--pin", pin, "--out", str(out))
    assert res.returncode == 0, res.stderr
    with tls.channel(_local(display), str(out)) as ch:
        stub = display_pb2_grpc.DisplayServiceStub(ch)
        assert _code(lambda: stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)) == grpc.StatusCode.OK
    with tls.channel(_local(audio), str(node)) as ch:
        admin = pairing_pb2_grpc.PairingServiceStub(ch)
        listed = admin.ListPairings(pairing_pb2.ListPairingsRequest(), timeout=5).pairings
        assert [(p.vm, list(p.devices), p.revoked) for p in listed] == [("vm1", ["audio", "display"], False)]
        revoked = admin.Revoke(pairing_pb2.RevokeRequest(vm="vm1"), timeout=5).revoked
        assert list(revoked) == [listed[0].serial]
        assert admin.ListPairings(pairing_pb2.ListPairingsRequest(), timeout=5).pairings[0].revoked
        bad = _code(lambda: admin.Revoke(pairing_pb2.RevokeRequest(serial="not-hex"), timeout=5))
        assert bad == grpc.StatusCode.INVALID_ARGUMENT
    for svc, stub_class in ((audio, audio_pb2_grpc.AudioServiceStub), (display, display_pb2_grpc.DisplayServiceStub)):
        with tls.channel(_local(svc), str(out)) as ch:
            stub = stub_class(ch)
            with pytest.raises(grpc.RpcError) as err:
                stub.ListSessions(common_pb2.ListSessionsRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in err.value.details()


def test_bad_configuration_is_a_usage_error(services, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    res = subprocess.run(
        [sys.executable, "-m", "services.audio", "--sink", "null", "--pairing"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode != 0 and "--pairing needs --tls-dir" in res.stderr and "Traceback" not in res.stderr
    certs_only = tmp_path / "node"
    from services.common import certs

    certs.make_ca(tmp_path / "ca")
    certs.issue(tmp_path / "ca", certs_only, "node", ["localhost"], [])
    res = subprocess.run(
        [sys.executable, "-m", "services.audio", "--sink", "null", "--pairing", "--tls-dir", str(certs_only)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode != 0 and "ca-key.pem" in res.stderr and "Traceback" not in res.stderr
    bad = run_shim("pair", "localhost:1", "--vm", "bad name!", "--pin", "123456", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--vm" in bad.stderr
    short = run_shim("pair", "localhost:1", "--vm", "vm1", "--pin", "123", "--out", str(tmp_path / "x"))
    assert short.returncode == 1 and "6 digits" in short.stderr and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------- the window alone (a clock of our own)
class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _begin(window: PairingWindow, pin: str) -> tuple[str, bytes, bytes, bytes]:
    side = pake.shim_side(pin)
    msg = side.start()
    xid, node_msg = window.begin("vm1", ["audio"], msg, "test")
    return xid, side.finish(node_msg), msg, node_msg


def test_window_times_out_and_rate_limits() -> None:
    clock = _Clock()
    shown: list[str | None] = []
    window = PairingWindow(clock=clock, on_change=shown.append)
    assert not window.is_open
    pin = window.open(120)
    assert window.is_open and shown == [pin] and re.fullmatch(r"\d{6}", pin)
    clock.t = 119.9
    assert window.is_open
    clock.t = 120.0
    assert not window.is_open and shown == [pin, None]
    pin = window.open(120)
    for _ in range(4):  # MAX_PENDING exchanges may wait at once
        _begin(window, pin)
    with pytest.raises(PairingRefused) as err:
        _begin(window, pin)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.t += 31  # the waiting exchanges expire and free their places
    for _ in range(6):  # 10 Begins a minute, finished or not
        xid, key, msg, node_msg = _begin(window, pin)
        script = pake.transcript("vm1", ["audio"], msg, node_msg)
        window.confirm(xid, b"csr", pake.confirmation(key, "shim", script, b"csr"))
    with pytest.raises(PairingRefused) as err:
        _begin(window, pin)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.t += 61
    _begin(window, pin)


def test_window_confirms_only_the_right_pin_and_counts_wrong_ones() -> None:
    window = PairingWindow(clock=_Clock())
    pin = window.open()
    xid, key, msg, node_msg = _begin(window, pin)
    script = pake.transcript("vm1", ["audio"], msg, node_msg)
    exchange = window.confirm(xid, b"csr", pake.confirmation(key, "shim", script, b"csr"))
    assert exchange.vm == "vm1" and exchange.key == key
    # The node's own confirmation cannot be reflected back as the shim's.
    xid, key, msg, node_msg = _begin(window, pin)
    script = pake.transcript("vm1", ["audio"], msg, node_msg)
    with pytest.raises(PairingRefused) as err:
        window.confirm(xid, b"csr", pake.confirmation(key, "node", script, b"csr"))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED and "2 tries left" in str(err.value)
    # A confirmation over another CSR than the one sent does not check either.
    xid, key, msg, node_msg = _begin(window, pin)
    script = pake.transcript("vm1", ["audio"], msg, node_msg)
    with pytest.raises(PairingRefused):
        window.confirm(xid, b"other csr", pake.confirmation(key, "shim", script, b"csr"))
    xid, key, msg, node_msg = _begin(window, "000000" if pin != "000000" else "111111")
    script = pake.transcript("vm1", ["audio"], msg, node_msg)
    with pytest.raises(PairingRefused) as err:
        window.confirm(xid, b"csr", pake.confirmation(key, "shim", script, b"csr"))
    assert "closed" in str(err.value)
    assert not window.is_open


def test_anonymous_credential_is_the_same_everywhere_and_cross_certificate_keeps_the_ca_key() -> None:
    a = pake.anonymous_ca()[1]
    b = pake.anonymous_ca.__wrapped__()[1]  # as another rdv build makes it (ECDSA signatures differ, not the key)
    assert a.subject == b.subject == pake.ANONYMOUS_NAME and a.public_key() == b.public_key()
    a.verify_directly_issued_by(b)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "node CA")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(key, hashes.SHA256())
    )  # fmt: skip
    cross = pake.cross_certificate(ca)
    assert cross.subject == ca.subject and cross.public_key() == ca.public_key()
    cross.verify_directly_issued_by(a)
