"""`python -m services.common.healthcheck HOST:PORT`: exit 0 if the rdv service there reports SERVING.

For container HEALTHCHECKs and scripts: asks the standard gRPC health service (the one every rdv service
registers through services/common/server.py), so it needs nothing but the Python packages rdv already has.
Exit codes: 0 SERVING, 1 not serving (or NOT_FOUND for --service), 2 unreachable or timed out.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import tls
from services.common.version import VERSION


def check(address: str, service: str = "", timeout: float = 3.0, tls_dir: str | None = None) -> int:
    with tls.channel(address, tls_dir) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1 if exc.code() == grpc.StatusCode.NOT_FOUND else 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{address}: {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.common.healthcheck", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    p.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("RDV_HEALTHCHECK", os.environ.get("RDV_LISTEN", "127.0.0.1:50051")),
        help="HOST:PORT (default $RDV_HEALTHCHECK, else $RDV_LISTEN, else 127.0.0.1:50051); "
        "a 0.0.0.0 host is asked on 127.0.0.1",
    )
    p.add_argument("--service", default="", help="a fully qualified service name; empty = the whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument(
        "--tls-dir", default=os.environ.get("RDV_TLS_DIR") or None, help="mTLS folder (default $RDV_TLS_DIR)"
    )
    args = p.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"  # a wildcard listen address is not somewhere to connect to
    return check(f"{host}:{port}", args.service, args.timeout, args.tls_dir)


if __name__ == "__main__":
    sys.exit(main())
