"""The one bootstrap every rdv service uses: command line, logging, gRPC server with health and
reflection, message-size limits and graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rdv.common.v1 import common_pb2
from services.common import heap, logs, sessions, settings, tls
from services.common.settings import Setting
from services.common.version import VERSION

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
    servicer: object | None = None  # its ListSessions feeds the session metrics (--metrics-port)

    @classmethod
    def of(
        cls,
        file: Any,
        service: str,
        add_servicer: Callable[[Any, grpc.aio.Server], None],
        servicer: object,
        info: common_pb2.ServiceInfo,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> ServiceParts:
        """The parts of one servicer: `file` is the generated module's DESCRIPTOR, `service` its service's name,
        `add_servicer` the generated add_<service>Servicer_to_server."""
        names = [file.services_by_name[service].full_name]
        return cls(names, lambda grpc_server: add_servicer(servicer, grpc_server), info, on_stop, servicer)


def common_settings(default_port: int) -> list[Setting]:
    """The settings every service has (one table; a service adds its own with `parser(..., settings=...)`)."""
    return [
        Setting("--listen", f"127.0.0.1:{default_port}", "RDV_LISTEN", settings.host_port, metavar="HOST:PORT",
                help="address to serve on; port 0 picks a free one"),
        Setting("--log-level", "warning", "RDV_LOG_LEVEL", settings.log_level, help=", ".join(settings.LOG_LEVELS)),
        Setting("--tls-dir", None, "RDV_TLS_DIR", metavar="DIR",
                help="mTLS: folder with ca.pem, cert.pem, key.pem (make them with `python -m services.common.certs`)"),
        Setting("--insecure", False, "RDV_INSECURE", switch=True,
                help="allow plaintext on a non-loopback address: anyone on the network can then use this device"),
        Setting("--max-message-bytes", DEFAULT_MAX_MESSAGE_BYTES, "RDV_MAX_MESSAGE_BYTES",
                settings.number(1024, 2**31 - 1, integer=True), metavar="BYTES",
                help="largest gRPC message accepted or sent"),
        Setting("--keepalive", DEFAULT_KEEPALIVE, "RDV_KEEPALIVE", settings.number(0.1, 3600), metavar="SECONDS",
                help="ping each connection this often; a peer silent for as long again is dropped with its sessions"),
        Setting("--open-timeout", sessions.DEFAULT_OPEN_TIMEOUT, "RDV_OPEN_TIMEOUT", settings.number(0.01, 3600),
                metavar="SECONDS", help="a session stream that has not sent `open` by then is ended"),
        Setting("--max-sessions", sessions.DEFAULT_MAX_SESSIONS, "RDV_MAX_SESSIONS",
                settings.number(1, 100_000, integer=True), metavar="N",
                help="open sessions (streams) this service accepts at once; more are refused with RESOURCE_EXHAUSTED"),
        Setting("--pairing", False, "RDV_PAIRING", switch=True,
                help="open PIN pairing for 2 minutes at start (needs --tls-dir, where the node's CA is made on first "
                "start); the PIN is logged and shown in the display's window"),
        Setting("--tls-host", [], "RDV_TLS_HOSTS", repeat=True, metavar="NAME",
                help="a name or address shims use for this node, for the certificate made on first start "
                "(repeatable; the variable is comma-separated)"),
        Setting("--advertise", None, "RDV_ADVERTISE", settings.auto_boolean, switch=True, negatable=True,
                help="announce this service on the local network with mDNS/DNS-SD (default auto: when listening "
                "beyond loopback)"),
        Setting("--node-name", "", "RDV_NODE_NAME", metavar="NAME", help="this node's name in discovery (host name)"),
        Setting("--metrics-port", None, "RDV_METRICS_PORT", settings.number(0, 65535, integer=True), metavar="PORT",
                help="serve Prometheus metrics over HTTP on this port (0: a free one; default: none)"),
        Setting("--metrics-host", "127.0.0.1", "RDV_METRICS_HOST", metavar="HOST",
                help="address the metrics port listens on"),
    ]  # fmt: skip


def parser(service: str, default_port: int, description: str, own: Iterable[Setting] = ()) -> settings.SettingsParser:
    """The command line of `rdv-<service>`: the common settings, then the service's own table."""
    p = settings.SettingsParser(
        prog=f"rdv-{service}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every setting with a $VARIABLE also comes from that environment variable (empty = unset); "
        "a flag given on the command line wins.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    p.add_settings([*common_settings(default_port), *own])
    return p


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
    measure = None
    if args.metrics_port is not None:
        from services.common.metrics import Metrics

        measure = Metrics(service)
    server = grpc.aio.server(
        options=server_options(limit, keepalive_ms),
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        # pairing first: nothing of an unpaired peer is parsed; measuring last, around the servicer itself
        interceptors=[*interceptors, DecodeGuard(), *([measure.interceptor()] if measure else [])],
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
    if measure is not None:
        try:
            metrics_port = measure.serve(parts.servicer, args.metrics_host, args.metrics_port)
        except OSError as exc:
            await server.stop(None)
            raise SystemExit(
                f"rdv {service}: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror}"
            ) from None
    heap.settle()  # before SERVING: sessions start on a heap whose start-up objects full collections skip
    for name in [*parts.names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"rdv {service} listening on {args.listen}", flush=True)
    log.info("serving", extra={"listen": args.listen})
    if measure is not None:  # after the line above, which scripts wait for first
        print(f"rdv {service} metrics on http://{args.metrics_host}:{metrics_port}/metrics", flush=True)
        log.info("metrics", extra={"port": metrics_port})
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
    if measure is not None:
        measure.stop()
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
        if sessions.parses_its_requests(handler.stream_stream):
            return handler  # its stream ends malformed messages itself (see `sessions.parses_own_requests`)
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
