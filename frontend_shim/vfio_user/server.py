"""The vfio-user server: QEMU's vfio-user-pci connects here and the shim's device answers.

One client at a time (a vfio-user device has one owner); when it disconnects its DMA maps and eventfds are
dropped and the device keeps its state, so the next QEMU finds the card as the last one left it.

Threads: each connection has one thread that reads and handles the client's messages in order and routes the
replies to our own DMA_READ/DMA_WRITE requests. Requests from QEMU that expect a reply block QEMU (it waits with
the big QEMU lock held), and QEMU answers our DMA requests on its main loop, which needs that lock. So while a
request is being handled here, a DMA request can never be answered: such DMA fails at once (and waiting ones
are abandoned) with GuestMemoryBusy, and the device retries later. Shared-memory DMA never takes this path.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import stat
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from frontend_shim.guests.guest import GuestMemoryBusy, GuestMemoryError
from frontend_shim.vfio_user import protocol as P
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.pci import PciFunction
from services.common import logs

log = logs.get("shim.vfio_user")
_RAM_HINT = 64 << 20  # a DMA map without fd at least this big is guest RAM QEMU did not share
NUM_IRQS = 3  # INTx, MSI, MSI-X: the minimum QEMU accepts; ERR/REQ queries get EINVAL, which QEMU takes quietly

_FAST_MAX = 4096  # a region access message up to this size takes the fast path (a register access is ~40 bytes)
_REGION_WRITE = P.Command.REGION_WRITE.value
_REGION_READ = P.Command.REGION_READ.value
_READ_REPLY_SIZE = P.HEADER_SIZE + P.REGION_RW.size  # plus the data
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
_ACCESSES = frozenset((P.Command.REGION_READ.value, _REGION_WRITE))
_PACK_HEADER = P.HEADER.pack
_RW_SIZE, _UNPACK_RW, _PACK_RW = P.REGION_RW.size, P.REGION_RW.unpack, P.REGION_RW.pack
_REPLY_FLAGS = (P.TYPE_REPLY, P.TYPE_REPLY | P.FLAG_ERROR)
_HEADER_SIZE, _NO_REPLY = P.HEADER_SIZE, P.FLAG_NO_REPLY
_READ_SIZE = P.HEADER_SIZE + P.REGION_RW.size  # a REGION_READ request
# A register read's whole reply (header, offset/region/count, the value) by its size.
_PACK_READ_REPLY = {
    n: struct.Struct(P.HEADER.format + P.REGION_RW.format.lstrip("<") + code).pack
    for n, code in ((1, "B"), (2, "H"), (4, "I"))
}

# on_access(kind, region, offset, size, value): kind is "R" or "W" for trapped BAR accesses.
AccessHook = Callable[[str, int, int, int, int], None]


@dataclass
class ServerStats:
    connections: int = 0
    rejected_connections: int = 0
    requests: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # by errno name
    bar_reads: int = 0
    bar_writes: int = 0
    config_reads: int = 0
    config_writes: int = 0
    resets: int = 0
    dma_requests: int = 0
    dma_aborted: int = 0

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        d["requests"] = {P.command_name(k): v for k, v in sorted(self.requests.items())}
        d["errors"] = dict(self.errors)
        return d


class VfioUserServer:
    def __init__(
        self,
        function: PciFunction,
        memory: DmaMemory,
        irq: IrqController,
        *,
        on_access: AccessHook | None = None,
        on_event: Callable[[str], None] | None = None,
        dma_layout: P.DmaLayout = P.QEMU_DMA_LAYOUT,
        dma_timeout: float = 1.0,
    ) -> None:
        self.function = function
        self.memory = memory
        self.irq = irq
        self.on_access = on_access
        self.on_event = on_event  # "reset"
        self.dma_layout = dma_layout
        self.dma_timeout = dma_timeout
        self.stats = ServerStats()
        self.irq.intx_disabled = lambda: function.config.intx_disabled
        self._listener: socket.socket | None = None
        self._path: str | None = None
        self._active: _QemuClientConnection | None = None
        self._active_lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Condition()

    # ------------------------------------------------------------------ listening
    def listen(self, path: str) -> None:
        """Bind the UNIX socket QEMU will connect to (a stale socket file is replaced, a live one is not)."""
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # nobody listens: left over from a run that died
            else:
                raise FileExistsError(f"{path}: another server is listening there")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(4)
        self._listener, self._path = s, path

    def serve_forever(self) -> None:
        """Accept clients until stop(); a second client while one is connected is turned away."""
        assert self._listener is not None, "listen() first"
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()  # no timeout: an idle shim does not wake (stop() shuts it)
            except OSError:
                if self._stop.is_set():
                    break
                raise
            conn = self._claim(sock)
            if conn is None:
                self.stats.rejected_connections += 1
                log.warning("client refused: another client is connected", extra={"socket": self._path})
                sock.close()
                continue
            threading.Thread(target=self._run, args=(conn,), name="vfio-user-conn", daemon=True).start()

    def serve_socket(self, sock: socket.socket) -> None:
        """Serve one connected client until it goes away (also used directly with a socketpair)."""
        conn = self._claim(sock)
        if conn is None:
            sock.close()
            raise RuntimeError("a client is already connected")
        self._run(conn)

    def _claim(self, sock: socket.socket) -> _QemuClientConnection | None:
        with self._active_lock:
            if self._active is not None:
                return None
            self._active = _QemuClientConnection(self, sock)
            return self._active

    def _run(self, conn: _QemuClientConnection) -> None:
        self.stats.connections += 1
        try:
            conn.run()
        finally:
            with self._active_lock:
                self._active = None
            with self._idle:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no client is connected."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active is None, timeout)

    @property
    def connected(self) -> bool:
        return self._active is not None

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above (close alone would not)
            except OSError:
                pass  # not listening (yet, or any more)
            self._listener.close()
        with self._active_lock:
            conn = self._active
        if conn is not None:
            conn.shutdown()
        if self._path and os.path.lexists(self._path):
            try:
                os.unlink(self._path)
            except OSError:
                pass


class _Waiter:
    __slots__ = ("event", "reply", "aborted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: P.Message | None = None
        self.aborted = False


class _QemuClientConnection:
    """One vfio-user client (QEMU) on the socket: reads and handles its messages; the DmaTransport of DmaMemory."""

    def __init__(self, server: VfioUserServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.function = server.function
        self.memory = server.memory
        self.irq = server.irq
        self.stats = server.stats
        self.negotiated = False
        self.client_max_fds = 1
        self._send_lock = threading.Lock()
        self._dma_lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._ids = itertools.count(1)
        self._busy = False  # a client request is being handled: the client cannot answer DMA now
        self._warned_unshared = False
        self._closed = False
        self._framer: P.Framer | None = None
        device = self.function.device  # a HoldsWrites device gets its writes' traffic released after the reply
        self._hold_writes = getattr(device, "hold_writes", None)
        self._release_writes = getattr(device, "release_writes", None)
        # A RepliesEarly device whose reads wait for its service: the thread that receives the answer sends the
        # guest its reply (`_reply_early`), and this thread catches up after.
        self._early = device if getattr(device, "answers_remotely", False) else None
        self._early_sent = False
        self._read_register = self.function.read_register
        status = self.function.spec.interrupt_status
        self._status_bar = status[0] if status is not None else -1  # the BAR whose reads may show an interrupt

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        log.info("client connected")
        started = time.monotonic()
        reason = "disconnected"
        try:
            self._serve()
        except P.ConnectionDropped as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"socket error: {exc}"
        finally:
            self._close()
            log.info(
                "client gone",
                extra={
                    "reason": reason,
                    "seconds": round(time.monotonic() - started, 3),
                    "bar_reads": self.stats.bar_reads,
                    "bar_writes": self.stats.bar_writes,
                    "irq_signals": self.irq.stats.signals,
                },
            )

    def _serve(self) -> None:
        """Read the client's messages in order on this thread (`P.Framer`: one read per message QEMU sends, into a
        buffer made once). A region access without fds after VERSION (every trapped guest access) goes straight
        to its handler and its reply out in one send; anything else becomes a `Message` for the general path."""
        framer = self._framer = P.Framer(self.sock)
        read = self._read
        while True:
            mid, command, size, flags, error, payload, fds, truncated = framer.next()
            if size == _READ_SIZE and command == _REGION_READ and not flags and not fds and not truncated \
                    and self.negotiated:  # fmt: skip
                read(mid, payload)  # a read wanting its reply: most of what a guest traps
            elif (
                command in _ACCESSES
                and (flags == 0 or flags == P.FLAG_NO_REPLY)
                and size <= _FAST_MAX
                and not fds
                and not truncated
                and self.negotiated
            ):
                self._access(mid, command, flags, payload)
            else:
                self._general(P.Message(P.Header(mid, command, size, flags, error), bytes(payload), fds, truncated))

    def _general(self, msg: P.Message) -> None:
        if msg.header.is_reply:
            self._route_reply(msg)
        else:
            self._handle(msg)

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close(self) -> None:
        with self._dma_lock:
            self._closed = True
            self._abort_waiters()
        if self.memory.transport is self:
            self.memory.transport = None
        dropped = self.memory.remove_all()
        self.irq.drop_fds()
        if self._framer is not None:
            self._framer.close_fds()
        self.sock.close()
        log.debug("connection state dropped", extra={"dma_maps": dropped})

    # ------------------------------------------------------------------ client requests
    def _handle(self, msg: P.Message) -> None:
        h = msg.header
        self.stats.requests[h.command] += 1
        with self._dma_lock:
            self._busy = True
            self._abort_waiters()
        try:
            payload, fds, after = self._dispatch(msg)
            error = 0
        except P.ProtocolError as exc:
            payload, fds, after, error = b"", [], None, exc.errno
            self._refused(h, exc.errno, str(exc), exc.expected)
        except Exception:  # a bug or a device failure must not end the connection
            payload, fds, after, error = b"", [], None, errno.EIO
            log.exception("request failed", extra={"command": P.command_name(h.command), "id": h.id})
            self.stats.errors[errno.errorcode[errno.EIO]] += 1
        finally:
            msg.close_fds()  # whatever the handler did not take
            # The reply no longer depends on anything: from here a DMA request cannot deadlock with the client
            # (it answers after it has our reply), so it may go out even before the reply does.
            with self._dma_lock:
                self._busy = False
        if not h.no_reply:
            self._send(P.reply_header(h, len(payload), error), payload, fds)
        elif error:
            log.debug("no reply wanted for a refused request", extra={"id": h.id})
        if after is not None:
            after()

    def _access(self, mid: int, command: int, flags: int, payload: memoryview | bytes) -> None:
        """REGION_READ / REGION_WRITE, the guest's trapped accesses: what `_handle` does for them, minus the
        general dispatch (the checks it makes hold here by construction). The reply goes out before a write's
        follow-up (the interrupt re-check), and a mirrored or posted write is applied or queued before it.
        `payload` may be a view into the framer's buffer: valid until the next message is read."""
        self.stats.requests[command] += 1
        # Busy first, then the look for waiting DMA; a DMA request registers its waiter first, then looks at
        # `_busy` (`_dma_request`): one of the two always sees the other, so the lock is taken only to abort.
        self._busy = True
        if self._waiters:
            with self._dma_lock:
                self._abort_waiters()
        write = command == _REGION_WRITE
        held = write and self._hold_writes is not None
        if held:
            self._hold_writes()  # type: ignore[misc]
        try:
            reply = self._region_write_now(bytes(payload)) if write else self._region_read_now(payload, mid)
            error = 0
        except Exception as exc:  # a bug or a device failure must not end the connection
            reply, error = b"", self._failed(exc, mid, command, flags, len(payload))
        finally:
            # No lock to end it: a DMA request that still sees `_busy` only fails fast and is retried.
            self._busy = False
        if self._early_sent:
            self._early_sent = False  # the guest has its answer
        elif not flags & _NO_REPLY:
            head = _PACK_HEADER(mid, command, _HEADER_SIZE + len(reply), _REPLY_FLAGS[bool(error)], error)
            self._send_reply(head + reply)
        elif error:
            log.debug("no reply wanted for a refused request", extra={"id": mid})
        if held:
            self._release_writes()  # type: ignore[misc]
        if not error:
            self.irq.after_access(write)

    def _read(self, mid: int, payload: memoryview) -> None:
        """A REGION_READ wanting its reply: what `_access` does for it, in fewer steps when it reads one register
        of a trapped BAR of a device that answers here (every guest register read in mirrored mode), answered
        with one message made by one pack. Anything else (another access, a device that answers remotely, an
        access log) takes `_access`."""
        offset, region, count = _UNPACK_RW(payload)
        pack = _PACK_READ_REPLY.get(count)
        if pack is None or self._early is not None or self.server.on_access is not None:
            self._access(mid, _REGION_READ, 0, payload)
            return
        self._busy = True  # as in `_access`
        if self._waiters:
            with self._dma_lock:
                self._abort_waiters()
        try:
            value = self._read_register(region, offset, count)
        except Exception as exc:  # as in `_access`
            self._busy = False
            self.stats.requests[_REGION_READ] += 1
            err = self._failed(exc, mid, _REGION_READ, 0, _RW_SIZE)
            self._send_reply(_PACK_HEADER(mid, _REGION_READ, _HEADER_SIZE, _REPLY_FLAGS[1], err))
            return
        self._busy = False
        if value is None:  # not one register: `_access` reads it (read_register has done nothing)
            self._access(mid, _REGION_READ, 0, payload)
            return
        self.stats.requests[_REGION_READ] += 1
        self.stats.bar_reads += 1
        if region == self._status_bar and self.function.register_shows_interrupt(region, offset, count, value):
            self.irq.note_seen()
        self._send_reply(pack(mid, _REGION_READ, _READ_REPLY_SIZE + count, P.TYPE_REPLY, 0, offset, region, count,
                              value))  # fmt: skip
        self.irq.after_access(False)

    def _failed(self, exc: Exception, mid: int, command: int, flags: int, payload_size: int) -> int:
        """The errno a client's access gets for the exception its handling raised (logged as it deserves)."""
        if isinstance(exc, P.ProtocolError):
            h = P.Header(mid, command, P.HEADER_SIZE + payload_size, flags)
            self._refused(h, exc.errno, str(exc), exc.expected)
            return exc.errno
        log.error("request failed", exc_info=exc, extra={"command": P.command_name(command), "id": mid})
        self.stats.errors[errno.errorcode[errno.EIO]] += 1
        return errno.EIO

    def _send_reply(self, msg: bytes) -> None:
        """Send one message to the client (this connection's thread, or a link's with an early reply)."""
        with self._send_lock:
            try:
                self.sock.sendall(msg)
            except OSError as exc:
                log.debug("send failed", extra={"error": str(exc)})

    def _refused(self, h: P.Header, err: int, reason: str, expected: bool = False) -> None:
        name = errno.errorcode.get(err, str(err))
        if not expected:
            self.stats.errors[name] += 1
        (log.debug if expected else log.warning)(
            "request refused",
            extra={"command": P.command_name(h.command), "id": h.id, "size": h.size, "errno": name, "why": reason},
        )

    def _dispatch(self, msg: P.Message) -> tuple[bytes, list[int], Callable[[], None] | None]:
        h = msg.header
        if h.flags & ~P.KNOWN_FLAGS or h.type != P.TYPE_REQUEST or h.flags & P.FLAG_ERROR:
            raise P.ProtocolError(errno.EINVAL, f"bad header flags {h.flags:#x}")
        if h.size < P.HEADER_SIZE:
            raise P.ProtocolError(errno.EINVAL, f"header size {h.size} < {P.HEADER_SIZE}")
        if h.size > P.MAX_MESSAGE:
            raise P.ProtocolError(errno.E2BIG, f"message of {h.size} bytes (limit {P.MAX_MESSAGE})")
        if msg.fds_truncated or len(msg.fds) > P.MAX_FDS:
            raise P.ProtocolError(errno.EINVAL, f"too many fds ({len(msg.fds)}{'+' if msg.fds_truncated else ''})")
        if h.command == P.Command.VERSION:
            return self._version(msg), [], None
        if not self.negotiated:
            raise P.ProtocolError(errno.EINVAL, f"{P.command_name(h.command)} before VERSION")
        handler = self._handlers.get(h.command)
        if handler is None:
            raise P.ProtocolError(errno.ENOSYS, f"command {P.command_name(h.command)} is not supported")
        if msg.fds and h.command not in (P.Command.DMA_MAP, P.Command.DEVICE_SET_IRQS):
            raise P.ProtocolError(errno.EINVAL, f"{P.command_name(h.command)} takes no fds, got {len(msg.fds)}")
        return handler(self, msg)

    def _version(self, msg: P.Message) -> bytes:
        if self.negotiated:
            raise P.ProtocolError(errno.EINVAL, "VERSION was already negotiated")
        if msg.fds:
            raise P.ProtocolError(errno.EINVAL, "VERSION takes no fds")
        req = P.decode_version(msg.payload)
        self.client_max_fds = req.max_msg_fds
        self.memory.max_xfer = max(1, min(P.MAX_DATA_XFER, req.max_data_xfer_size or P.MAX_DATA_XFER))
        caps = {
            "max_msg_fds": P.MAX_FDS,
            "max_data_xfer_size": P.MAX_DATA_XFER,
            "pgsizes": P.PAGE_SIZE,
            "max_dma_maps": P.MAX_DMA_MAPS,
        }
        reply = P.encode_version_reply(caps, len(msg.payload))
        self.negotiated = True
        self.memory.transport = self
        log.info("version negotiated", extra={"client_minor": req.minor, "client_caps": req.capabilities})
        return reply

    def _dma_map(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        if len(msg.fds) > 1:
            raise P.ProtocolError(errno.EINVAL, f"DMA_MAP with {len(msg.fds)} fds")
        req = P.decode_dma_map(msg.payload)
        fds = msg.take_fds()
        self.memory.add(req, fds[0] if fds else None)  # closes the fd
        log.debug("dma map", extra={"iova": hex(req.iova), "size": hex(req.size), "fd": bool(fds)})
        if not fds and req.size >= _RAM_HINT and not self._warned_unshared:
            # ROMs and other devices' VRAM come without fd anyway; a region this big is guest RAM.
            self._warned_unshared = True
            log.warning(
                "guest RAM is not shared: DMA goes through DMA_READ/DMA_WRITE messages (slower); start QEMU with "
                "-object memory-backend-memfd,id=mem,size=...,share=on -machine memory-backend=mem",
                extra={"iova": hex(req.iova), "size": hex(req.size)},
            )
        return b"", [], None

    def _dma_unmap(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        req = P.decode_dma_unmap(msg.payload)
        if req.flags & P.DMA_UNMAP_FLAG_ALL:
            self.memory.remove_all()
        else:
            self.memory.remove(req.iova, req.size)
        log.debug("dma unmap", extra={"iova": hex(req.iova), "size": hex(req.size)})
        return msg.payload[: P.DMA_UNMAP.size], [], None

    def _device_info(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        if len(msg.payload) < 4 or int.from_bytes(msg.payload[:4], "little") < P.DEVICE_INFO.size:
            raise P.ProtocolError(errno.EINVAL, "DEVICE_GET_INFO: argsz must leave room for the 16-byte reply")
        flags = P.DEVICE_FLAGS_PCI | P.DEVICE_FLAGS_RESET
        return P.DEVICE_INFO.pack(P.DEVICE_INFO.size, flags, P.PCI_NUM_REGIONS, NUM_IRQS), [], None

    def _region_info(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        _, index = P.decode_argsz_index(msg.payload, P.REGION_INFO, "DEVICE_GET_REGION_INFO")
        info = self.function.region_info(index)
        payload = P.REGION_INFO.pack(P.REGION_INFO.size, info.flags, index, 0, info.size, info.offset)
        return payload, [info.fd] if info.fd is not None else [], None

    def _irq_info(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        _, index = P.decode_argsz_index(msg.payload, P.IRQ_INFO, "DEVICE_GET_IRQ_INFO")
        if index >= NUM_IRQS:
            # QEMU asks for ERR (3) and REQ (4) on every device; EINVAL tells it quietly that there are none.
            raise P.ProtocolError(errno.EINVAL, f"no IRQ index {index}", expected=index < P.PCI_REQ_IRQ + 1)
        count = self._irq_count(index)
        flags = P.IRQ_INFO_EVENTFD
        if index == P.PCI_INTX_IRQ:
            flags |= P.IRQ_INFO_MASKABLE | P.IRQ_INFO_AUTOMASKED
        else:
            flags |= P.IRQ_INFO_NORESIZE
        return P.IRQ_INFO.pack(P.IRQ_INFO.size, flags, index, count), [], None

    def _irq_count(self, index: int) -> int:
        spec = self.function.spec
        return {P.PCI_INTX_IRQ: 1 if spec.interrupt_pin else 0, P.PCI_MSI_IRQ: spec.msi_vectors}.get(index, 0)

    def _set_irqs(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        s = P.decode_irq_set(msg.payload)
        if s.index >= NUM_IRQS:
            raise P.ProtocolError(errno.EINVAL, f"no IRQ index {s.index}")
        total = self._irq_count(s.index)
        if s.data_type == P.IRQ_SET_DATA_NONE and s.action == P.IRQ_SET_ACTION_TRIGGER and s.count == 0:
            if s.start or msg.fds:
                raise P.ProtocolError(errno.EINVAL, "SET_IRQS disable with start or fds")
            if s.index == P.PCI_INTX_IRQ:
                self.irq.set_intx_fd(None)
            elif s.index == P.PCI_MSI_IRQ:
                self.irq.disable_msi()
            return b"", [], None
        if s.count == 0 or s.start + s.count > total:
            raise P.ProtocolError(errno.EINVAL, f"SET_IRQS {s.start}+{s.count} of IRQ {s.index} (has {total})")
        if s.data_type == P.IRQ_SET_DATA_EVENTFD:
            if s.action != P.IRQ_SET_ACTION_TRIGGER:
                raise P.ProtocolError(errno.EINVAL, "mask/unmask notification eventfds are not supported")
            if msg.fds and len(msg.fds) != s.count:
                raise P.ProtocolError(errno.EINVAL, f"SET_IRQS count {s.count} with {len(msg.fds)} fds")
            for fd in msg.fds:
                if not _is_eventfd(fd):
                    raise P.ProtocolError(errno.EINVAL, "SET_IRQS fd is not an eventfd")
            fds: list[int | None] = list(msg.take_fds()) or [None] * s.count
            if s.index == P.PCI_INTX_IRQ:
                self.irq.set_intx_fd(fds[0])
            else:
                self.irq.set_msi_fds(s.start, fds, total)
            log.debug("irq eventfd", extra={"index": s.index, "start": s.start, "count": s.count})
            return b"", [], None
        if msg.fds:
            raise P.ProtocolError(errno.EINVAL, "SET_IRQS without DATA_EVENTFD carries no fds")
        chosen = [s.start + i for i in range(s.count) if s.data_type == P.IRQ_SET_DATA_NONE or s.data[i]]
        if s.action in (P.IRQ_SET_ACTION_MASK, P.IRQ_SET_ACTION_UNMASK):
            if s.index != P.PCI_INTX_IRQ:
                raise P.ProtocolError(errno.EINVAL, f"IRQ index {s.index} is not maskable")
            if chosen:
                (self.irq.mask if s.action == P.IRQ_SET_ACTION_MASK else self.irq.unmask)()
        else:
            for sub in chosen:
                self.irq.trigger(s.index, sub)
        return b"", [], None

    def _region_read(self, msg: P.Message) -> tuple[bytes, list[int], Callable[[], None]]:
        return self._region_read_now(msg.payload), [], lambda: self.irq.after_access(False)

    def _region_write(self, msg: P.Message) -> tuple[bytes, list[int], Callable[[], None]]:
        return self._region_write_now(msg.payload), [], lambda: self.irq.after_access(True)

    def _region_read_now(self, payload: memoryview | bytes, mid: int | None = None) -> bytes:
        """The reply's payload. With `mid` (a fast-path access that wants a reply), a device that answers
        remotely may have the reply sent early (`_early_sent`)."""
        if len(payload) == _RW_SIZE:  # a well-formed read (anything else: decode_region_access says what is wrong)
            offset, region, count = _UNPACK_RW(payload)
            early = self._early if mid is not None else None
            if early is None:
                value = self.function.read_register(region, offset, count)
            else:
                early.reply_early = lambda v: self._reply_early(mid, offset, region, count, v)  # type: ignore[arg-type]
                try:
                    value = self.function.read_register(region, offset, count)
                finally:
                    early.reply_early = None
            if value is not None:  # a guest's register read: one piece
                if self.server.on_access is None:
                    self.stats.bar_reads += 1
                else:
                    self._account(region, "R", [(offset, count, value)])
                if not self._early_sent and self.function.register_shows_interrupt(region, offset, count, value):
                    self.irq.note_seen()
                return _PACK_RW(offset, region, count) + value.to_bytes(count, "little")
            if not 0 < count <= P.MAX_DATA_XFER:
                P.decode_region_access(payload, write=False)  # raises
        else:
            a = P.decode_region_access(payload, write=False)
            offset, region, count = a.offset, a.region, a.count
        data, pieces = self.function.read(region, offset, count)
        self._account(region, "R", pieces)
        if self.function.shows_interrupt(region, pieces):
            self.irq.note_seen()
        return _PACK_RW(offset, region, len(data)) + data

    def _reply_early(self, mid: int, offset: int, region: int, count: int, value: int) -> None:
        """(the link's receiving thread, while this connection's thread waits for the value) The guest's reply."""
        value &= _MASKS[count]
        if self.function.register_shows_interrupt(region, offset, count, value):
            self.irq.note_seen()
        msg = _PACK_HEADER(mid, _REGION_READ, _READ_REPLY_SIZE + count, P.TYPE_REPLY, 0)
        msg += _PACK_RW(offset, region, count) + value.to_bytes(count, "little")
        self._send_reply(msg)
        self._early_sent = True

    def _region_write_now(self, payload: bytes) -> bytes:
        a = P.decode_region_access(payload, write=True)
        with self.irq.write_access():
            pieces = self.function.write(a.region, a.offset, a.data)
        self._account(a.region, "W", pieces)
        return P.REGION_RW.pack(a.offset, a.region, a.count)

    def _account(self, region: int, kind: str, pieces: list[tuple[int, int, int]]) -> None:
        on_access = self.server.on_access
        if on_access is None and len(pieces) == 1:  # one register, no access log: the usual trapped access
            if kind == "R":
                self.stats.bar_reads += 1
            else:
                self.stats.bar_writes += 1
            return
        if region == P.PCI_CONFIG_REGION:
            if kind == "R":
                self.stats.config_reads += 1
            else:
                self.stats.config_writes += 1
            return
        for offset, size, value in pieces:
            if kind == "R":
                self.stats.bar_reads += 1
            else:
                self.stats.bar_writes += 1
            if self.server.on_access is not None:
                self.server.on_access(kind, region, offset, size, value)

    def _reset(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        if msg.payload:
            raise P.ProtocolError(errno.EINVAL, "DEVICE_RESET has no payload")
        self.stats.resets += 1
        self.function.reset()
        if self.server.on_event is not None:
            self.server.on_event("reset")
        log.info("device reset")
        return b"", [], None

    def _unsupported(self, msg: P.Message) -> tuple[bytes, list[int], None]:
        raise P.ProtocolError(errno.ENOTSUP, f"{P.command_name(msg.header.command)} is not supported")

    _Handler = Callable[["_QemuClientConnection", P.Message], tuple[bytes, list[int], Callable[[], None] | None]]
    _handlers: dict[int, _Handler] = {
        P.Command.DMA_MAP: _dma_map,
        P.Command.DMA_UNMAP: _dma_unmap,
        P.Command.DEVICE_GET_INFO: _device_info,
        P.Command.DEVICE_GET_REGION_INFO: _region_info,
        P.Command.DEVICE_GET_REGION_IO_FDS: _unsupported,
        P.Command.DEVICE_GET_IRQ_INFO: _irq_info,
        P.Command.DEVICE_SET_IRQS: _set_irqs,
        P.Command.REGION_READ: _region_read,
        P.Command.REGION_WRITE: _region_write,
        P.Command.DEVICE_RESET: _reset,
    }

    # ------------------------------------------------------------------ sending
    def _send(self, header: P.Header, payload: bytes = b"", fds: list[int] | None = None) -> None:
        with self._send_lock:
            try:
                P.send_message(self.sock, header, payload, fds)
            except OSError as exc:
                log.debug("send failed", extra={"error": str(exc)})

    # ------------------------------------------------------------------ DmaTransport (device threads)
    def dma_read(self, addr: int, count: int) -> bytes:
        reply = self._dma_request(P.Command.DMA_READ, self.server.dma_layout.read_request(addr, count))
        try:
            return self.server.dma_layout.read_reply_data(reply.payload, addr, count)
        except P.ProtocolError as exc:
            raise GuestMemoryError(f"DMA_READ at {addr:#x}: {exc}") from exc

    def dma_write(self, addr: int, data: bytes) -> None:
        self._dma_request(P.Command.DMA_WRITE, self.server.dma_layout.write_request(addr, data))

    def _dma_request(self, command: P.Command, payload: bytes) -> P.Message:
        waiter = _Waiter()
        with self._dma_lock:
            if self._closed:
                raise GuestMemoryError("the client is gone")
            msg_id = next(i & 0xFFFF for i in self._ids if i & 0xFFFF not in self._waiters)
            self._waiters[msg_id] = waiter  # before the look at `_busy` (see `_access`)
            if self._busy:
                del self._waiters[msg_id]
                self.stats.dma_aborted += 1
                raise GuestMemoryBusy("the client is waiting for our reply and cannot serve DMA now")
        self.stats.dma_requests += 1
        self._send(P.Header(msg_id, command, P.HEADER_SIZE + len(payload), P.TYPE_REQUEST), payload)
        if not waiter.event.wait(self.server.dma_timeout):
            with self._dma_lock:
                self._waiters.pop(msg_id, None)
            raise GuestMemoryError(f"{command.name}: no reply in {self.server.dma_timeout} s")
        if waiter.aborted or waiter.reply is None:
            self.stats.dma_aborted += 1
            if self._closed:
                raise GuestMemoryError(f"{command.name} abandoned: the client is gone")
            raise GuestMemoryBusy(f"{command.name} abandoned: the client is blocked on a request of its own")
        h = waiter.reply.header
        if h.flags & P.FLAG_ERROR:
            raise GuestMemoryError(f"{command.name} refused by the client: {errno.errorcode.get(h.error, h.error)}")
        return waiter.reply

    def _route_reply(self, msg: P.Message) -> None:
        msg.close_fds()  # no reply to our DMA requests carries fds
        with self._dma_lock:
            waiter = self._waiters.pop(msg.header.id, None)
        if waiter is None:
            log.debug("reply to no pending request", extra={"id": msg.header.id})
            return
        waiter.reply = msg
        waiter.event.set()

    def _abort_waiters(self) -> None:
        """(dma lock held) The client cannot answer now: every DMA still waiting gives up."""
        for waiter in self._waiters.values():
            waiter.aborted = True
            waiter.event.set()
        self._waiters.clear()


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False
