"""`discover`: list the rdv nodes on the local network and their devices (mDNS/DNS-SD)."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict

from services.common import discovery


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("discover", help="list rdv nodes on the local network", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="how long to listen for answers (default 3)")
    p.add_argument("--interface", action="append", default=None, metavar="IP", help="browse on this address only")
    p.add_argument("--json", action="store_true", help='one JSON object: {"services": [...]}')
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        raise SystemExit("rdv discover: --seconds must be positive")
    found = asyncio.run(discovery.browse(args.seconds, args.interface))
    if args.json:
        print(json.dumps({"services": [asdict(f) for f in found]}))
        return 0
    if not found:
        print("no rdv node answered")
        return 0
    for f in found:
        flags = ",".join(x for x, on in (("tls", f.tls), ("pairing", f.pairing)) if on) or "plaintext"
        print(f"{f.node:20s} {f.device:8s} {f.address:22s} {flags} api={f.api}")
    return 0
