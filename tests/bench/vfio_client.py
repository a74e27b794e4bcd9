"""A synchronous vfio-user client for the benchmarks: QEMU's vCPU view of a trapped access (send the request,
block until its reply), with no reader thread of its own, so a figure is the server's cost plus the socket's.

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

    def _recv_into(self, start: int, n: int) -> None:
        got, view, recv_into = 0, self._view[start : start + n], self.sock.recv_into
        while got < n:
            k = recv_into(view[got:], n - got)
            if not k:
                raise EOFError("the server closed the socket")
            got += k

    def request(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = (), flags: int = 0) -> bytes:
        self._id = (self._id + 1) & 0xFFFF
        msg = HDR.pack(self._id, cmd, HDR.size + len(payload), flags, 0) + payload
        if fds:
            self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        else:
            self.sock.sendall(msg)
        if flags & NO_REPLY:
            return b""
        self._recv_into(0, HDR.size)
        mid, rcmd, size, rflags, err = HDR.unpack_from(self._buf)
        if size > HDR.size:
            self._recv_into(HDR.size, size - HDR.size)
        if rflags & 0xF != REPLY or mid != self._id or rcmd != cmd:
            raise RuntimeError(f"unexpected message {rcmd} (flags {rflags:#x}, id {mid}) for request {cmd}")
        if rflags & ERROR:
            raise OSError(err, f"vfio-user command {cmd} refused")
        return bytes(self._buf[HDR.size : size])

    def version(self) -> None:
        caps = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096}}
        self.request(VERSION, struct.pack("<HH", 0, 0) + json.dumps(caps).encode() + b"\0")

    def read32(self, region: int, offset: int) -> int:
        reply = self.request(REGION_READ, RW.pack(offset, region, 4))
        return int.from_bytes(reply[RW.size : RW.size + 4], "little")

    def write32(self, region: int, offset: int, value: int) -> None:
        self.request(REGION_WRITE, RW.pack(offset, region, 4) + value.to_bytes(4, "little"))

    def dma_map(self, iova: int, size: int, fd: int) -> None:
        self.request(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, iova, size), (fd,))

    def set_irqs(self, flags: int, index: int, start: int, count: int, fds: tuple[int, ...] = ()) -> None:
        self.request(SET_IRQS, struct.pack("<IIIII", 20, flags, index, start, count), fds)

    def close(self) -> None:
        self.sock.close()
