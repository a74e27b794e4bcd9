"""`pair`: pair this VM's shim with a remote node by the 6-digit PIN the node shows.

On the node, open pairing (start a service with --pairing, press Ctrl+Alt+P in the display's window, or call
OpenPairing there); it shows a PIN for two minutes. Here:

    rdv-shim pair tv.lan:50052 --vm vm1 --devices audio,display,input --pin 123456 --out ~/.rdv/vm1

Then give the shim commands `--tls-dir ~/.rdv/vm1`. Nothing is written unless the node proved it knows the PIN.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from frontend_shim.links import pairing
from services.common import certs, pake


def _devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in devices if d not in certs.DEVICES]
    if not devices or bad or len(set(devices)) != len(devices):
        raise argparse.ArgumentTypeError(f"a comma-separated list of distinct devices from {', '.join(certs.DEVICES)}")
    return devices


def _vm(text: str) -> str:
    if not pake.VM_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError("1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pair", help="pair with a remote node by the PIN it shows", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("node", metavar="HOST:PORT", help="any service of the node (audio, display or input)")
    p.add_argument("--vm", required=True, type=_vm, help="this VM's name")
    p.add_argument("--devices", type=_devices, default=list(certs.DEVICES), help="audio,display,input (default all)")
    p.add_argument("--pin", help="the PIN the node shows (asked for when not given)")
    p.add_argument("--out", required=True, type=Path, help="folder to write ca.pem, cert.pem, key.pem into")
    p.add_argument("--force", action="store_true", help="replace a pairing already in --out")
    p.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.force and any((args.out / f).exists() for f in pairing.FILES):
        print(f"rdv pair: {args.out} already holds a pairing; pass --force to replace it", file=sys.stderr)
        return 2
    pin = args.pin if args.pin is not None else input("PIN shown on the node: ").strip()
    try:
        paired = pairing.pair(args.node, args.vm, args.devices, pin, args.timeout)
        pairing.write(args.out, paired)
    except pake.PairingError as exc:
        print(f"rdv pair: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"rdv pair: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"rdv pair: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"paired vm {args.vm} with {args.node} for {','.join(args.devices)} (certificate {paired.serial}, node CA "
        f"sha256 {paired.ca_fingerprint[:16]}…); use --tls-dir {args.out}"
    )
    return 0
