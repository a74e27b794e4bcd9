"""mTLS for every rdv connection, and the pairing rule.

A home network is shared, so a service that listens beyond loopback must see a certificate from the rdv CA the
user created (`python -m services.common.certs`). A shim's certificate names the devices it was paired for, as
URI SANs `rdv:device:<name>` (or `rdv:device:*`); a service opens device RPCs only to a peer paired for its
device. Health and reflection only need a valid certificate, so monitoring works with any paired node.

A TLS folder holds `ca.pem` (the CA certificate), `cert.pem` and `key.pem` (this node's).
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable
from pathlib import Path

import grpc

DEVICE_URI_PREFIX = "rdv:device:"
_OPEN_SERVICES = ("grpc.health.v1.", "grpc.reflection.")


class TlsError(RuntimeError):
    pass


def _read(tls_dir: str, name: str) -> bytes:
    path = Path(tls_dir) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}; create it with `python -m services.common.certs`") from exc


def server_credentials(tls_dir: str) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(_read(tls_dir, "key.pem"), _read(tls_dir, "cert.pem"))],
        root_certificates=_read(tls_dir, "ca.pem"),
        require_client_auth=True,
    )


def channel_credentials(tls_dir: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_dir, "ca.pem"),
        private_key=_read(tls_dir, "key.pem"),
        certificate_chain=_read(tls_dir, "cert.pem"),
    )


def channel(target: str, tls_dir: str | None, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A client channel: mTLS with `tls_dir`, plaintext without."""
    if tls_dir:
        return grpc.secure_channel(target, channel_credentials(tls_dir), options)
    return grpc.insecure_channel(target, options)


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "0.0.0.0"/"::": reachable from the network


def peer_devices(context: grpc.aio.ServicerContext) -> set[str]:
    """Devices the peer's certificate was paired for (empty without TLS)."""
    sans = context.auth_context().get("x509_subject_alternative_name", [])
    return {san.decode()[len(DEVICE_URI_PREFIX) :] for san in sans if san.decode().startswith(DEVICE_URI_PREFIX)}


class PairingInterceptor(grpc.aio.ServerInterceptor):
    """Refuses device RPCs from certificates not paired for `device` (PERMISSION_DENIED)."""

    def __init__(self, device: str) -> None:
        self.device = device

    async def intercept_service(
        self,
        continuation: Callable,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.lstrip("/").startswith(_OPEN_SERVICES):
            return handler
        return _guarded(handler, self.device)


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _guarded(handler: grpc.RpcMethodHandler, device: str) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        allowed = peer_devices(context)
        if device not in allowed and "*" not in allowed:
            paired = ", ".join(sorted(allowed)) or "nothing"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is paired for {paired}, not for {device}; issue one with "
                f"`python -m services.common.certs shim --devices {device}`",
            )

    for kind, make in _KINDS:
        inner = getattr(handler, kind)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):

            async def behaviour(request: object, context: grpc.aio.ServicerContext, inner: Callable = inner) -> object:
                await check(context)
                async for item in inner(request, context):
                    yield item

        else:

            async def behaviour(request: object, context: grpc.aio.ServicerContext, inner: Callable = inner) -> object:
                await check(context)
                return await inner(request, context)

        return make(behaviour, handler.request_deserializer, handler.response_serializer)
    return handler
