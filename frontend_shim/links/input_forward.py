"""Remote input into a local QEMU: subscribe to the input service, inject through QMP `input-send-event`.

Two loops share one pending list: the subscriber appends what the service sends (consecutive pointer moves
coalesce, so at most one move waits between other events) and the injector turns the pending list into QMP
commands, one command in flight at a time, so QEMU is never flooded however fast a source moves the mouse.
Each loop reconnects on its own when its peer restarts. Keys and buttons this VM holds down are released when
the subscription breaks, so a lost service cannot leave a key stuck in the guest.

One command carries at most one pointer report: QEMU's tablet only samples the pointer state at the end of a
command, so a press and its release in the same command would be a click the guest never sees, and a move
after a press would move the press. Keys queue individually in QEMU's keyboards and can share a command.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable

import grpc

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


class QmpError(Exception):
    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(f"{cls}: {desc}")
        self.cls = cls
        self.desc = desc


class QmpClient:
    """A small QMP client over QEMU's UNIX socket: greeting, capabilities, commands; async events ignored."""

    def __init__(self, path: str, on_close: Callable[[], None] | None = None) -> None:
        self.path = path
        self.on_close = on_close
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._rx: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.version = ""

    async def connect(self, timeout: float = 5.0) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.path, limit=1 << 20), timeout
        )
        greeting = json.loads(await asyncio.wait_for(self._reader.readline(), timeout) or b"null")
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            self.close()
            raise ConnectionError(f"{self.path} is not a QMP socket (greeting {greeting!r})")
        v = greeting["QMP"].get("version", {}).get("qemu", {})
        self.version = f"{v.get('major')}.{v.get('minor')}.{v.get('micro')}"
        self._rx = asyncio.create_task(self._receive())
        await asyncio.wait_for(self.execute("qmp_capabilities"), timeout)

    async def execute(self, command: str, arguments: dict | None = None) -> object:
        """Run one command; returns its `return`, raises QmpError for an error reply, ConnectionError if gone."""
        if self._writer is None or self.closed.is_set():
            raise ConnectionError("QMP connection closed")
        cid = next(self._ids)
        msg: dict = {"execute": command, "id": cid}
        if arguments is not None:
            msg["arguments"] = arguments
        future = asyncio.get_running_loop().create_future()
        self._waiting[cid] = future
        try:
            self._writer.write(json.dumps(msg).encode() + b"\n")
            await self._writer.drain()
            return await future
        except (OSError, RuntimeError) as exc:
            self.close()
            raise ConnectionError(f"QMP connection lost: {exc}") from None
        finally:
            self._waiting.pop(cid, None)

    async def _receive(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("unparsable QMP line", extra={"line": line[:200]})
                    continue
                future = self._waiting.get(msg.get("id")) if isinstance(msg, dict) else None
                if future is None or future.done():
                    continue  # an async event (SHUTDOWN, RESET...) or a reply nobody waits for
                if "error" in msg:
                    err = msg["error"]
                    future.set_exception(QmpError(err.get("class", "?"), err.get("desc", "")))
                else:
                    future.set_result(msg.get("return"))
        except (OSError, ValueError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if self.on_close is not None:
            self.on_close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("QMP connection closed"))
        if self._writer is not None:
            self._writer.close()
        if self._rx is not None and self._rx is not asyncio.current_task():
            self._rx.cancel()


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

    async def run(self) -> None:
        """Run until `stop()`; then release what the guest still holds and deliver what is pending (1 s)."""
        subscriber = asyncio.create_task(self._subscribe_loop())
        injector = asyncio.create_task(self._inject_loop())
        try:
            await self._stop.wait()
        finally:
            subscriber.cancel()
            await asyncio.gather(subscriber, return_exceptions=True)  # queues the releases
            if self.qmp_ready.is_set():
                try:
                    await asyncio.wait_for(self._idle.wait(), 1.0)
                except TimeoutError:
                    pass
            injector.cancel()
            await asyncio.gather(injector, return_exceptions=True)

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
        while True:
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
        while True:
            qmp = QmpClient(self.qmp_path, on_close=self._wake.set)
            try:
                await qmp.connect()
            except (OSError, ConnectionError, TimeoutError) as exc:
                if not warned:
                    error = str(exc) or type(exc).__name__
                    if isinstance(exc, TimeoutError):  # QEMU serves one client per QMP socket
                        error = "no QMP greeting: is another client connected to this socket?"
                    log.warning("cannot reach QMP, retrying", extra={"qmp": self.qmp_path, "error": error})
                    warned = True
                qmp.close()
                await asyncio.sleep(backoff.next())
                continue
            warned = False
            backoff.reset()
            self.stats["qmp_connects"] += 1
            self.qmp_ready.set()
            log.info("QMP connected", extra={"qmp": self.qmp_path, "qemu": qmp.version})
            try:
                await self._inject(qmp)
            except ConnectionError as exc:
                log.warning("QMP connection lost, reconnecting", extra={"qmp": self.qmp_path, "error": str(exc)})
            except Exception:  # never let one surprise end remote input for this VM
                log.exception("injecting into QEMU failed, reconnecting")
                await asyncio.sleep(BACKOFF_MAX)
            finally:
                self.qmp_ready.clear()
                qmp.close()

    async def _inject(self, qmp: QmpClient) -> None:
        while True:
            if qmp.closed.is_set():
                raise ConnectionError("QEMU closed the QMP socket")
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()  # new events, or the QMP client closing
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

    async def _send(self, qmp: QmpClient, command: list[input_pb2.InputEvent]) -> None:
        args: dict = {"events": [q for e in command for q in qmp_events(e)]}
        if self.device:
            args["device"] = self.device
        try:
            await asyncio.wait_for(qmp.execute("input-send-event", args), _QMP_TIMEOUT)
        except TimeoutError:
            self.stats["qmp_timeouts"] += 1
            qmp.close()
            raise ConnectionError(f"QEMU did not answer input-send-event within {_QMP_TIMEOUT} s") from None
        except QmpError as exc:
            if len(command) > 1 and exc.cls == "GenericError":
                # QEMU refuses the whole command if one event has no handler (e.g. no tablet for abs):
                # deliver what it can take, one event at a time
                for e in command:
                    await self._send(qmp, [e])
                return
            self.stats["qmp_errors"] += 1
            if self.stats["qmp_errors"] in (1, 10, 100) or self.stats["qmp_errors"] % 1000 == 0:
                log.warning("QEMU refused input", extra={"error": str(exc), "errors": self.stats["qmp_errors"]})
            return
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
