"""A synchronous vfio-user client for the benchmarks: QEMU's vCPU view of a trapped access (send the request,
block until its reply), with no reader thread of its own, so a figure is the server's cost plus the socket's.
It costs about what the floors' socket echo client does: a request packed into a buffer made once, one send, and
the reply taken with as few reads as the kernel allows (one, as the server sends it with one send): QEMU's C
client costs less still, so a figure over-states the server's share rather than hiding it.

tests/test_vfio_user_harness.py is the full client the tests use (it answers DMA messages on a reader thread);
this one refuses them: the benchmarks map guest memory with a memfd, so the server never sends any.
"""

from __future__ import annotations

import array
import json
import socket
import struct

HDR = struct.Struct("<HHIII")  # id, command, size, flags, error
RW = struct.Struct("<QII")  # offset, region, count
READ = struct.Struct(HDR.format + RW.format[1:])  # a REGION_READ request, whole
READ4_REPLY = struct.Struct(READ.format + "I")  # its reply with 4 bytes of data, whole
VERSION, DMA_MAP, SET_IRQS, REGION_READ, REGION_WRITE = 1, 2, 8, 9, 10
REPLY, NO_REPLY, ERROR = 0x1, 0x10, 0x20
IRQ_DATA_NONE, IRQ_DATA_EVENTFD, IRQ_UNMASK, IRQ_TRIGGER = 1, 4, 16, 32


class SyncVfioUserClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._id = 0
        self._buf = bytearray(1 << 16)
        self._view = memoryview(self._buf)
        self._out = bytearray(1 << 16)
        self._out_view = memoryview(self._out)
        self._read_request = self._out_view[: READ.size]

    def _recv_reply(self, got: int = 0) -> int:
        """Read one message into the buffer (`got` bytes of it are there); returns its size."""
        size, view, recv_into = HDR.size, self._view, self.sock.recv_into
        if got >= HDR.size:
            size = max(HDR.size, HDR.unpack_from(self._buf)[2])
        while got < size:
            k = recv_into(view[got:])
            if not k:
                raise EOFError("the server closed the socket")
            got += k
            if got >= HDR.size:
                size = max(HDR.size, HDR.unpack_from(self._buf)[2])
        if got != size:
            raise RuntimeError(f"{got - size} bytes after the reply: the server sent something unasked")
        return size

    def _exchange(self, cmd: int, n: int) -> int:
        """Send the request packed in `_out[:n]` and wait for its reply; returns the reply's size."""
        self.sock.sendall(self._out_view[:n])
        return self._reply_to(cmd)

    def _reply_to(self, cmd: int, got: int = 0) -> int:
        size = self._recv_reply(got)
        mid, rcmd, _, rflags, err = HDR.unpack_from(self._buf)
        if rflags & 0xF != REPLY or mid != self._id or rcmd != cmd:
            raise RuntimeError(f"unexpected message {rcmd} (flags {rflags:#x}, id {mid}) for request {cmd}")
        if rflags & ERROR:
            raise OSError(err, f"vfio-user command {cmd} refused")
        return size

    def request(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = 0) -> bytes:
        self._id = (self._id + 1) & 0xFFFF
        msg = HDR.pack(self._id, cmd, HDR.size + len(payload), flags, 0) + payload
        if fds:
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        else:
            self.sock.sendall(msg)
        if flags & NO_REPLY:
            return b""
        size = self._reply_to(cmd)
        return bytes(self._buf[HDR.size : size])

    def read32(self, region: int, offset: int) -> int:
        """A 4-byte register read, in as few steps as the floors' socket echo client takes (one pack, one send,
        one read, one unpack when the reply comes whole, as a server sends it), so that a read's figure
        carries no more of this client's cost than the echo's figure does of its own."""
        self._id = mid = (self._id + 1) & 0xFFFF
        READ.pack_into(self._out, 0, mid, REGION_READ, READ.size, 0, 0, offset, region, 4)
        self.sock.sendall(self._read_request)
        got = self.sock.recv_into(self._view)
        if got == READ4_REPLY.size:
            rid, rcmd, size, rflags, _, _, _, _, value = READ4_REPLY.unpack_from(self._buf)
            if rid == mid and rcmd == REGION_READ and rflags == REPLY and size == got:
                return value
        if not got:
            raise EOFError("the server closed the socket")
        self._reply_to(REGION_READ, got)  # anything else: in pieces, an error, a stray message
        return int.from_bytes(self._buf[READ.size : READ.size + 4], "little")

    def write32(self, region: int, offset: int, value: int) -> None:
        self._id = mid = (self._id + 1) & 0xFFFF
        n = HDR.size + RW.size + 4
        HDR.pack_into(self._out, 0, mid, REGION_WRITE, n, 0, 0)
        RW.pack_into(self._out, HDR.size, offset, region, 4)
        self._out[HDR.size + RW.size : n] = value.to_bytes(4, "little")
        self._exchange(REGION_WRITE, n)

    def version(self) -> None:
        caps = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096}}
        self.request(VERSION, struct.pack("<HH", 0, 0) + json.dumps(caps).encode() + b"\0")

    def dma_map(self, iova: int, size: int, fd: int) -> None:
        self.request(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, iova, size), (fd,))

    def set_irqs(self, flags: int, index: int, start: int, count: int, fds: tuple[int, ...] = ()) -> None:
        self.request(SET_IRQS, struct.pack("<IIIII", 20, flags, index, start, count), fds)

    def close(self) -> None:
        self.sock.close()
