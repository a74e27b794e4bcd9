"""mTLS for every rdv connection, and the pairing rule.

A home network is shared, so a service that listens beyond loopback must see a certificate from the rdv CA the
user created (`python -m services.common.certs`). A shim's certificate names the devices it was paired for, as
URI SANs `rdv:device:<name>` (or `rdv:device:*`); a service opens device RPCs only to a peer paired for its
device. Health and reflection only need a valid certificate, so monitoring works with any paired node.

A TLS folder holds `ca.pem` (the CA certificate), `cert.pem` and `key.pem` (this node's). A node that pairs
shims by PIN also holds `ca-key.pem`, `pairings.json` and `revoked.txt` (serials every service refuses).

Who a peer is, is decided here once for every RPC: a certificate the node's CA signed directly (and not
revoked) is paired for the devices it names; anything else that got through TLS is an anonymous pairing peer
(services/common/pake.py), which may call only the two pairing steps.
"""

from __future__ import annotations

import contextvars
import inspect
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from services.common import logs

DEVICE_URI_PREFIX = "rdv:device:"
VM_URI_PREFIX = "rdv:vm:"
REVOKED_FILE = "revoked.txt"
_OPEN_SERVICES = ("grpc.health.v1.", "grpc.reflection.")
ANONYMOUS_METHODS = ("/rdv.pairing.v1.PairingService/Begin", "/rdv.pairing.v1.PairingService/Finish")
_log = logs.get("tls")


class TlsError(RuntimeError):
    pass


def _read(tls_dir: str, name: str) -> bytes:
    path = Path(tls_dir) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}; create it with `python -m services.common.certs`") from exc


def server_credentials(tls_dir: str, pairing: bool = False) -> grpc.ServerCredentials:
    """mTLS that requires a client certificate. A node that pairs (`pairing`) also accepts the anonymous pairing
    credential at the handshake and sends the cross-certificate of its CA after its own, so a shim that is not
    paired yet reaches Begin and Finish; the interceptor lets such a peer call nothing else, and Begin refuses
    (FAILED_PRECONDITION) while pairing is closed."""
    key, cert, ca = _read(tls_dir, "key.pem"), _read(tls_dir, "cert.pem"), _read(tls_dir, "ca.pem")
    if not pairing:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    from services.common import pake  # only nodes that pair need SPAKE2's dependencies

    chain = cert + pake.pem(pake.cross_certificate(x509.load_pem_x509_certificate(ca)))
    roots = ca + pake.pem(pake.anonymous_ca()[1])
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=roots, require_client_auth=True)


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


@dataclass(frozen=True)
class Peer:
    """Who is calling, by its certificate: paired (signed by this node's CA) or an anonymous pairing peer."""

    paired: bool
    devices: frozenset[str]
    vm: str = ""
    serial: str = ""


ANONYMOUS = Peer(False, frozenset())
_CALLER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("rdv_tls_caller", default=None)


def not_in_scope(vm: str) -> str:
    """What PERMISSION_DENIED says when the caller's certificate (see vm_scope) names another VM than `vm`."""
    return f"this certificate is paired for vm {vm_scope()!r}; {vm!r} is another VM"


def vm_scope() -> str:
    """The one VM the RPC being served may see and control: the `rdv:vm:` name of the caller's certificate.
    Empty: any VM (no TLS, or a certificate without a VM name, like a node's own)."""
    peer = _CALLER.get()
    return peer.vm if peer is not None else ""


class RevocationList:
    """`revoked.txt` in a TLS folder: one hex serial a line, re-read when it changes."""

    def __init__(self, tls_dir: str) -> None:
        self.path = Path(tls_dir) / REVOKED_FILE
        self._stamp: tuple[int, int] | None = None
        self._serials: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def serials(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return frozenset()
        with self._lock:
            if stamp != self._stamp:
                try:
                    text = self.path.read_text()
                except OSError as exc:
                    _log.warning("cannot read revocation list", extra={"path": str(self.path), "error": exc.strerror})
                    return self._serials
                self._serials = frozenset(line.strip().lower() for line in text.splitlines() if line.strip())
                self._stamp = stamp
            return self._serials


class PeerCheck:
    """Decides who a TLS peer is: the certificate must be signed directly by the node's CA (a chain through any
    other CA the handshake accepted, the anonymous one included, proves nothing) and not revoked."""

    def __init__(self, tls_dir: str) -> None:
        self.ca = x509.load_pem_x509_certificate(_read(tls_dir, "ca.pem"))
        self.revoked = RevocationList(tls_dir)
        self._known: dict[bytes, Peer] = {}

    def peer(self, context: grpc.aio.ServicerContext) -> Peer:
        pems = context.auth_context().get("x509_pem_cert", [])
        if not pems:
            return ANONYMOUS
        peer = self._known.get(pems[0])
        if peer is None:
            peer = self._identify(pems[0])
            if len(self._known) > 1024:
                self._known.clear()
            self._known[pems[0]] = peer
        if peer.paired and peer.serial in self.revoked.serials():
            return Peer(False, frozenset(), peer.vm, peer.serial)
        return peer

    def _identify(self, pem: bytes) -> Peer:
        try:
            cert = x509.load_pem_x509_certificate(pem)
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            return ANONYMOUS
        uris = _uris(cert)
        devices = frozenset(u[len(DEVICE_URI_PREFIX) :] for u in uris if u.startswith(DEVICE_URI_PREFIX))
        return Peer(True, devices, _vm(uris), f"{cert.serial_number:x}")


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return sans.get_values_for_type(x509.UniformResourceIdentifier)


def _vm(uris: list[str]) -> str:
    return next((u[len(VM_URI_PREFIX) :] for u in uris if u.startswith(VM_URI_PREFIX)), "")


def certificate_vm(tls_dir: str | None) -> str:
    """The VM the certificate in `tls_dir` is made for (its `rdv:vm:` name); "" for none or no readable one."""
    if not tls_dir:
        return ""
    try:
        cert = x509.load_pem_x509_certificate((Path(tls_dir) / "cert.pem").read_bytes())
    except (OSError, ValueError):
        return ""
    return _vm(_uris(cert))


def is_loopback_peer(context: grpc.aio.ServicerContext) -> bool:
    """The caller runs on this machine (gRPC's peer string: ipv4:127.0.0.1:PORT, ipv6:[::1]:PORT, unix:...)."""
    peer = context.peer()
    if peer.startswith("unix:"):
        return True
    host = peer.partition(":")[2].rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PairingInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC over TLS: an anonymous pairing peer may call only Begin and Finish; a revoked certificate
    nothing; a device RPC needs a certificate paired for `device` (PERMISSION_DENIED otherwise)."""

    def __init__(self, device: str, tls_dir: str) -> None:
        self.device = device
        self.check = PeerCheck(tls_dir)

    async def intercept_service(
        self,
        continuation: Callable,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method in ANONYMOUS_METHODS:
            return handler
        device = None if method.lstrip("/").startswith((*_OPEN_SERVICES, "rdv.pairing.")) else self.device
        return _guarded(handler, self.check, device)


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _guarded(handler: grpc.RpcMethodHandler, peers: PeerCheck, device: str | None) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        peer = peers.peer(context)
        _CALLER.set(peer)  # the handler runs in this task: vm_scope() answers for this call
        if not peer.paired:
            why = "this certificate was revoked" if peer.serial else "this peer is not paired with this node"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{why}; pair it with `rdv-shim pair` (or `python -m services.common.certs shim`)",
            )
        if device is not None and device not in peer.devices and "*" not in peer.devices:
            paired = ", ".join(sorted(peer.devices)) or "nothing"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this certificate is paired for {paired}, not for {device}; pair again with "
                f"`rdv-shim pair --devices {device}` or issue one with "
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
