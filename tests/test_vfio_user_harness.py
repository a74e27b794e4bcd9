"""A small vfio-user CLIENT, written from QEMU's docs/interop/vfio-user.rst and QEMU 10.2.2's hw/vfio-user, for
testing our server without QEMU. Its byte layouts are spelled out here on purpose (not imported from the
server's protocol module), so a layout mistake on one side is not mirrored on the other.

Like QEMU it answers the server's DMA_READ / DMA_WRITE from its own "guest RAM" with QEMU 10.2.2's actual
layout: a 4-byte count, data at payload+12, and messages sized with the padded C struct (data + 32 bytes).
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import threading
from dataclasses import dataclass, field

HDR = struct.Struct("<HHIII")
REQUEST, REPLY, NO_REPLY, ERROR = 0x0, 0x1, 0x10, 0x20
VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, GET_REGION_INFO = 1, 2, 3, 4, 5
GET_REGION_IO_FDS, GET_IRQ_INFO, SET_IRQS, REGION_READ, REGION_WRITE = 6, 7, 8, 9, 10
DMA_READ, DMA_WRITE, DEVICE_RESET = 11, 12, 13
IRQ_DATA_NONE, IRQ_DATA_BOOL, IRQ_DATA_EVENTFD = 1, 2, 4
IRQ_MASK, IRQ_UNMASK, IRQ_TRIGGER = 8, 16, 32
CONFIG_REGION = 7
# What QEMU 10.2.2 sends in VERSION (captured from a real run, see REFERENCE.md).
QEMU_CAPS = {
    "capabilities": {
        "migration": {"pgsize": 4096, "max_bitmap_size": 268435456},
        "max_msg_fds": 16,
        "max_data_xfer_size": 1048576,
        "pgsizes": 4096,
        "max_dma_maps": 65535,
        "write_multiple": True,
    }
}


class ClientError(Exception):
    def __init__(self, err: int, command: int) -> None:
        super().__init__(f"command {command} refused: {errno.errorcode.get(err, err)}")
        self.errno = err


@dataclass
class Reply:
    id: int
    command: int
    size: int
    flags: int
    error: int
    payload: bytes
    fds: list[int] = field(default_factory=list)


def sealed_memfd(name: str, size: int) -> int:
    """A memfd sealed like QEMU's memory-backend-memfd (seal=on): it can neither shrink nor grow."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return fd


class GuestRam:
    """Guest RAM in a memfd: the server may map it (DMA_MAP with the fd) or reach it through DMA messages."""

    def __init__(self, size: int, base: int) -> None:
        self.base = base
        self.size = size
        self.fd = sealed_memfd("test-guest-ram", size)
        self.mm = mmap.mmap(self.fd, size)

    def contains(self, addr: int, n: int) -> bool:
        return self.base <= addr and addr + n <= self.base + self.size

    def read(self, addr: int, n: int) -> bytes:
        return self.mm[addr - self.base : addr - self.base + n]

    def write(self, addr: int, data: bytes) -> None:
        self.mm[addr - self.base : addr - self.base + len(data)] = data

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class VfioUserClient:
    def __init__(self, sock: socket.socket, ram: GuestRam | None = None, timeout: float = 5.0) -> None:
        self.sock = sock
        self.ram = ram
        self.timeout = timeout
        self.dma_requests: list[tuple[int, int, int]] = []  # (command, message size, count) served
        self._next_id = 0x100
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict[int, Reply] = {}
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="test-vfio-client", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ framing
    def _recv_exact(self, n: int, fds: list[int]) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data, anc, _, _ = self.sock.recvmsg(n - len(buf), socket.CMSG_SPACE(16 * 4))
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                    fds.extend(a)
            if not data:
                raise EOFError
            buf += data
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                fds: list[int] = []
                mid, cmd, size, flags, err = HDR.unpack(self._recv_exact(16, fds))
                payload = self._recv_exact(size - 16, fds) if size > 16 else b""
                if flags & 0xF == REPLY:
                    with self._cond:
                        self._replies[mid] = Reply(mid, cmd, size, flags, err, payload, fds)
                        self._cond.notify_all()
                else:
                    self._serve_request(mid, cmd, size, payload)
        except (EOFError, OSError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _serve_request(self, mid: int, cmd: int, size: int, payload: bytes) -> None:
        """DMA from the server, answered the way QEMU 10.2.2's vfio_user_dma_read/write do."""
        if cmd not in (DMA_READ, DMA_WRITE) or size < 32:
            self._send_raw(HDR.pack(mid, cmd, 16, REPLY | ERROR, errno.EINVAL))
            return
        addr, count = struct.unpack_from("<QI", payload)
        self.dma_requests.append((cmd, size, count))
        if cmd == DMA_READ:
            if self.ram is None or not self.ram.contains(addr, count):
                self._send_raw(HDR.pack(mid, cmd, 16, REPLY | ERROR, errno.EFAULT))
                return
            body = payload[:12] + self.ram.read(addr, count) + bytes(4)
            self._send_raw(HDR.pack(mid, cmd, 16 + len(body), REPLY, 0) + body)
        else:
            if count > size - 32:
                self._send_raw(HDR.pack(mid, cmd, 16, REPLY | ERROR, errno.E2BIG))
                return
            if self.ram is None or not self.ram.contains(addr, count):
                self._send_raw(HDR.pack(mid, cmd, 16, REPLY | ERROR, errno.EFAULT))
                return
            self.ram.write(addr, payload[12 : 12 + count])
            self._send_raw(HDR.pack(mid, cmd, 16, REPLY, 0))

    def _send_raw(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        with self._send_lock:
            if fds:
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
            else:
                self.sock.sendall(data)

    # ------------------------------------------------------------------ requests
    def new_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF
        return self._next_id

    def send(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = REQUEST) -> int:
        mid = self.new_id()
        self._send_raw(HDR.pack(mid, cmd, 16 + len(payload), flags, 0) + payload, fds)
        return mid

    def wait_reply(self, mid: int, timeout: float | None = None) -> Reply:
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._replies or self._closed, timeout or self.timeout)
            if mid not in self._replies:
                raise TimeoutError(f"no reply to message {mid}" + (" (server closed)" if ok else ""))
            return self._replies.pop(mid)

    def no_reply_within(self, mid: int, seconds: float) -> bool:
        with self._cond:
            return not self._cond.wait_for(lambda: mid in self._replies, seconds)

    def request(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), check: bool = True) -> Reply:
        reply = self.wait_reply(self.send(cmd, payload, fds))
        assert reply.command == cmd
        if check and reply.flags & ERROR:
            for fd in reply.fds:
                os.close(fd)
            raise ClientError(reply.error, cmd)
        return reply

    def error_of(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> int:
        """The errno the server answers with (0 for success)."""
        reply = self.request(cmd, payload, fds, check=False)
        for fd in reply.fds:
            os.close(fd)
        return reply.error if reply.flags & ERROR else 0

    # ------------------------------------------------------------------ commands
    def version(self, caps: dict | None = None) -> dict:
        text = json.dumps(QEMU_CAPS if caps is None else caps).encode() + b"\0"
        payload = struct.pack("<HH", 0, 0) + text
        reply = self.request(VERSION, payload)
        assert len(reply.payload) <= len(payload), "a VERSION reply must fit the request's buffer (QEMU)"
        major, minor = struct.unpack_from("<HH", reply.payload)
        assert (major, minor) == (0, 0)
        body = reply.payload[4:]
        assert body.endswith(b"\0")
        return json.loads(body[:-1])

    def device_info(self) -> tuple[int, int, int]:
        reply = self.request(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
        _, flags, regions, irqs = struct.unpack("<IIII", reply.payload)
        return flags, regions, irqs

    def region_info(self, index: int) -> tuple[int, int, int, list[int]]:
        """(flags, size, offset, fds)"""
        r = self.request(GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, index, 0, 0, 0))
        _, flags, got_index, _, size, offset = struct.unpack("<IIIIQQ", r.payload)
        assert got_index == index
        return flags, size, offset, r.fds

    def irq_info(self, index: int) -> tuple[int, int]:
        reply = self.request(GET_IRQ_INFO, struct.pack("<IIII", 16, 0, index, 0))
        _, flags, got, count = struct.unpack("<IIII", reply.payload)
        assert got == index
        return flags, count

    def set_irqs(
        self, flags: int, index: int, start: int, count: int, fds: tuple[int, ...] = (), data: bytes = b""
    ) -> None:
        self.request(SET_IRQS, struct.pack("<IIIII", 20 + len(data), flags, index, start, count) + data, fds)

    def read(self, region: int, offset: int, count: int) -> bytes:
        r = self.request(REGION_READ, struct.pack("<QII", offset, region, count))
        off, reg, n = struct.unpack_from("<QII", r.payload)
        assert (off, reg, n) == (offset, region, count)
        return r.payload[16 : 16 + n]

    def write(self, region: int, offset: int, data: bytes, posted: bool = False) -> None:
        payload = struct.pack("<QII", offset, region, len(data)) + data
        if posted:
            self.send(REGION_WRITE, payload, flags=NO_REPLY)
        else:
            self.request(REGION_WRITE, payload)

    def read32(self, region: int, offset: int) -> int:
        return int.from_bytes(self.read(region, offset, 4), "little")

    def write32(self, region: int, offset: int, value: int) -> None:
        self.write(region, offset, value.to_bytes(4, "little"))

    def dma_map(self, iova: int, size: int, fd: int | None = None, offset: int = 0, flags: int = 3) -> None:
        self.request(DMA_MAP, struct.pack("<IIQQQ", 32, flags, offset, iova, size), (fd,) if fd is not None else ())

    def dma_unmap(self, iova: int, size: int, flags: int = 0) -> None:
        r = self.request(DMA_UNMAP, struct.pack("<IIQQ", 24, flags, iova, size))
        assert r.payload[:24] == struct.pack("<IIQQ", 24, flags, iova, size)

    def reset(self) -> None:
        self.request(DEVICE_RESET)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(2)


def test_harness_answers_dma_like_qemu() -> None:
    """The harness's own DMA answers follow QEMU 10.2.2's layout (checked against hand-written bytes)."""
    a, b = socket.socketpair()
    ram = GuestRam(4096, 0x1000)
    ram.write(0x1010, b"abcdef")
    client = VfioUserClient(a, ram)
    try:
        # DMA_READ of 6 bytes at 0x1010: 16-byte header + offset u64 + count u32 + 4 pad bytes = 32 bytes.
        b.sendall(HDR.pack(7, DMA_READ, 32, REQUEST, 0) + struct.pack("<QI", 0x1010, 6) + bytes(4))
        hdr = b.recv(16, socket.MSG_WAITALL)
        mid, cmd, size, flags, _ = HDR.unpack(hdr)
        assert (mid, cmd, size, flags) == (7, DMA_READ, 6 + 32, REPLY)
        body = b.recv(size - 16, socket.MSG_WAITALL)
        assert body[12:18] == b"abcdef" and len(body) == 22
        # DMA_WRITE of 3 bytes needs size >= 32 + 3 (the padded struct), data at payload+12.
        b.sendall(HDR.pack(8, DMA_WRITE, 34, REQUEST, 0) + struct.pack("<QI", 0x1020, 3) + b"xyz" + bytes(3))
        assert HDR.unpack(b.recv(16, socket.MSG_WAITALL))[2:4] == (16, REPLY | ERROR)  # one byte short: E2BIG
        b.sendall(HDR.pack(9, DMA_WRITE, 35, REQUEST, 0) + struct.pack("<QI", 0x1020, 3) + b"xyz" + bytes(4))
        assert HDR.unpack(b.recv(16, socket.MSG_WAITALL))[2:4] == (16, REPLY)
        assert ram.read(0x1020, 3) == b"xyz"
    finally:
        client.close()
        b.close()
        ram.close()
