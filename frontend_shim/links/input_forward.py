"""Remote input into a local QEMU: subscribe to the input service, inject through QMP `input-send-event`.

Two loops share one pending list: the subscriber appends what the service sends (consecutive pointer moves
coalesce, so at most one move waits between other events) and the injector turns the pending list into QMP
commands, one command in flight at a time, so QEMU is never flooded however fast a source moves the mouse.
Each loop reconnects on its own when its peer restarts. Keys and buttons this VM holds down are released when
the subscription breaks, so a lost service cannot leave a key stuck in the guest.

One command carries at most one pointer report: QEMU's tablet only samples the pointer state at the end of a
command, so a press and its release in the same command would be a click the guest never sees, and a move
after a press would move the press. Keys queue individually in QEMU's keyboards and can share a command.

QMP is QEMU's own client library, `qemu.qmp` (greeting, capability negotiation, command ids, events).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable

import grpc
from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError, Runstate

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import logs, tls
from services.common.input_events import BUTTON_NAMES, InvalidEvent, check
from services.common.retry import Backoff

log = logs.get("shim.input")
ABS_MAX = 0x7FFF  # QEMU's absolute axes run 0..0x7fff whatever the guest's screen size
BACKOFF_FIRST = 0.05  # seconds before retrying a lost subscription or QMP socket, doubling up to BACKOFF_MAX
BACKOFF_MAX = 1.0
_MAX_PENDING = 4096
_QMP_TIMEOUT = 5.0  # seconds QEMU may take to answer; longer means it is stuck and the connection is redone
# qemu.qmp logs every failed connect, and at CRITICAL when a connect attempt is cancelled at shutdown: we log
# what matters ourselves (reachability, losses, refusals)
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL + 1)


def scale(pos: int, size: int) -> int:
    """Guest pixel -> QEMU axis value: first pixel 0, last pixel 0x7fff, so a guest that maps the axis back
    with either rounding convention lands on the same pixel."""
    return 0 if size <= 1 else (pos * ABS_MAX + (size - 1) // 2) // (size - 1)


def qmp_events(event: input_pb2.InputEvent) -> list[dict]:
    """One rdv event as QMP InputEvent objects (QEMU 7.2 names)."""
    kind = event.WhichOneof("kind")
    if kind == "pointer_move":
        m = event.pointer_move
        return [
            {"type": "abs", "data": {"axis": "x", "value": scale(m.x, m.width)}},
            {"type": "abs", "data": {"axis": "y", "value": scale(m.y, m.height)}},
        ]
    if kind == "button":
        return [{"type": "btn", "data": {"down": event.button.pressed, "button": BUTTON_NAMES[event.button.button]}}]
    if kind == "key":
        return [{"type": "key", "data": {"down": event.key.pressed, "key": {"type": "qcode", "data": event.key.qcode}}}]
    if kind == "wheel":
        out = []
        w = event.wheel
        for amount, up, down in ((w.dy, "wheel-up", "wheel-down"), (w.dx, "wheel-right", "wheel-left")):
            name = up if amount > 0 else down
            for _ in range(abs(amount)):  # a click is a press and release of the wheel "button"
                out += [{"type": "btn", "data": {"down": True, "button": name}},
                        {"type": "btn", "data": {"down": False, "button": name}}]  # fmt: skip
        return out
    return []


def split_commands(events: list[input_pb2.InputEvent]) -> list[list[input_pb2.InputEvent]]:
    """Cut an ordered event list into QMP commands, each with at most one pointer report (see module doc)."""
    commands: list[list[input_pb2.InputEvent]] = []
    current: list[input_pb2.InputEvent] = []
    buttons: set[int] = set()
    pointer_changed = wheel = False
    for e in events:
        kind = e.WhichOneof("kind")
        new = False
        if kind == "pointer_move":
            new = pointer_changed or wheel
        elif kind == "button":
            new = e.button.button in buttons or wheel
        elif kind == "wheel":
            new = wheel or pointer_changed
        if new and current:
            commands.append(current)
            current, buttons, pointer_changed, wheel = [], set(), False, False
        current.append(e)
        if kind == "button":
            buttons.add(e.button.button)
            pointer_changed = True
        elif kind == "wheel":
            wheel = True
    if current:
        commands.append(current)
    return commands


class InputForwarder:
    """Subscribes as `vm` at the input service `target` and injects into the QEMU behind `qmp_path`."""

    def __init__(
        self,
        target: str,
        qmp_path: str,
        vm: str,
        *,
        device: str | None = None,
        on_ack: Callable[[list[input_pb2.InputEvent], int], None] | None = None,
        max_pending: int = _MAX_PENDING,
        tls_dir: str | None = None,
    ) -> None:
        self.target = target
        self.tls_dir = tls_dir
        self.qmp_path = qmp_path
        self.vm = vm
        self.device = device
        self.on_ack = on_ack  # called with each command's events and the monotonic ns QEMU's reply arrived
        self.max_pending = max_pending
        self.stats: Counter[str] = Counter()
        self.subscribed = asyncio.Event()
        self.qmp_ready = asyncio.Event()
        self._pending: deque[input_pb2.InputEvent] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing pending and no command in flight
        self._held_keys: set[str] = set()
        self._held_buttons: set[int] = set()
        self._stop = asyncio.Event()
        self._closing = False  # the injector's loops end at their next turn

    async def run(self) -> None:
        """Run until `stop()`; then release what the guest still holds and deliver what is pending (1 s)."""
        subscriber = asyncio.create_task(self._subscribe_loop())
        injector = asyncio.create_task(self._inject_loop())
        try:
            await self._stop.wait()
        finally:
            subscriber.cancel()  # its loop also ends by itself once stopped (a lost cancel, see below)
            await asyncio.wait({subscriber}, timeout=5.0)  # queues the releases
            if self.qmp_ready.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), 1.0)
                except TimeoutError:
                    pass
            self._closing = True  # each loop also ends by itself: a cancel that meets a finishing wait_for is lost
            injector.cancel()
            _, pending = await asyncio.wait({injector}, timeout=5.0)
            if pending:
                log.warning("the QMP side did not stop within 5 s")

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ from the input service
    def _enqueue(self, event: input_pb2.InputEvent, count: str = "received") -> None:
        p = self._pending
        self.stats[count] += 1
        self._idle.clear()
        if event.WhichOneof("kind") == "pointer_move" and p and p[-1].WhichOneof("kind") == "pointer_move":
            p[-1] = event
            self.stats["coalesced"] += 1
        else:
            if len(p) >= self.max_pending:  # QEMU is gone or stuck: the oldest input is the least useful
                p.popleft()
                self.stats["dropped"] += 1
            p.append(event)
        self._wake.set()

    async def _subscribe_loop(self) -> None:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while not self._stop.is_set():
            options = [("grpc.keepalive_time_ms", 10_000)]
            channel = (
                grpc.aio.secure_channel(self.target, tls.channel_credentials(self.tls_dir), options)
                if self.tls_dir
                else grpc.aio.insecure_channel(self.target, options=options)
            )
            try:
                call = input_pb2_grpc.InputServiceStub(channel).Subscribe(input_pb2.SubscribeRequest(vm=self.vm))
                metadata = dict(await call.initial_metadata() or ())
                if "rdv-focus" not in metadata:  # grpc.aio gives empty metadata for a call that failed
                    await call.wait_for_connection()  # raises the call's error
                focus = metadata.get("rdv-focus", "")
                self.subscribed.set()
                self.stats["subscriptions"] += 1
                log.info("subscribed", extra={"target": self.target, "vm": self.vm, "focused": focus or "-"})
                backoff.reset()
                async for event in call:
                    try:
                        check(event)  # the service validated it; a stale or foreign one must not reach QMP
                    except InvalidEvent as exc:
                        self.stats["invalid"] += 1
                        log.warning("invalid event from the input service", extra={"error": str(exc)})
                        continue
                    self._enqueue(event)
                log.warning("input service ended the subscription", extra={"target": self.target})
            except grpc.aio.AioRpcError as exc:
                if self.subscribed.is_set() or exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning("input subscription lost", extra={"target": self.target, "code": exc.code().name,
                                                                  "detail": exc.details()})  # fmt: skip
            except Exception:  # never let one surprise end remote input for this VM
                log.exception("input subscription failed")
            finally:
                if self.subscribed.is_set():
                    self.subscribed.clear()
                    self._release_held()
                await channel.close()
            await asyncio.sleep(backoff.next())

    def _release_held(self) -> None:
        for q in sorted(self._held_keys):
            self._enqueue(input_pb2.InputEvent(key=input_pb2.Key(qcode=q, pressed=False)), "released")
        for b in sorted(self._held_buttons):
            self._enqueue(input_pb2.InputEvent(button=input_pb2.ButtonEvent(button=b, pressed=False)), "released")

    # ------------------------------------------------------------------ into QEMU
    async def _inject_loop(self) -> None:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        warned = False
        while not self._closing:
            qmp = QMPClient(self.vm)
            try:
                await asyncio.wait_for(qmp.connect(self.qmp_path), _QMP_TIMEOUT)
            except (OSError, QMPError, TimeoutError) as exc:
                if not warned:
                    error = str(exc) or type(exc).__name__
                    if isinstance(exc, ConnectError) and exc.exc is not None:
                        error = str(exc.exc) or error
                    if isinstance(exc, TimeoutError):  # QEMU serves one client per QMP socket
                        error = "no QMP greeting: is another client connected to this socket?"
                    log.warning("cannot reach QMP, retrying", extra={"qmp": self.qmp_path, "error": error})
                    warned = True
                await _disconnect(qmp)
                await asyncio.sleep(backoff.next())
                continue
            warned = False
            backoff.reset()
            self.stats["qmp_connects"] += 1
            self.qmp_ready.set()
            version = (qmp.greeting.QMP.version if qmp.greeting else {}).get("qemu", {})
            log.info("QMP connected", extra={"qmp": self.qmp_path, "qemu": "{major}.{minor}.{micro}".format_map(
                {"major": "?", "minor": "?", "micro": "?", **version})})  # fmt: skip
            watch = asyncio.create_task(self._watch(qmp))
            try:
                await self._inject(qmp)
            except ConnectionError as exc:
                log.warning("QMP connection lost, reconnecting", extra={"qmp": self.qmp_path, "error": str(exc)})
            except Exception:  # never let one surprise end remote input for this VM
                log.exception("injecting into QEMU failed, reconnecting")
                await asyncio.sleep(BACKOFF_MAX)
            finally:
                self.qmp_ready.clear()
                watch.cancel()
                await _disconnect(qmp)

    async def _watch(self, qmp: QMPClient) -> None:
        """Wake the injector when the QMP connection leaves RUNNING (QEMU went away)."""
        while qmp.runstate == Runstate.RUNNING:
            await qmp.runstate_changed()
        self._wake.set()

    async def _inject(self, qmp: QMPClient) -> None:
        while not self._closing:
            if qmp.runstate != Runstate.RUNNING:
                raise ConnectionError("QEMU closed the QMP socket")
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()  # new events, or the QMP connection ending
                continue
            batch = list(self._pending)
            self._pending.clear()
            commands = split_commands(batch)
            for i, command in enumerate(commands):
                try:
                    await self._send(qmp, command)
                except ConnectionError:
                    # not applied: put it and the rest back in front, in order, for the next connection
                    self._pending.extendleft(reversed([e for c in commands[i:] for e in c]))
                    raise

    async def _send(self, qmp: QMPClient, command: list[input_pb2.InputEvent]) -> None:
        args: dict = {"events": [q for e in command for q in qmp_events(e)]}
        if self.device:
            args["device"] = self.device
        try:
            await asyncio.wait_for(qmp.execute("input-send-event", args), _QMP_TIMEOUT)
        except TimeoutError:
            self.stats["qmp_timeouts"] += 1
            raise ConnectionError(f"QEMU did not answer input-send-event within {_QMP_TIMEOUT} s") from None
        except ExecuteError as exc:
            if len(command) > 1 and exc.error_class == "GenericError":
                # QEMU refuses the whole command if one event has no handler (e.g. no tablet for abs):
                # deliver what it can take, one event at a time
                for e in command:
                    await self._send(qmp, [e])
                return
            self.stats["qmp_errors"] += 1
            if self.stats["qmp_errors"] in (1, 10, 100) or self.stats["qmp_errors"] % 1000 == 0:
                log.warning("QEMU refused input", extra={"error": f"{exc.error_class}: {exc.error.error.desc}",
                                                         "errors": self.stats["qmp_errors"]})  # fmt: skip
            return
        except (QMPError, OSError, EOFError) as exc:  # the connection went while the command was out
            raise ConnectionError(str(exc) or type(exc).__name__) from None
        acked = time.monotonic_ns()
        self.stats["commands"] += 1
        self.stats["injected"] += len(command)
        for e in command:
            kind = e.WhichOneof("kind")
            if kind == "key":
                (self._held_keys.add if e.key.pressed else self._held_keys.discard)(e.key.qcode)
            elif kind == "button":
                (self._held_buttons.add if e.button.pressed else self._held_buttons.discard)(e.button.button)
        if self.on_ack is not None:
            self.on_ack(command, acked)


async def _disconnect(qmp: QMPClient) -> None:
    """Close a QMP client whatever state it is in; what made it fail was already reported."""
    try:
        await qmp.disconnect()
    except Exception:  # the reader's own failure (QEMU gone) is re-raised here
        pass
