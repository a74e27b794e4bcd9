"""What the shim and the node share for PIN pairing: the SPAKE2 sides, the key confirmations and the anonymous
pairing credential.

The anonymous credential: until a shim is paired it has no certificate of the node's CA, and gRPC's TLS verifies
both ends. So every rdv build derives the same "anonymous pairing" CA from a fixed seed. Its private key is public
by construction: a certificate it signs proves nothing about anyone. It only gets a TLS handshake through while a
node is open for pairing, and the node's interceptor lets such a peer call nothing but Begin and Finish. The node
also presents a cross-certificate of its own CA signed by that key, so the shim's TLS accepts the node without
knowing its CA yet. All the trust comes from SPAKE2 and the PIN: both sides prove they know the PIN with HMACs
over the whole exchange before anything is issued (shim first) or written (node's confirmation covers the CA and
the certificate the shim then pins and keeps).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from spake2 import SPAKE2_A, SPAKE2_B

PIN_DIGITS = 6
VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SEED = b"rdv anonymous pairing credential v1"
_ID_SHIM = b"rdv shim"
_ID_NODE = b"rdv node"
_FOREVER = (datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), datetime.datetime(2099, 12, 31, tzinfo=datetime.UTC))
ANONYMOUS_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rdv"),
        x509.NameAttribute(NameOID.COMMON_NAME, "rdv anonymous pairing"),
    ]
)


class PairingError(ValueError):
    """A pairing message that does not check out (wrong PIN, tampered reply, malformed CSR)."""


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@cache
def anonymous_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The anonymous pairing CA: the same key and certificate in every rdv build (see the module docstring)."""
    key = ec.derive_private_key(int.from_bytes(hashlib.sha256(_SEED).digest(), "big"), ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(ANONYMOUS_NAME)
        .issuer_name(ANONYMOUS_NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_FOREVER[0])
        .not_valid_after(_FOREVER[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def anonymous_client() -> tuple[bytes, bytes]:
    """A throwaway client certificate from the anonymous CA: (key PEM, certificate PEM)."""
    ca_key, _ = anonymous_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rdv shim asking to pair")]))
        .issuer_name(ANONYMOUS_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_FOREVER[0])
        .not_valid_after(_FOREVER[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return pem_key(key), pem(cert)


def cross_certificate(node_ca: x509.Certificate) -> x509.Certificate:
    """The node's CA (its name and key) vouched for by the anonymous CA: sent after the node's certificate so a
    shim that trusts only the anonymous CA completes the handshake; a paired shim trusts the node's CA directly."""
    ca_key, _ = anonymous_ca()
    return (
        x509.CertificateBuilder()
        .subject_name(node_ca.subject)
        .issuer_name(ANONYMOUS_NAME)
        .public_key(node_ca.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(pem(node_ca)).digest()[:16], "big") >> 1)
        .not_valid_before(_FOREVER[0])
        .not_valid_after(_FOREVER[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def shim_side(pin: str) -> SPAKE2_A:
    return SPAKE2_A(pin.encode(), idA=_ID_SHIM, idB=_ID_NODE)


def node_side(pin: str) -> SPAKE2_B:
    return SPAKE2_B(pin.encode(), idA=_ID_SHIM, idB=_ID_NODE)


def transcript(vm: str, devices: list[str], shim_message: bytes, node_message: bytes) -> bytes:
    """Everything both sides said in Begin, unambiguously framed."""
    parts = [vm.encode(), ",".join(devices).encode(), shim_message, node_message]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def confirmation(key: bytes, role: str, transcript_bytes: bytes, *payloads: bytes) -> bytes:
    """HMAC over the transcript and the SHA-256 of each payload, keyed per role (a reflected MAC never checks)."""
    role_key = hmac.new(key, b"rdv pairing confirm " + role.encode(), hashlib.sha256).digest()
    mac = hmac.new(role_key, transcript_bytes, hashlib.sha256)
    for payload in payloads:
        mac.update(hashlib.sha256(payload).digest())
    return mac.digest()


def check_confirmation(expected: bytes, got: bytes, what: str) -> None:
    if not hmac.compare_digest(expected, got):
        raise PairingError(what)


def make_csr(vm: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """The shim's new key and a CSR for it (DER); the node decides what the certificate says."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rdv shim {vm}")]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.DER)
