"""The shim's side of PIN pairing (services/common/pake.py): ask a node for a certificate for a VM's devices,
check the node's answer against the PIN, and only then write `ca.pem`, `cert.pem`, `key.pem`."""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from rdv.pairing.v1 import pairing_pb2, pairing_pb2_grpc
from services.common import pake, tls
from services.common.pake import PairingError

FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclass
class Paired:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    serial: str
    ca_fingerprint: str


def _tls_name(address: str, key_pem: bytes, cert_pem: bytes, timeout: float) -> str:
    """A name the node's certificate carries, to verify it under: until pairing is done the node's identity
    comes from the PIN, not from the name the user typed (a bare IP, a container's address)."""
    host, _, port = address.rpartition(":")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k").write_bytes(key_pem)
        (Path(tmp) / "c").write_bytes(cert_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=None) as conn:
                der = conn.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if sans is not None:
        for name in [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]:
            return name
    raise PairingError("the node's certificate names no host")


def pair(address: str, vm: str, devices: list[str], pin: str, timeout: float = 10.0) -> Paired:
    """Run the exchange; PairingError or grpc.RpcError when it fails (nothing is kept)."""
    if not (len(pin) == pake.PIN_DIGITS and pin.isdigit()):
        raise PairingError(f"the PIN is {pake.PIN_DIGITS} digits")
    anon_key, anon_cert = pake.anonymous_client()
    try:
        name = _tls_name(address, anon_key, anon_cert, timeout)
    except (OSError, ssl.SSLError) as exc:
        raise PairingError(f"cannot reach {address}: {exc}") from exc
    credentials = grpc.ssl_channel_credentials(pake.pem(pake.anonymous_ca()[1]), anon_key, anon_cert)
    with grpc.secure_channel(address, credentials, [("grpc.ssl_target_name_override", name)]) as channel:
        stub = pairing_pb2_grpc.PairingServiceStub(channel)
        side = pake.shim_side(pin)
        shim_message = side.start()
        begun = stub.Begin(
            pairing_pb2.BeginRequest(vm=vm, devices=devices, spake2_message=shim_message), timeout=timeout
        )
        try:
            key = side.finish(begun.spake2_message)
        except Exception as exc:  # spake2's own errors for a bad point
            raise PairingError(f"the node's SPAKE2 message is not valid: {exc}") from exc
        script = pake.transcript(vm, devices, shim_message, begun.spake2_message)
        private, csr_der = pake.make_csr(vm)
        confirm = pake.confirmation(key, "shim", script, csr_der)
        done = stub.Finish(
            pairing_pb2.FinishRequest(exchange_id=begun.exchange_id, csr_der=csr_der, confirm=confirm), timeout=timeout
        )
    expected = pake.confirmation(key, "node", script, done.ca_pem, done.cert_pem)
    pake.check_confirmation(expected, done.confirm, "the node's answer does not match the PIN: nothing was kept")
    try:
        ca = x509.load_pem_x509_certificate(done.ca_pem)
        cert = x509.load_pem_x509_certificate(done.cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PairingError(f"the node sent a certificate that does not verify: {exc}") from exc
    if cert.public_key() != private.public_key():
        raise PairingError("the node's certificate is not for the key this shim made")
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    got = sorted(u[len(tls.DEVICE_URI_PREFIX) :] for u in uris if u.startswith(tls.DEVICE_URI_PREFIX))
    if got != sorted(devices):
        raise PairingError(f"the node's certificate covers {got}, not the devices asked for {sorted(devices)}")
    return Paired(
        done.ca_pem,
        done.cert_pem,
        pake.pem_key(private),
        f"{cert.serial_number:x}",
        ca.fingerprint(hashes.SHA256()).hex(),
    )


def write(out: Path, paired: Paired) -> None:
    """The TLS folder for `--tls-dir`: ca.pem (the node's CA, pinned), cert.pem, key.pem (0600)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.pem").write_bytes(paired.ca_pem)
    (out / "cert.pem").write_bytes(paired.cert_pem)
    fd = os.open(out / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(paired.key_pem)
