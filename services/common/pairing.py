"""PIN pairing on the node: the pairing window (PIN, time limit, tries, rate limit) and `rdv.pairing.v1`.

Pairing is closed unless opened: by `--pairing` at start, by `OpenPairing` from the node itself, or by a key in
the display's window. Open, it shows a fresh 6-digit PIN (log line `msg="pairing open" pin=NNNNNN`, and the
display's window) for two minutes; three wrong PINs close it; Begin is rate-limited. See services/common/pake.py
for the exchange.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from rdv.pairing.v1 import pairing_pb2, pairing_pb2_grpc
from services.common import certs, logs, pake, tls
from services.common.node_ca import NodeCa

DEFAULT_SECONDS = 120.0
MAX_SECONDS = 3600.0
MAX_WRONG = 3
EXCHANGE_SECONDS = 30.0
MAX_PENDING = 4
BEGIN_BURST = 10  # Begins accepted per BEGIN_WINDOW seconds
BEGIN_WINDOW = 60.0
SERVICE_NAME = pairing_pb2.DESCRIPTOR.services_by_name["PairingService"].full_name
_log = logs.get("pairing")


class PairingRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Exchange:
    vm: str
    devices: list[str]
    transcript: bytes
    key: bytes
    peer: str
    started: float


@dataclass
class PairingWindow:
    """The node's pairing state (thread-safe: the display's window opens it from its own thread)."""

    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[str | None], None] | None = None  # the PIN while open, None when closed (the overlay)
    service: str = ""
    _pin: str | None = None
    _until: float = 0.0
    _wrong: int = 0
    _begins: deque[float] = field(default_factory=deque)
    _exchanges: dict[str, _Exchange] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_locked()

    def _open_locked(self) -> bool:
        if self._pin is not None and self.clock() >= self._until:
            self._close_locked("time is up")
        return self._pin is not None

    @property
    def pin(self) -> str | None:
        with self._lock:
            return self._pin if self._open_locked() else None

    def seconds_left(self) -> float:
        with self._lock:
            return max(0.0, self._until - self.clock()) if self._open_locked() else 0.0

    def open(self, seconds: float = DEFAULT_SECONDS) -> str:
        """Open with a fresh PIN (a window already open gets a new PIN and time)."""
        with self._lock:
            self._pin = f"{secrets.randbelow(10**pake.PIN_DIGITS):0{pake.PIN_DIGITS}d}"
            self._until = self.clock() + seconds
            self._wrong = 0
            self._exchanges.clear()
            pin = self._pin
        _log.warning("pairing open", extra={"pin": pin, "seconds": round(seconds), "service": self.service})
        if self.on_change:
            self.on_change(pin)
        return pin

    def close(self, why: str) -> None:
        with self._lock:
            self._close_locked(why)

    def _close_locked(self, why: str) -> None:
        if self._pin is None:
            return
        self._pin = None
        self._exchanges.clear()
        _log.warning("pairing closed", extra={"why": why, "service": self.service})
        if self.on_change:
            self.on_change(None)

    def begin(self, vm: str, devices: list[str], shim_message: bytes, peer: str) -> tuple[str, bytes]:
        with self._lock:
            if not self._open_locked():
                raise PairingRefused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "pairing is not open on this node: open it there (start the service with --pairing, press P "
                    "in the display's window, or call OpenPairing on the node), then use the PIN it shows",
                )
            now = self.clock()
            while self._begins and now - self._begins[0] > BEGIN_WINDOW:
                self._begins.popleft()
            for xid in [x for x, e in self._exchanges.items() if now - e.started > EXCHANGE_SECONDS]:
                del self._exchanges[xid]
            if len(self._begins) >= BEGIN_BURST or len(self._exchanges) >= MAX_PENDING:
                raise PairingRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pairing attempts: wait a minute")
            self._begins.append(now)
            side = pake.node_side(self._pin or "")
            node_message = side.start()
            try:
                key = side.finish(shim_message)
            except Exception as exc:  # spake2 raises its own errors for a message of the wrong size or point
                raise PairingRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad SPAKE2 message: {exc}") from exc
            xid = secrets.token_hex(16)
            self._exchanges[xid] = _Exchange(
                vm, devices, pake.transcript(vm, devices, shim_message, node_message), key, peer, now
            )
            return xid, node_message

    def confirm(self, exchange_id: str, csr_der: bytes, shim_confirm: bytes) -> _Exchange:
        """The shim's key confirmation: the exchange, or PERMISSION_DENIED for a wrong PIN (counted)."""
        with self._lock:
            if not self._open_locked():
                raise PairingRefused(
                    grpc.StatusCode.FAILED_PRECONDITION, "pairing closed before this exchange finished"
                )
            exchange = self._exchanges.pop(exchange_id, None)
            if exchange is None:
                raise PairingRefused(
                    grpc.StatusCode.NOT_FOUND, "no such pairing exchange (expired or used): begin again"
                )
            expected = pake.confirmation(exchange.key, "shim", exchange.transcript, csr_der)
            try:
                pake.check_confirmation(expected, shim_confirm, "wrong PIN")
            except pake.PairingError:
                self._wrong += 1
                left = MAX_WRONG - self._wrong
                _log.warning("pairing: wrong PIN", extra={"peer": exchange.peer, "tries_left": left})
                if left <= 0:
                    self._close_locked(f"{MAX_WRONG} wrong PINs")
                    raise PairingRefused(
                        grpc.StatusCode.PERMISSION_DENIED, f"wrong PIN; pairing is now closed after {MAX_WRONG} tries"
                    ) from None
                raise PairingRefused(grpc.StatusCode.PERMISSION_DENIED, f"wrong PIN ({left} tries left)") from None
            return exchange


def _check_request(vm: str, devices: list[str]) -> None:
    if not pake.VM_NAME.fullmatch(vm):
        raise PairingRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            "vm must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    if not devices or len(set(devices)) != len(devices) or any(d not in certs.DEVICES for d in devices):
        raise PairingRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"devices must be distinct names from {', '.join(certs.DEVICES)}"
        )


class PairingServicer(pairing_pb2_grpc.PairingServiceServicer):
    def __init__(self, window: PairingWindow, ca: NodeCa) -> None:
        self.window = window
        self.ca = ca

    async def _run(self, context: grpc.aio.ServicerContext, step: Callable[[], object], admin: bool = False) -> object:
        if admin and not tls.is_loopback_peer(context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only the node itself (loopback) may do this")
        try:
            return step()
        except PairingRefused as exc:
            await context.abort(exc.code, str(exc))

    async def Begin(  # noqa: N802
        self, request: pairing_pb2.BeginRequest, context: grpc.aio.ServicerContext
    ) -> pairing_pb2.BeginResponse:
        def step() -> pairing_pb2.BeginResponse:
            devices = list(request.devices)
            _check_request(request.vm, devices)
            xid, message = self.window.begin(request.vm, devices, request.spake2_message, context.peer())
            return pairing_pb2.BeginResponse(exchange_id=xid, spake2_message=message)

        return await self._run(context, step)

    async def Finish(  # noqa: N802
        self, request: pairing_pb2.FinishRequest, context: grpc.aio.ServicerContext
    ) -> pairing_pb2.FinishResponse:
        def step() -> pairing_pb2.FinishResponse:
            exchange = self.window.confirm(request.exchange_id, request.csr_der, request.confirm)
            try:
                cert_pem = self.ca.issue(request.csr_der, exchange.vm, exchange.devices, exchange.peer)
            except ValueError as exc:
                raise PairingRefused(grpc.StatusCode.INVALID_ARGUMENT, f"bad certificate request: {exc}") from exc
            ca_pem = pake.pem(self.ca.ca_cert)
            confirm = pake.confirmation(exchange.key, "node", exchange.transcript, ca_pem, cert_pem)
            return pairing_pb2.FinishResponse(ca_pem=ca_pem, cert_pem=cert_pem, confirm=confirm)

        return await self._run(context, step)

    async def OpenPairing(  # noqa: N802
        self, request: pairing_pb2.OpenPairingRequest, context: grpc.aio.ServicerContext
    ) -> pairing_pb2.OpenPairingResponse:
        def step() -> pairing_pb2.OpenPairingResponse:
            seconds = float(request.seconds or DEFAULT_SECONDS)
            if seconds > MAX_SECONDS:
                raise PairingRefused(grpc.StatusCode.INVALID_ARGUMENT, f"seconds: at most {MAX_SECONDS:g}")
            pin = self.window.open(seconds)
            return pairing_pb2.OpenPairingResponse(pin=pin, seconds_left=self.window.seconds_left())

        return await self._run(context, step, admin=True)

    async def ListPairings(  # noqa: N802
        self, request: pairing_pb2.ListPairingsRequest, context: grpc.aio.ServicerContext
    ) -> pairing_pb2.ListPairingsResponse:
        def step() -> pairing_pb2.ListPairingsResponse:
            records = [
                pairing_pb2.PairingRecord(
                    serial=r.get("serial", ""),
                    vm=r.get("vm", ""),
                    devices=r.get("devices", []),
                    issued_unix=int(r.get("issued_unix", 0)),
                    revoked=bool(r.get("revoked")),
                    peer=r.get("peer", ""),
                )
                for r in self.ca.pairings()
            ]
            return pairing_pb2.ListPairingsResponse(pairings=records)

        return await self._run(context, step, admin=True)

    async def Revoke(  # noqa: N802
        self, request: pairing_pb2.RevokeRequest, context: grpc.aio.ServicerContext
    ) -> pairing_pb2.RevokeResponse:
        def step() -> pairing_pb2.RevokeResponse:
            serial = request.serial.strip().lower()
            if not serial and not request.vm:
                raise PairingRefused(grpc.StatusCode.INVALID_ARGUMENT, "name a serial or a vm to revoke")
            if serial and (len(serial) > 40 or any(c not in "0123456789abcdef" for c in serial)):
                raise PairingRefused(grpc.StatusCode.INVALID_ARGUMENT, "serial: a hex number as ListPairings shows it")
            return pairing_pb2.RevokeResponse(revoked=self.ca.revoke(serial, request.vm))

        return await self._run(context, step, admin=True)


def add_to_server(server: grpc.aio.Server, window: PairingWindow, ca: NodeCa) -> None:
    pairing_pb2_grpc.add_PairingServiceServicer_to_server(PairingServicer(window, ca), server)
