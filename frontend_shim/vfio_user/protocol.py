"""vfio-user wire format: message header, command payloads, their validation, and socket framing.

Layouts follow QEMU's docs/interop/vfio-user.rst and, where they differ, what QEMU 10.2.2's client really sends
(see `DmaLayout`). Every decoder checks sizes and ranges and raises `ProtocolError` with the errno the reply
should carry; nothing here trusts a length taken from the wire.
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum

HEADER = struct.Struct("<HHIII")  # id, command, size, flags, error
HEADER_SIZE = HEADER.size  # 16
_UNPACK_HEADER = HEADER.unpack_from


class Command(IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13  # the spec and QEMU agree on 13
    DIRTY_PAGES = 14
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"UNKNOWN({command})"


# Header flags.
TYPE_MASK = 0xF
TYPE_REQUEST = 0x0
TYPE_REPLY = 0x1
FLAG_NO_REPLY = 0x10
FLAG_ERROR = 0x20
KNOWN_FLAGS = TYPE_MASK | FLAG_NO_REPLY | FLAG_ERROR

# Version.
VERSION_MAJOR = 0
VERSION_MINOR = 0
VERSION = struct.Struct("<HH")

# <linux/vfio.h> values the protocol imports.
DMA_MAP_FLAG_READ = 1 << 0
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
DMA_UNMAP_FLAG_ALL = 1 << 1
DEVICE_FLAGS_RESET = 1 << 0
DEVICE_FLAGS_PCI = 1 << 1
REGION_INFO_FLAG_READ = 1 << 0
REGION_INFO_FLAG_WRITE = 1 << 1
REGION_INFO_FLAG_MMAP = 1 << 2
REGION_INFO_FLAG_CAPS = 1 << 3
IRQ_INFO_EVENTFD = 1 << 0
IRQ_INFO_MASKABLE = 1 << 1
IRQ_INFO_AUTOMASKED = 1 << 2
IRQ_INFO_NORESIZE = 1 << 3
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_DATA_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_MASK_ALL = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER

# VFIO PCI region and IRQ indexes.
PCI_BAR0_REGION = 0
PCI_ROM_REGION = 6
PCI_CONFIG_REGION = 7
PCI_VGA_REGION = 8
PCI_NUM_REGIONS = 9
PCI_INTX_IRQ = 0
PCI_MSI_IRQ = 1
PCI_MSIX_IRQ = 2
PCI_ERR_IRQ = 3
PCI_REQ_IRQ = 4

# Payload layouts (after the header).
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset (in the fd), iova, size
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, iova, size
DEVICE_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count
REGION_RW = struct.Struct("<QII")  # offset, region, count; data follows

# Our own limits. Region accesses are at most a few bytes; 1 MiB bounds DMA messages as QEMU does.
MAX_DATA_XFER = 1024 * 1024
MAX_MESSAGE = HEADER_SIZE + 32 + MAX_DATA_XFER  # the largest message we accept in full
MAX_DISCARD = 64 * 1024 * 1024  # an oversize message up to this is skipped; beyond, the connection is dropped
MAX_FDS = 8  # fds we accept in one message (advertised as max_msg_fds)
_CMSG_FDS = 64  # ancillary room, so that "too many fds" is seen (and the fds closed) rather than truncated
MAX_DMA_MAPS = 4096
PAGE_SIZE = 4096


class ProtocolError(Exception):
    """A request we refuse: the reply carries `errno`."""

    def __init__(self, err: int, message: str, expected: bool = False) -> None:
        super().__init__(message)
        self.errno = err
        self.expected = expected  # a refusal clients provoke on purpose (logged at debug level)


class ConnectionDropped(Exception):
    """The peer closed the socket, or the stream can no longer be trusted."""


@dataclass(frozen=True)
class Header:
    id: int
    command: int
    size: int
    flags: int
    error: int = 0

    @property
    def type(self) -> int:
        return self.flags & TYPE_MASK

    @property
    def is_reply(self) -> bool:
        return self.type == TYPE_REPLY

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & FLAG_NO_REPLY)

    def pack(self) -> bytes:
        return HEADER.pack(self.id, self.command, self.size, self.flags, self.error)


@dataclass
class Message:
    header: Header
    payload: bytes
    fds: list[int] = field(default_factory=list)
    fds_truncated: bool = False  # the kernel dropped fds that did not fit (a client sending far too many)

    def take_fds(self) -> list[int]:
        """Hand the fds to the caller, who must close them."""
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        for fd in self.take_fds():
            _close(fd)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- framing
def _recv_exact(sock: socket.socket, n: int, fds: list[int]) -> tuple[bytes, bool]:
    """Read exactly n bytes, collecting any fds that come with them."""
    buf = bytearray(n)
    truncated = recv_into_exact(sock, memoryview(buf), fds)
    return bytes(buf), truncated


def recv_message(sock: socket.socket, max_size: int = MAX_MESSAGE) -> Message:
    """One message. An oversize one is skipped and returned with an empty payload and `size` as sent, so the
    caller can refuse it with E2BIG and the stream stays in step; a bigger one drops the connection."""
    fds: list[int] = []
    raw, truncated = _recv_exact(sock, HEADER_SIZE, fds)
    return recv_body(sock, Header(*HEADER.unpack(raw)), fds, truncated, max_size)


def recv_body(
    sock: socket.socket, header: Header, fds: list[int], truncated: bool, max_size: int = MAX_MESSAGE
) -> Message:
    """The rest of a message whose header was read (with the fds that came with it so far)."""
    body = max(0, header.size - HEADER_SIZE)
    if header.size > max_size:
        if header.size > MAX_DISCARD:
            for fd in fds:
                _close(fd)
            raise ConnectionDropped(f"message of {header.size} bytes is far over the limit")
        left = body
        while left:
            chunk, t = _recv_exact(sock, min(left, 65536), fds)
            truncated |= t
            left -= len(chunk)
        return Message(header, b"", fds, truncated)
    payload, t = _recv_exact(sock, body, fds) if body else (b"", False)
    return Message(header, payload, fds, truncated or t)


_ANCILLARY = socket.CMSG_SPACE(_CMSG_FDS * 4)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)  # a plain int: `flags & socket.MSG_CTRUNC` runs enum.Flag's Python code
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)


def _take_fds(ancdata: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    for level, kind, cdata in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            got_fds = array.array("i")
            got_fds.frombytes(cdata[: len(cdata) - len(cdata) % got_fds.itemsize])
            fds.extend(got_fds)


def recv_into_exact(sock: socket.socket, view: memoryview, fds: list[int]) -> bool:
    """Fill `view` (a preallocated buffer) from the socket, collecting any fds that come with the bytes; returns
    whether the kernel truncated the fds."""
    got, n, truncated = 0, len(view), False
    recvmsg_into = sock.recvmsg_into
    while got < n:
        k, ancdata, msg_flags, _ = recvmsg_into([view[got:]], _ANCILLARY)
        if ancdata:
            _take_fds(ancdata, fds)
        if msg_flags & _MSG_CTRUNC:
            truncated = True
        if not k:
            for fd in fds:
                _close(fd)
            fds.clear()
            raise ConnectionDropped("peer closed the socket" if not got else "peer closed the socket mid-message")
        got += k
    return truncated


class Framer:
    """Cuts the messages out of a client's byte stream with as few reads as the kernel allows: each read takes
    whatever the socket holds into one buffer made once, so a message sent with one sendmsg (every message QEMU
    sends) costs one recvmsg_into, and messages that queued up behind each other (posted writes) cost one for all.

    The fds: Linux ends a read of a UNIX stream socket right after the bytes of a sendmsg that carried fds, so they
    belong to the message holding the last byte of that read (`_fds` keeps that byte's position). A message longer
    than the buffer (a DMA_READ reply of up to 1 MiB, an oversize message to skip) is read on by exact reads."""

    def __init__(self, sock: socket.socket, capacity: int = 128 * 1024, max_size: int = MAX_MESSAGE) -> None:
        self.sock = sock
        self.buf = bytearray(capacity)
        self.view = memoryview(self.buf)
        self._whole = [self.view]  # recvmsg_into's buffers when nothing is buffered
        self._recv = sock.recvmsg_into
        self.max_size = max_size
        self._start = 0  # the unread bytes are buf[_start:_end]
        self._end = 0
        self._fds: list[tuple[int, list[int], bool]] = []  # (position of the read's last byte, its fds, truncated)

    def next(self) -> tuple[int, int, int, int, int, memoryview | bytes, list[int], bool]:
        """The next message: id, command, size (as sent), flags, error, payload (a view into the buffer, valid until
        the next call, or bytes for a long message), its fds, and whether the kernel truncated them."""
        if self._end == self._start:
            # Nothing buffered: the usual case, where one read takes exactly one message (a trapped access).
            self._start = self._end = 0
            k, ancdata, msg_flags, _ = self._recv(self._whole, _ANCILLARY)
            if k >= HEADER_SIZE and not ancdata and not msg_flags & _MSG_CTRUNC:  # (fds: the general path below)
                mid, command, size, flags, error = _UNPACK_HEADER(self.buf)
                if size == k:
                    return mid, command, size, flags, error, self.view[HEADER_SIZE:k], [], False
            self._took(0, k, ancdata, msg_flags)
        if self._end - self._start < HEADER_SIZE:
            self._read_at_least(HEADER_SIZE)
        start = self._start
        mid, command, size, flags, error = HEADER.unpack_from(self.buf, start)
        length = size if size > HEADER_SIZE else HEADER_SIZE  # a size below the header's: refused, payload empty
        if length > len(self.buf):
            return self._long(mid, command, size, flags, error)
        if self._end - start < length:
            self._read_at_least(length)
            start = self._start
        end = start + length
        fds: list[int] = []
        truncated = False
        while self._fds and self._fds[0][0] < end:
            _, got, cut = self._fds.pop(0)
            fds += got
            truncated |= cut
        if end == self._end:
            self._start = self._end = 0  # all read: the next read starts at the front (the view stays valid)
        else:
            self._start = end
        return mid, command, size, flags, error, self.view[start + HEADER_SIZE : end], fds, truncated

    def _read_at_least(self, n: int) -> None:
        """Read until buf[_start:] holds n bytes, moving the unread ones to the front when the rest won't fit."""
        if self._start + n > len(self.buf):
            have = self._end - self._start
            self.buf[:have] = bytes(self.view[self._start : self._end])
            self._fds = [(pos - self._start, fds, cut) for pos, fds, cut in self._fds]
            self._start, self._end = 0, have
        view = self.view
        while self._end - self._start < n:
            end = self._end
            k, ancdata, msg_flags, _ = self._recv([view[end:]], _ANCILLARY)
            self._took(end, k, ancdata, msg_flags)

    def _took(self, end: int, k: int, ancdata: list[tuple[int, int, bytes]], msg_flags: int) -> None:
        """Account one read of `k` bytes into buf[end:]: its fds go with its last byte; 0 bytes is the peer gone."""
        if ancdata or msg_flags & _MSG_CTRUNC:
            fds: list[int] = []
            _take_fds(ancdata, fds)
            self._fds.append((end + k - 1, fds, bool(msg_flags & _MSG_CTRUNC)))
        if not k:
            self.close_fds()
            raise ConnectionDropped(
                "peer closed the socket" if self._end == self._start else "peer closed the socket mid-message"
            )
        self._end = end + k

    def _long(self, mid: int, command: int, size: int, flags: int, error: int) -> tuple:  # type: ignore[type-arg]
        """A message longer than the buffer: what is buffered of it, then exact reads for the rest (an oversize
        one is skipped and returned with an empty payload, so the caller can refuse it and the stream stays in
        step; beyond MAX_DISCARD the connection is dropped)."""
        fds: list[int] = []
        truncated = False
        for _, got, cut in self._fds:  # everything buffered belongs to this message
            fds += got
            truncated |= cut
        self._fds.clear()
        have = bytes(self.view[self._start + HEADER_SIZE : self._end])
        self._start = self._end = 0
        left = size - HEADER_SIZE - len(have)
        if size > self.max_size:
            if size > MAX_DISCARD:
                for fd in fds:
                    _close(fd)
                raise ConnectionDropped(f"message of {size} bytes is far over the limit")
            while left:
                chunk, t = _recv_exact(self.sock, min(left, 65536), fds)
                truncated |= t
                left -= len(chunk)
            return mid, command, size, flags, error, b"", fds, truncated
        rest, t = _recv_exact(self.sock, left, fds)
        return mid, command, size, flags, error, have + rest, fds, truncated | t

    def close_fds(self) -> None:
        """Close the fds read with bytes of a message not yet returned."""
        for _, fds, _ in self._fds:
            for fd in fds:
                _close(fd)
        self._fds.clear()


def send_message(sock: socket.socket, header: Header, payload: bytes = b"", fds: list[int] | None = None) -> None:
    data = header.pack() + payload
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([data], anc)
        if sent < len(data):
            sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def reply_header(request: Header, payload_len: int = 0, error: int = 0) -> Header:
    flags = TYPE_REPLY | (FLAG_ERROR if error else 0)
    return Header(request.id, request.command, HEADER_SIZE + payload_len, flags, error)


# ---------------------------------------------------------------------------------------------- payloads
def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise ProtocolError(errno.EINVAL, f"{what}: payload of {len(payload)} bytes, need {size}")


@dataclass(frozen=True)
class VersionRequest:
    major: int
    minor: int
    capabilities: dict

    @property
    def max_msg_fds(self) -> int:
        return int(self.capabilities.get("max_msg_fds", 1))

    @property
    def max_data_xfer_size(self) -> int:
        return int(self.capabilities.get("max_data_xfer_size", MAX_DATA_XFER))


def decode_version(payload: bytes) -> VersionRequest:
    _need(payload, VERSION.size + 1, "VERSION")
    major, minor = VERSION.unpack_from(payload)
    text = payload[VERSION.size :]
    if major != VERSION_MAJOR:
        raise ProtocolError(errno.ENOTSUP, f"VERSION: major {major} is not {VERSION_MAJOR}")
    end = text.find(b"\0")
    if end < 0:
        raise ProtocolError(errno.EINVAL, "VERSION: capabilities are not NUL-terminated")
    text = text[:end]
    caps: dict = {}
    if text:
        try:
            doc = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(errno.EINVAL, f"VERSION: capabilities are not JSON ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("capabilities", {}), dict):
            raise ProtocolError(errno.EINVAL, "VERSION: capabilities must be a JSON object")
        caps = doc.get("capabilities", {})
    for key in ("max_msg_fds", "max_data_xfer_size", "pgsizes", "max_dma_maps"):
        value = caps.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ProtocolError(errno.EINVAL, f"VERSION: {key} must be a non-negative integer")
    return VersionRequest(major, minor, caps)


def encode_version_reply(capabilities: dict, limit: int) -> bytes:
    """Our VERSION payload, no longer than `limit` bytes: QEMU reads the reply into its request's buffer, so
    optional capabilities are dropped (last first) until it fits."""
    caps = dict(capabilities)
    while True:
        text = json.dumps({"capabilities": caps}, separators=(",", ":")).encode() + b"\0"
        payload = VERSION.pack(VERSION_MAJOR, VERSION_MINOR) + text
        if len(payload) <= limit or not caps:
            return payload
        caps.pop(next(reversed(caps)))


@dataclass(frozen=True)
class DmaMap:
    flags: int
    offset: int
    iova: int
    size: int


def decode_dma_map(payload: bytes) -> DmaMap:
    _need(payload, DMA_MAP.size, "DMA_MAP")
    argsz, flags, offset, iova, size = DMA_MAP.unpack_from(payload)
    if argsz < DMA_MAP.size:
        raise ProtocolError(errno.EINVAL, f"DMA_MAP: argsz {argsz}")
    if flags & ~(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE):
        raise ProtocolError(errno.EINVAL, f"DMA_MAP: unknown flags {flags:#x}")
    if size == 0 or iova + size > 1 << 64 or offset + size > 1 << 64:
        raise ProtocolError(errno.EINVAL, f"DMA_MAP: bad range iova={iova:#x} size={size:#x}")
    return DmaMap(flags, offset, iova, size)


@dataclass(frozen=True)
class DmaUnmap:
    argsz: int
    flags: int
    iova: int
    size: int


def decode_dma_unmap(payload: bytes) -> DmaUnmap:
    _need(payload, DMA_UNMAP.size, "DMA_UNMAP")
    argsz, flags, iova, size = DMA_UNMAP.unpack_from(payload)
    if argsz < DMA_UNMAP.size:
        raise ProtocolError(errno.EINVAL, f"DMA_UNMAP: argsz {argsz}")
    if flags & ~DMA_UNMAP_FLAG_ALL:
        # Dirty-page bitmaps are not supported (we do not advertise migration).
        raise ProtocolError(errno.ENOTSUP, f"DMA_UNMAP: unsupported flags {flags:#x}")
    if not flags & DMA_UNMAP_FLAG_ALL and (size == 0 or iova + size > 1 << 64):
        raise ProtocolError(errno.EINVAL, f"DMA_UNMAP: bad range iova={iova:#x} size={size:#x}")
    return DmaUnmap(argsz, flags, iova, size)


def decode_argsz_index(payload: bytes, layout: struct.Struct, what: str) -> tuple[int, int]:
    """(argsz, index) of GET_REGION_INFO / GET_IRQ_INFO; argsz must leave room for the whole reply."""
    _need(payload, layout.size, what)
    fields = layout.unpack_from(payload)
    argsz, index = fields[0], fields[2]
    if argsz < layout.size:
        raise ProtocolError(errno.EINVAL, f"{what}: argsz {argsz} < {layout.size}")
    return argsz, index


@dataclass(frozen=True)
class IrqSet:
    flags: int
    index: int
    start: int
    count: int
    data: bytes  # DATA_BOOL: one byte per sub-index

    @property
    def data_type(self) -> int:
        return self.flags & IRQ_SET_DATA_MASK

    @property
    def action(self) -> int:
        return self.flags & IRQ_SET_ACTION_MASK_ALL


def decode_irq_set(payload: bytes) -> IrqSet:
    _need(payload, IRQ_SET.size, "SET_IRQS")
    argsz, flags, index, start, count = IRQ_SET.unpack_from(payload)
    if argsz < IRQ_SET.size or argsz > len(payload):
        raise ProtocolError(errno.EINVAL, f"SET_IRQS: argsz {argsz} for a payload of {len(payload)}")
    if flags & ~(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK_ALL):
        raise ProtocolError(errno.EINVAL, f"SET_IRQS: unknown flags {flags:#x}")
    data_type, action = flags & IRQ_SET_DATA_MASK, flags & IRQ_SET_ACTION_MASK_ALL
    if data_type.bit_count() != 1 or action.bit_count() != 1:
        raise ProtocolError(errno.EINVAL, f"SET_IRQS: flags {flags:#x} need one data type and one action")
    data = payload[IRQ_SET.size : argsz]
    if data_type == IRQ_SET_DATA_BOOL and len(data) < count:
        raise ProtocolError(errno.EINVAL, f"SET_IRQS: {len(data)} bool bytes for count {count}")
    return IrqSet(flags, index, start, count, data[:count] if data_type == IRQ_SET_DATA_BOOL else b"")


@dataclass(frozen=True)
class RegionAccess:
    offset: int
    region: int
    count: int
    data: bytes  # writes only


def decode_region_access(payload: bytes, write: bool, max_count: int = MAX_DATA_XFER) -> RegionAccess:
    what = "REGION_WRITE" if write else "REGION_READ"
    _need(payload, REGION_RW.size, what)
    offset, region, count = REGION_RW.unpack_from(payload)
    if count == 0 or count > max_count:
        raise ProtocolError(errno.EINVAL, f"{what}: count {count}")
    data = payload[REGION_RW.size :]
    if write and len(data) != count:
        raise ProtocolError(errno.EINVAL, f"{what}: {len(data)} data bytes for count {count}")
    if not write and data:
        raise ProtocolError(errno.EINVAL, f"{what}: {len(data)} unexpected bytes after the request")
    return RegionAccess(offset, region, count, data)


# ---------------------------------------------------------------------------------------------- DMA messages
@dataclass(frozen=True)
class DmaLayout:
    """Where DMA_READ/DMA_WRITE put their count and data.

    QEMU 10.2.2 (hw/vfio-user/protocol.h, VFIOUserDMARW) has a 4-byte count, so data starts at payload+12,
    and it sizes messages with the C struct's padded size (32 bytes with the header): a DMA_WRITE must be
    4 bytes longer than header+12+count or QEMU refuses it (E2BIG), and a DMA_READ reply is count+32 long
    with 4 trailing bytes of padding. The spec has an 8-byte count and data at +16 (count+32 as well).
    """

    name: str
    count_format: str  # struct format of the count field
    data_offset: int  # in the payload
    write_padding: int  # bytes QEMU wants after a DMA_WRITE's data

    @property
    def request(self) -> struct.Struct:
        return struct.Struct("<Q" + self.count_format)

    def read_request(self, addr: int, count: int) -> bytes:
        return self.request.pack(addr, count).ljust(self.data_offset + self.write_padding, b"\0")

    def write_request(self, addr: int, data: bytes) -> bytes:
        return self.request.pack(addr, len(data)) + data + b"\0" * self.write_padding

    def read_reply_data(self, payload: bytes, addr: int, count: int) -> bytes:
        if len(payload) < self.data_offset + count:
            raise ProtocolError(errno.EINVAL, f"DMA_READ reply of {len(payload)} bytes for {count}")
        got_addr, got_count = self.request.unpack_from(payload)
        if got_addr != addr or got_count != count:
            raise ProtocolError(errno.EINVAL, f"DMA_READ reply for {got_count} at {got_addr:#x}")
        return payload[self.data_offset : self.data_offset + count]


QEMU_DMA_LAYOUT = DmaLayout("qemu-10.2", "I", 12, 4)
SPEC_DMA_LAYOUT = DmaLayout("spec", "Q", 16, 0)
