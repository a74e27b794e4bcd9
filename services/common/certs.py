"""`python -m services.common.certs`: a small CA for one home, and the certificates that pair shims with it.

    certs ca      --dir ~/.rdv/ca
    certs service --ca ~/.rdv/ca --out ~/.rdv/remote --host tv.local --host 192.168.1.20
    certs shim    --ca ~/.rdv/ca --out ~/.rdv/vm1 --name vm1 --devices audio,display,input

Each output folder is a `--tls-dir` for services and shims: ca.pem, cert.pem, key.pem (mode 0600; with
`--group GID` 0640 and owned by that group, for a service that runs as another user in that group).
A service certificate names localhost, 127.0.0.1, the compose service names (audio, display, input: the node's
services reach each other by them) and every --host.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.tls import DEVICE_URI_PREFIX, VM_URI_PREFIX
from services.common.version import VERSION

DEVICES = ("audio", "display", "input")
SERVICE_NAMES = ("localhost", "127.0.0.1", *DEVICES)  # in every service certificate (compose service names)
_DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rdv"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _write_private(path: Path, data: bytes, group: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        if group is not None:
            os.fchown(f.fileno(), -1, group)
            os.fchmod(f.fileno(), 0o640)
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(folder: Path, common_name: str = "rdv home CA") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(folder / "ca-key.pem", _pem_key(key))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue(
    ca_dir: Path,
    out: Path,
    common_name: str,
    hosts: list[str],
    devices: list[str],
    group: int | None = None,
    vm: str = "",
) -> None:
    """A leaf certificate for a service (hosts) and/or a client paired for `devices` (and for VM `vm` alone)."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names += [x509.UniformResourceIdentifier(f"{DEVICE_URI_PREFIX}{d}") for d in devices]
    if vm:
        names.append(x509.UniformResourceIdentifier(f"{VM_URI_PREFIX}{vm}"))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 730 * _DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (out / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(out / "key.pem", _pem_key(key), group)


def _devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in devices if d not in (*DEVICES, "*")]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown device {unknown[0]!r}: choose from {', '.join(DEVICES)} or *")
    return devices


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.common.certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = p.add_subparsers(dest="what", required=True)
    ca = sub.add_parser("ca", help="create the home's CA (once)")
    ca.add_argument("--dir", required=True, type=Path)
    svc = sub.add_parser("service", help="a certificate for the remote node's services")
    svc.add_argument("--ca", required=True, type=Path)
    svc.add_argument("--out", required=True, type=Path)
    svc.add_argument("--host", action="append", default=[], help="name or address shims connect to (repeatable)")
    svc.add_argument("--name", default="rdv remote node")
    svc.add_argument("--devices", type=_devices, default=["input"],
                     help="devices this node may use as a client (the display service publishes input)")  # fmt: skip
    svc.add_argument("--group", type=int, metavar="GID",
                     help="make key.pem readable by this group (0640): services running as another user")  # fmt: skip
    shim = sub.add_parser("shim", help="pair a shim (one VM) with the remote node's devices")
    shim.add_argument("--ca", required=True, type=Path)
    shim.add_argument("--out", required=True, type=Path)
    shim.add_argument("--name", required=True, help="the VM's name")
    shim.add_argument("--devices", type=_devices, default=list(DEVICES), help="comma-separated: audio,display,input")
    args = p.parse_args(argv)
    try:
        if args.what == "ca":
            if (args.dir / "ca-key.pem").exists():
                print(f"{args.dir} already holds a CA; not overwriting it", file=sys.stderr)
                return 1
            make_ca(args.dir)
            print(f"CA created in {args.dir} (keep ca-key.pem private)")
        elif args.what == "service":
            hosts = [*SERVICE_NAMES, *(h for h in args.host if h not in SERVICE_NAMES)]
            issue(args.ca, args.out, args.name, hosts, args.devices, args.group)
            print(f"service certificate in {args.out}: start services with --tls-dir {args.out}")
        else:
            issue(args.ca, args.out, f"rdv shim {args.name}", [], args.devices, vm=args.name)
            print(f"shim {args.name} paired for {', '.join(args.devices)}: run the shim with --tls-dir {args.out}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
