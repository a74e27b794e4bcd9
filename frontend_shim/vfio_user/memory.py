"""Guest memory as the vfio-user client lent it with DMA_MAP: the shim's `GuestMemory` for a QEMU guest.

Regions that came with an fd (guest RAM in a shared memfd) are mmapped and read directly, provided the fd is
sealed against shrinking: a mapping of a file the client truncates afterwards faults (SIGBUS) on the next DMA
and would kill the shim. QEMU's memory-backend-memfd seals its memfd by default (seal=on). Other fds, and
regions without one (QEMU RAM that is not shared, ROMs, other devices' VRAM), are only recorded; DMA to them
becomes DMA_READ / DMA_WRITE messages through the connection's `DmaTransport`. Every access is bounds-checked
against the maps and raises GuestMemoryError outside them, after a disconnect, or when the client cannot answer.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import mmap
import os
import stat
import threading
from dataclasses import dataclass
from typing import Protocol

from frontend_shim.guests.guest import GuestMemoryError, GuestMemoryUnmapped
from frontend_shim.vfio_user import protocol as P
from services.common import logs

log = logs.get("shim.vfio_user.memory")
MAX_DMA_LENGTH = 64 * 1024 * 1024  # one read or write; far above any device's buffer


class DmaTransport(Protocol):
    """DMA through messages to the client (the live connection implements it)."""

    def dma_read(self, addr: int, count: int) -> bytes: ...

    def dma_write(self, addr: int, data: bytes) -> None: ...


@dataclass
class _Map:
    iova: int
    size: int
    flags: int
    mm: mmap.mmap | None
    skew: int  # where iova lies in `mm` (the mmap starts at a page boundary)

    @property
    def end(self) -> int:
        return self.iova + self.size


@dataclass
class MemoryStats:
    maps: int = 0
    unmaps: int = 0
    fd_maps: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    message_reads: int = 0
    message_writes: int = 0


class DmaMemory:
    """Implements `frontend_shim.guests.guest.GuestMemory` over the current connection's DMA maps."""

    def __init__(self, max_maps: int = P.MAX_DMA_MAPS, max_xfer: int = P.MAX_DATA_XFER) -> None:
        self.max_maps = max_maps
        self.max_xfer = max_xfer
        self.transport: DmaTransport | None = None
        self.stats = MemoryStats()
        self._maps: list[_Map] = []  # sorted by iova, never overlapping
        self._starts: list[int] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ DMA_MAP / DMA_UNMAP
    def add(self, req: P.DmaMap, fd: int | None) -> None:
        """Record a map; with an fd, mmap it (the fd is always closed here)."""
        try:
            with self._lock:
                if len(self._maps) >= self.max_maps:
                    raise P.ProtocolError(errno.ENOSPC, f"more than {self.max_maps} DMA maps")
                i = bisect.bisect_right(self._starts, req.iova)
                before = self._maps[i - 1] if i else None
                after = self._maps[i] if i < len(self._maps) else None
                if (before and before.end > req.iova) or (after and after.iova < req.iova + req.size):
                    raise P.ProtocolError(errno.EEXIST, f"DMA map at {req.iova:#x}+{req.size:#x} overlaps a map")
                mm, skew = (None, 0) if fd is None else _mmap(fd, req)
                self._maps.insert(i, _Map(req.iova, req.size, req.flags, mm, skew))
                self._starts.insert(i, req.iova)
                self.stats.maps += 1
                self.stats.fd_maps += mm is not None
        finally:
            if fd is not None:
                os.close(fd)

    def remove(self, iova: int, size: int) -> int:
        """Drop every map inside [iova, iova+size); a map cut in two is refused like the kernel's type1 IOMMU.
        Returns how many were dropped."""
        end = iova + size
        with self._lock:
            hit = [m for m in self._maps if m.iova < end and m.end > iova]
            if any(m.iova < iova or m.end > end for m in hit):
                raise P.ProtocolError(errno.EINVAL, f"DMA unmap {iova:#x}+{size:#x} splits a map")
            for m in hit:
                self._drop(m)
            return len(hit)

    def remove_all(self) -> int:
        with self._lock:
            n = len(self._maps)
            for m in list(self._maps):
                self._drop(m)
            return n

    def _drop(self, m: _Map) -> None:
        i = self._maps.index(m)
        del self._maps[i]
        del self._starts[i]
        if m.mm is not None:
            m.mm.close()
        self.stats.unmaps += 1

    def regions(self) -> list[tuple[int, int, bool]]:
        """(iova, size, has fd) of each map, for logs and tests."""
        with self._lock:
            return [(m.iova, m.size, m.mm is not None) for m in self._maps]

    # ------------------------------------------------------------------ GuestMemory
    def read(self, addr: int, length: int) -> bytes:
        out = bytearray()
        for m, start, n in self._spans(addr, length, P.DMA_MAP_FLAG_READ):
            if m.mm is not None:
                with self._lock:
                    if m.mm.closed:
                        raise GuestMemoryError(f"DMA map at {m.iova:#x} went away during the read")
                    pos = m.skew + start - m.iova
                    out += m.mm[pos : pos + n]
            else:
                out += self._message_read(start, n)
        self.stats.bytes_read += length
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        done = 0
        for m, start, n in self._spans(addr, len(data), P.DMA_MAP_FLAG_WRITE):
            chunk = data[done : done + n]
            if m.mm is not None:
                with self._lock:
                    if m.mm.closed:
                        raise GuestMemoryError(f"DMA map at {m.iova:#x} went away during the write")
                    pos = m.skew + start - m.iova
                    m.mm[pos : pos + n] = chunk
            else:
                self._message_write(start, chunk)
            done += n
        self.stats.bytes_written += len(data)

    # ------------------------------------------------------------------ internals
    def _spans(self, addr: int, length: int, need: int) -> list[tuple[_Map, int, int]]:
        """The maps covering [addr, addr+length) in order, or GuestMemoryError if any byte is not mapped."""
        if length < 0 or length > MAX_DMA_LENGTH or addr < 0 or addr + length > 1 << 64:
            raise GuestMemoryUnmapped(f"DMA of {length} bytes at {addr:#x} is not a valid range")
        spans: list[tuple[_Map, int, int]] = []
        pos, end = addr, addr + length
        with self._lock:
            i = bisect.bisect_right(self._starts, pos) - 1
            while pos < end:
                if i < 0 or i >= len(self._maps) or not self._maps[i].iova <= pos < self._maps[i].end:
                    raise GuestMemoryUnmapped(f"DMA of {length} bytes at {addr:#x}: {pos:#x} is not mapped")
                m = self._maps[i]
                if not m.flags & need:
                    kind = "read" if need == P.DMA_MAP_FLAG_READ else "write"
                    raise GuestMemoryUnmapped(f"DMA map at {m.iova:#x} does not allow {kind}s")
                n = min(end, m.end) - pos
                spans.append((m, pos, n))
                pos += n
                i += 1
        return spans

    def _message_read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        for off in range(0, n, self.max_xfer):
            transport = self.transport
            if transport is None:
                raise GuestMemoryError(f"DMA at {addr + off:#x}: no client connected")
            out += transport.dma_read(addr + off, min(self.max_xfer, n - off))
            self.stats.message_reads += 1
        return bytes(out)

    def _message_write(self, addr: int, data: bytes) -> None:
        for off in range(0, len(data), self.max_xfer):
            transport = self.transport
            if transport is None:
                raise GuestMemoryError(f"DMA at {addr + off:#x}: no client connected")
            transport.dma_write(addr + off, data[off : off + self.max_xfer])
            self.stats.message_writes += 1


def _cannot_shrink(fd: int) -> bool:
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK)
    except OSError:  # not a memfd: nothing stops a truncate
        return False


def _mmap(fd: int, req: P.DmaMap) -> tuple[mmap.mmap | None, int]:
    """Map a checked fd; None (DMA by messages) when it could shrink under the mapping."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise P.ProtocolError(errno.EBADF, f"DMA_MAP fd: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise P.ProtocolError(errno.EINVAL, "DMA_MAP fd is not a memory file")
    if req.offset + req.size > st.st_size:
        raise P.ProtocolError(
            errno.EINVAL, f"DMA_MAP {req.size:#x} bytes at fd offset {req.offset:#x} past its {st.st_size:#x}"
        )
    if not _cannot_shrink(fd):
        log.warning(
            "DMA_MAP fd is not sealed against shrinking: DMA there goes through messages (slower); back guest "
            "RAM with memory-backend-memfd (seal=on, its default)",
            extra={"iova": hex(req.iova), "size": hex(req.size)},
        )
        return None, 0
    base = req.offset - req.offset % mmap.ALLOCATIONGRANULARITY
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if req.flags & P.DMA_MAP_FLAG_WRITE else 0)
    try:
        mm = mmap.mmap(fd, req.size + req.offset - base, mmap.MAP_SHARED, prot, offset=base)
    except (OSError, ValueError, OverflowError) as exc:
        raise P.ProtocolError(errno.ENOMEM, f"cannot mmap the DMA region: {exc}") from exc
    return mm, req.offset - base
