"""The one bootstrap every rdv service uses: command line, logging, gRPC server with health and
reflection, message-size limits and graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rdv.common.v1 import common_pb2
from services.common import logs, sessions, tls

VERSION = "0.1.0"
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a 1920x1080x32 raw rectangle fits; anything larger is refused
# The server pings every connection this often and drops one whose peer does not answer within as long again:
# a shim whose host vanished (power cut, cable pulled: no FIN, no RST) is found within 2x this, and its session
# (which holds the screen, its players and a session slot) ends. A ping costs a few bytes per interval, and
# ping acks come from gRPC's core, not from the peer's Python, so a busy shim never misses one.
DEFAULT_KEEPALIVE = 10.0
MAX_CONCURRENT_RPCS = 256


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
            f"RDV_MAX_MESSAGE_BYTES ({DEFAULT_MAX_MESSAGE_BYTES}), RDV_KEEPALIVE ({DEFAULT_KEEPALIVE:g}), "
            f"RDV_OPEN_TIMEOUT ({sessions.DEFAULT_OPEN_TIMEOUT:g}), "
            f"RDV_MAX_SESSIONS ({sessions.DEFAULT_MAX_SESSIONS}), RDV_PAIRING=1, RDV_ADVERTISE (auto), "
            "RDV_NODE_NAME (the host name), RDV_TLS_HOSTS (comma-separated)."
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
    p.add_argument(
        "--keepalive",
        type=float,
        default=float(os.environ.get("RDV_KEEPALIVE", DEFAULT_KEEPALIVE)),
        metavar="SECONDS",
        help="ping each connection this often; a peer silent for as long again is dropped with its sessions",
    )
    p.add_argument(
        "--open-timeout",
        type=float,
        default=float(os.environ.get("RDV_OPEN_TIMEOUT", sessions.DEFAULT_OPEN_TIMEOUT)),
        metavar="SECONDS",
        help="a session stream that has not sent `open` by then is ended",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=int(os.environ.get("RDV_MAX_SESSIONS", sessions.DEFAULT_MAX_SESSIONS)),
        help="open sessions (streams) this service accepts at once; more are refused with RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--pairing",
        action="store_true",
        default=os.environ.get("RDV_PAIRING") == "1",
        help="open PIN pairing for 2 minutes at start (needs --tls-dir, where the node's CA is made on first start); "
        "the PIN is logged and shown in the display's window",
    )
    p.add_argument(
        "--tls-host",
        action="append",
        default=[h for h in os.environ.get("RDV_TLS_HOSTS", "").split(",") if h],
        metavar="NAME",
        help="a name or address shims use for this node, for the certificate made on first start (repeatable)",
    )
    p.add_argument(
        "--advertise",
        action=argparse.BooleanOptionalAction,
        default=_advertise_default(os.environ.get("RDV_ADVERTISE", "auto")),
        help="announce this service on the local network with mDNS/DNS-SD (default: when listening beyond loopback)",
    )
    p.add_argument(
        "--node-name", default=os.environ.get("RDV_NODE_NAME", ""), help="this node's name in discovery (host name)"
    )
    return p


def _advertise_default(text: str) -> bool | None:
    choices = {"auto": None, "1": True, "yes": True, "on": True, "0": False, "no": False, "off": False}
    value = choices.get(text.lower(), "")
    if value == "":
        raise SystemExit(f"RDV_ADVERTISE must be auto, 1 or 0, not {text!r}")
    return value


def service_info(service: str, listen: str, features: Iterable[str], config: dict[str, str]) -> common_pb2.ServiceInfo:
    return common_pb2.ServiceInfo(
        service=service, version=VERSION, listen=listen, features=list(features), config=config
    )


def live_info(info: common_pb2.ServiceInfo) -> common_pb2.ServiceInfo:
    """`info` plus what someone chasing a leak wants: the service's Python threads by kind (config "threads")."""
    out = common_pb2.ServiceInfo()
    out.CopyFrom(info)
    kinds = Counter(re.sub(r"[\d_-]*( \(.*\))?$", "", t.name) or "thread" for t in threading.enumerate())
    out.config["threads"] = ",".join(f"{k}:{n}" for k, n in sorted(kinds.items()))
    return out


def open_gate(args: argparse.Namespace) -> sessions.OpenGate:
    """The session-stream limits from the command line (audio and display)."""
    return sessions.OpenGate(args.open_timeout, max_sessions=args.max_sessions)


def server_options(limit: int, keepalive_ms: int) -> list[tuple[str, int]]:
    """The services' gRPC server options (also the benchmark's bare gRPC echo floor, tests/bench/floors.py)."""
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        # Any unanswered ping ends the connection, not just keepalive's: a bandwidth probe sent just before the
        # peer froze is never answered, and gRPC delays the keepalive ping behind it forever otherwise.
        ("grpc.http2.ping_timeout_ms", keepalive_ms),
        # An idle session (a guest not playing, a still desktop) carries no data: keep pinging it anyway.
        ("grpc.http2.max_pings_without_data", 0),
        # Shims ping every 10 s (their side of keepalive): accept that, refuse floods.
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ]


async def serve(service: str, args: argparse.Namespace, parts: ServiceParts) -> None:
    """Run until SIGINT/SIGTERM; report SERVING only once everything is registered and bound."""
    log = logs.get(service)
    limit = args.max_message_bytes
    keepalive_ms = max(100, int(args.keepalive * 1000))
    window = getattr(args, "pairing_window", None)
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [tls.PairingInterceptor(service, args.tls_dir)] if args.tls_dir else []
    )
    server = grpc.aio.server(
        options=server_options(limit, keepalive_ms),
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        interceptors=[*interceptors, DecodeGuard()],  # pairing first: nothing of an unpaired peer is parsed
    )
    parts.register(server)
    names = list(parts.names)
    if window is not None:
        from services.common import pairing

        pairing.add_to_server(server, window, args.node_ca)
        names.append(pairing.SERVICE_NAME)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    host, _, port = args.listen.rpartition(":")
    if args.tls_dir:
        bound = server.add_secure_port(args.listen, tls.server_credentials(args.tls_dir, window is not None))
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
    if window is not None and args.pairing:
        window.open()
    advertiser = None
    if args.advertise or (args.advertise is None and not tls.is_loopback(args.listen)):
        from services.common import discovery

        advertiser = await discovery.advertise(
            service, args.listen, args.node_name, tls_on=bool(args.tls_dir), pairing=window is not None
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await health_servicer.enter_graceful_shutdown()
    if advertiser is not None:
        await advertiser.close()
    await server.stop(grace=1.0)
    if parts.on_stop:
        await parts.on_stop()


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Requests that do not parse end with INVALID_ARGUMENT. gRPC itself would answer UNKNOWN for a unary request
    (and log a traceback at error level), and a streaming handler that forgot to catch DecodeError likewise."""

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _parsing(handler)


def _parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            return parse(raw)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed message: {exc}")

    async def parsed_stream(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        async for raw in raws:
            yield await parsed(raw, context)

    if handler.request_streaming:
        inner = handler.stream_stream or handler.stream_unary

        def requests(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
            return parsed_stream(raws, context)
    else:
        inner = handler.unary_stream or handler.unary_unary
        requests = parsed

    if inspect.isasyncgenfunction(inner):

        async def behaviour(request: object, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
            async for item in inner(await _maybe(requests(request, context)), context):
                yield item

    else:

        async def behaviour(request: object, context: grpc.aio.ServicerContext) -> object:
            return await inner(await _maybe(requests(request, context)), context)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(behaviour, None, handler.response_serializer)


async def _maybe(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


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


def _pairing(service: str, args: argparse.Namespace) -> tuple[object, object]:
    """A node that holds its CA (made now on first start) can pair: its window (closed) and its CA. The window
    rides on `args` so `build` can show its PIN (the display's window) and open it (a key)."""
    from services.common.node_ca import NodeCa, default_hosts
    from services.common.pairing import PairingWindow

    ca = NodeCa.ensure(Path(args.tls_dir), [*default_hosts(args.listen), *args.tls_host])
    return PairingWindow(service=service), ca


def main(service: str, args: argparse.Namespace, build: Callable[[argparse.Namespace], ServiceParts]) -> None:
    """Entry point of `python -m services.<service>`; `build` runs inside the event loop."""
    logs.setup(args.log_level)
    check_exposure(service, args)
    args.pairing_window = args.node_ca = None
    if args.pairing and not args.tls_dir:
        raise SystemExit(f"rdv {service}: --pairing needs --tls-dir DIR, a folder where the node keeps its CA")
    if args.tls_dir:
        try:
            if args.pairing or (Path(args.tls_dir) / "ca-key.pem").exists():
                args.pairing_window, args.node_ca = _pairing(service, args)
            tls.server_credentials(args.tls_dir)  # fail now, with the file's name, not deep inside gRPC
        except tls.TlsError as exc:
            raise SystemExit(f"rdv {service}: {exc}") from exc

    async def run() -> None:
        await serve(service, args, build(args))

    asyncio.run(run())
