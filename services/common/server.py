"""The one bootstrap every rdv service uses: command line, logging, gRPC server with health and
reflection, message-size limits and graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rdv.common.v1 import common_pb2
from services.common import logs, tls

VERSION = "0.1.0"
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a 1920x1080x32 raw rectangle fits; anything larger is refused


@dataclass
class ServiceParts:
    """What a service hands to `serve`: how to register its servicers and what to do at shutdown."""

    names: list[str]  # fully qualified gRPC service names, for health and reflection
    register: Callable[[grpc.aio.Server], None]
    info: common_pb2.ServiceInfo | None = None  # its `listen` is filled in once the port is bound
    on_stop: Callable[[], Awaitable[None]] | None = None


def parser(service: str, default_port: int, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Environment defaults: RDV_LISTEN, RDV_LOG_LEVEL (warning), RDV_TLS_DIR, RDV_INSECURE=1, "
            f"RDV_MAX_MESSAGE_BYTES ({DEFAULT_MAX_MESSAGE_BYTES})."
        ),
    )
    p.add_argument(
        "--listen",
        default=os.environ.get("RDV_LISTEN", f"127.0.0.1:{default_port}"),
        help=f"HOST:PORT to serve on; port 0 picks a free one (default $RDV_LISTEN or 127.0.0.1:{default_port})",
    )
    p.add_argument("--log-level", default=os.environ.get("RDV_LOG_LEVEL", "warning"), help="debug, info, warning")
    p.add_argument(
        "--tls-dir",
        default=os.environ.get("RDV_TLS_DIR") or None,
        help="mTLS: folder with ca.pem, cert.pem, key.pem (make them with `python -m services.common.certs`)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("RDV_INSECURE") == "1",
        help="allow plaintext on a non-loopback address: anyone on the network can then use this device",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(os.environ.get("RDV_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
        help="largest gRPC message accepted or sent",
    )
    return p


def service_info(service: str, listen: str, features: Iterable[str], config: dict[str, str]) -> common_pb2.ServiceInfo:
    return common_pb2.ServiceInfo(
        service=service, version=VERSION, listen=listen, features=list(features), config=config
    )


async def serve(service: str, args: argparse.Namespace, parts: ServiceParts) -> None:
    """Run until SIGINT/SIGTERM; report SERVING only once everything is registered and bound."""
    log = logs.get(service)
    limit = args.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=256,
        interceptors=[tls.PairingInterceptor(service)] if args.tls_dir else None,
    )
    parts.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*parts.names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    host, _, port = args.listen.rpartition(":")
    if args.tls_dir:
        bound = server.add_secure_port(args.listen, tls.server_credentials(args.tls_dir))
    else:
        bound = server.add_insecure_port(args.listen)
    if not bound:
        raise SystemExit(f"cannot listen on {args.listen}")
    args.listen = f"{host}:{bound}"
    if parts.info is not None:
        parts.info.listen = args.listen
    await server.start()
    for name in [*parts.names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"rdv {service} listening on {args.listen}", flush=True)
    log.info("serving", extra={"listen": args.listen})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=1.0)
    if parts.on_stop:
        await parts.on_stop()


def check_exposure(service: str, args: argparse.Namespace) -> None:
    """Refuse plaintext beyond loopback unless the user opted out, loudly."""
    if args.tls_dir or tls.is_loopback(args.listen):
        return
    if not args.insecure:
        raise SystemExit(
            f"rdv {service}: refusing to listen on {args.listen} without TLS: anyone on this network could "
            f"use the {service} device. Pair this node: `python -m services.common.certs --help`, then pass "
            "--tls-dir DIR; or pass --insecure (RDV_INSECURE=1) to accept plaintext."
        )
    print(
        f"WARNING: rdv {service} serves PLAINTEXT on {args.listen}: anyone on this network can use it (--insecure)",
        file=sys.stderr,
        flush=True,
    )


def main(service: str, args: argparse.Namespace, build: Callable[[argparse.Namespace], ServiceParts]) -> None:
    """Entry point of `python -m services.<service>`; `build` runs inside the event loop."""
    logs.setup(args.log_level)
    check_exposure(service, args)
    if args.tls_dir:
        try:
            tls.server_credentials(args.tls_dir)  # fail now, with the file's name, not deep inside gRPC
        except tls.TlsError as exc:
            raise SystemExit(f"rdv {service}: {exc}") from exc

    async def run() -> None:
        await serve(service, args, build(args))

    asyncio.run(run())
