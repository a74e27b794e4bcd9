"""The remote node's CA in its TLS folder: made on the first start of a service that pairs, it signs the
certificates PIN pairing issues and keeps what it issued (`pairings.json`) and what was revoked (`revoked.txt`).

The three services of a node share one folder (compose mounts one volume): every change happens under an
exclusive lock on `.rdv-lock` in it, and files are replaced atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.common import certs, logs
from services.common.tls import DEVICE_URI_PREFIX, REVOKED_FILE, VM_URI_PREFIX, RevocationList, TlsError

PAIRINGS_FILE = "pairings.json"
CERT_DAYS = 730
_log = logs.get("pairing")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".rdv-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def default_hosts(listen: str) -> list[str]:
    """Names a shim may use for this node: loopback, the host name, and the addresses listened on."""
    from services.common import discovery

    host = listen.rpartition(":")[0].strip("[]")
    name = socket.gethostname()
    hosts = ["localhost", "127.0.0.1", "::1", name, f"{name}.local"]
    # Listening on every address, the node is reached at any of them (discovery announces them all).
    for address in discovery.addresses(host):
        if address not in hosts:
            hosts.append(address)
    return hosts


class NodeCa:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        self._ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), password=None)

    @classmethod
    def ensure(cls, folder: Path, hosts: list[str]) -> NodeCa:
        """The node's CA, made on the first start (a new CA and a certificate for the services naming `hosts`).
        A folder with certificates but no CA key cannot pair: TlsError says so."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with _locked(folder):
                if not (folder / "ca.pem").exists():
                    certs.make_ca(folder, f"rdv node CA {socket.gethostname()}")
                    _log.warning("created the node's CA", extra={"dir": str(folder)})
                if not (folder / "ca-key.pem").exists():
                    raise TlsError(
                        f"{folder} has a ca.pem but no ca-key.pem: pairing signs certificates with the node's CA key; "
                        "put it there or start without --pairing"
                    )
                if not (folder / "cert.pem").exists():
                    certs.issue(folder, folder, f"rdv node {socket.gethostname()}", hosts, ["input"])
                return cls(folder)
        except OSError as exc:
            raise TlsError(f"cannot set up the node's CA in {folder}: {exc.strerror or exc}") from exc

    def issue(self, csr_der: bytes, vm: str, devices: list[str], peer: str) -> bytes:
        """Sign the CSR's key for `vm` and exactly `devices`; record it. ValueError for a CSR that is no good."""
        csr = x509.load_der_x509_csr(csr_der)
        if not csr.is_signature_valid:
            raise ValueError("the CSR's signature does not verify")
        public = csr.public_key()
        if not (
            (isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size >= 256)
            or (isinstance(public, rsa.RSAPublicKey) and public.key_size >= 2048)
        ):
            raise ValueError("the CSR's key must be EC P-256 or larger, or RSA 2048 or larger")
        now = datetime.datetime.now(datetime.UTC)
        names = [x509.UniformResourceIdentifier(f"{DEVICE_URI_PREFIX}{d}") for d in devices]
        names.append(x509.UniformResourceIdentifier(f"{VM_URI_PREFIX}{vm}"))
        cert = (
            x509.CertificateBuilder()
            .subject_name(certs._name(f"rdv shim {vm}"))
            .issuer_name(self.ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        record = {
            "serial": f"{cert.serial_number:x}",
            "vm": vm,
            "devices": devices,
            "issued_unix": int(time.time()),
            "peer": peer,
        }
        with _locked(self.folder):
            records = self._records()
            records.append(record)
            _replace(self.folder / PAIRINGS_FILE, json.dumps(records, indent=1).encode())
        _log.warning("paired", extra={"vm": vm, "devices": ",".join(devices), "serial": record["serial"], "peer": peer})
        return cert.public_bytes(serialization.Encoding.PEM)

    def _records(self) -> list[dict]:
        try:
            records = json.loads((self.folder / PAIRINGS_FILE).read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise TlsError(f"cannot read {self.folder / PAIRINGS_FILE}: {exc}") from exc
        return records if isinstance(records, list) else []

    def revoked(self) -> set[str]:
        return set(RevocationList(str(self.folder)).serials())

    def pairings(self) -> list[dict]:
        revoked = self.revoked()
        return [{**r, "revoked": r.get("serial") in revoked} for r in self._records()]

    def revoke(self, serial: str = "", vm: str = "") -> list[str]:
        """Revoke one serial, or everything issued to `vm`; returns the serials newly revoked."""
        with _locked(self.folder):
            revoked = self.revoked()
            wanted = {
                r["serial"]
                for r in self._records()
                if (serial and r.get("serial") == serial.lower()) or (vm and r.get("vm") == vm)
            }
            if serial and not wanted:
                wanted = {serial.lower()}  # a certificate made by the certs CLI is not in pairings.json
            new = sorted(wanted - revoked)
            if new:
                _replace(self.folder / REVOKED_FILE, "".join(f"{s}\n" for s in sorted(revoked | set(new))).encode())
        for s in new:
            _log.warning("revoked", extra={"serial": s})
        return new
