"""Fuzzing the shim's vfio-user server (the socket QEMU talks to) with Hypothesis.

Each example opens a fresh connection to a server in front of a real device model (ES1370, or SVGA II with
memfd-backed VRAM/FIFO BARs) and sends a sequence of messages: well-framed requests with hostile fields
(offsets and counts at and past region ends, unknown regions and IRQ indexes, flag bits, argsz lies, JSON that is
not what VERSION expects), random commands and bytes, fds of every kind attached where they belong and where they
do not (memfds of the wrong size, eventfds, pipes, too many), lying header sizes, and the device's own DMA through
the client's maps, including a map whose memfd the client shrinks afterwards.

Invariants, checked against an oracle of our own rather than the server's code:
- every request that wants a reply gets exactly one, with its id and command, and an errno from the documented
  set (never EIO: that is an exception the server did not expect);
- region accesses succeed exactly when they are legal; a trapped BAR's device sees naturally aligned pieces
  covering exactly the bytes accessed; memory BARs hold exactly what was written (a shadow copy), nothing more;
- config space keeps its IDs and BAR type bits; DMA returns the client's bytes or refuses, never faults, and
  writes nothing outside the map;
- the server thread survives everything except a broken stream, after which a new client is served; every fd
  the client sent is closed by the end.
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import random
import socket
import struct
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontend_shim.guests.guest import GuestMemoryError
from frontend_shim.vfio_user import protocol as P
from frontend_shim.vfio_user.devices import es1370_function, svga_spec
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.pci import PciFunction, memfd_backing
from frontend_shim.vfio_user.server import VfioUserServer
from services.devices import es1370_regs as AR
from services.devices.es1370 import Es1370
from services.devices.svga import SvgaII
from tests.fuzz_strategies import fuzz_settings
from tests.test_vfio_user_harness import HDR, QEMU_CAPS, ClientError, GuestRam, VfioUserClient

VRAM, FIFO = 64 * 1024, 16 * 1024  # small memory BARs: the shadow comparison reads all of them every example
RAM_BASE, RAM_SIZE = 0x100000, 64 * 1024  # what the client answers DMA_READ/DMA_WRITE messages from
CONFIG = P.PCI_CONFIG_REGION
REPLY, NO_REPLY, ERROR = 0x1, 0x10, 0x20
# errnos the server documents for refusals; EIO would be an exception it did not expect.
REFUSALS = {errno.EINVAL, errno.E2BIG, errno.ENOSYS, errno.ENOTSUP, errno.ENOSPC, errno.EEXIST, errno.EBADF,
            errno.ENOMEM}  # fmt: skip
U64 = (1 << 64) - 1


class RecordingDevice:
    """A device model behind BAR0 that remembers every access it was handed."""

    def __init__(self, read: object, write: object) -> None:
        self._read, self._write = read, write
        self.pieces: list[tuple[str, int, int]] = []

    def io_read(self, bar: int, offset: int, size: int) -> int:
        self.pieces.append(("R", offset, size))
        return self._read(offset, size)  # type: ignore[operator]

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.pieces.append(("W", offset, size))
        self._write(offset, size, value)  # type: ignore[operator]


@dataclass
class Target:
    kind: str
    function: PciFunction
    device: RecordingDevice
    bar_sizes: dict[int, int]  # region -> size, for the BARs this function has
    memory_bars: dict[int, bytearray] = field(default_factory=dict)  # region -> shadow of a memfd-backed BAR
    split: bool = True  # BAR0 accesses reach the device in aligned pieces (ES1370) or whole (SVGA)

    def close(self) -> None:
        self.function.close()
        for bar in self.function.spec.bars:
            if bar.backing is not None:
                os.close(bar.backing.fd)


def make_target(kind: str) -> Target:
    if kind == "es1370":
        model = Es1370()
        device = RecordingDevice(model.read, model.write)
        return Target(kind, es1370_function(device), device, {0: AR.IO_BAR_SIZE})
    svga = SvgaII(vram=VRAM, fifo=FIFO)
    device = RecordingDevice(svga.read, svga.write)
    spec = svga_spec(memfd_backing("fuzz-vram", VRAM), memfd_backing("fuzz-fifo", FIFO), VRAM, FIFO)
    return Target(
        kind, PciFunction(spec, device), device, {0: 16, 1: VRAM, 2: FIFO}, {1: bytearray(VRAM), 2: bytearray(FIFO)},
        split=False,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- strategies
def _u32() -> st.SearchStrategy[int]:
    extremes = st.sampled_from([0xFF, 0xFFFF, 1 << 31, 0xFFFFFFFF])
    return st.one_of(st.integers(0, 64), extremes, st.integers(0, 0xFFFFFFFF))


def _near(size: int) -> st.SearchStrategy[int]:
    """Offsets at and around a region's edges, and far out."""
    return st.one_of(
        st.integers(0, max(0, size - 1)),
        st.sampled_from([0, 1, 2, 3, 4, size - 4, size - 2, size - 1, size, size + 1, 1 << 32, 1 << 63, U64]),
        st.integers(0, U64),
    ).map(lambda v: v & U64)


_counts = st.one_of(
    st.sampled_from([1, 2, 4]), st.integers(0, 16), st.sampled_from([4096, P.MAX_DATA_XFER, P.MAX_DATA_XFER + 1]),
    st.integers(0, 70000),
)  # fmt: skip
_regions = st.one_of(st.integers(0, 9), st.sampled_from([0, 0, 1, 2, 7, 7, 0xFFFFFFFF]))
_flags = st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from([NO_REPLY, REPLY, ERROR, 0x100, 0x2, 0xF]))
_fd_kinds = st.sampled_from(["memfd", "sealed", "eventfd", "pipe", "devnull"])


@st.composite
def region_access(draw: st.DrawFn, write: bool) -> dict:
    region = draw(_regions)
    size = draw(st.sampled_from([16, 256])) if region == 0 else {1: VRAM, 2: FIFO, 7: 256}.get(region, 64)
    offset = draw(_near(size))
    count = draw(_counts)
    payload = P.REGION_RW.pack(offset, region, count & 0xFFFFFFFF)
    if write:
        length = draw(st.one_of(st.just(count), st.just(count), st.integers(0, count + 8)))
        payload += random.Random(draw(st.integers(0, 1 << 30))).randbytes(min(length, P.MAX_DATA_XFER + 64))
    elif draw(st.integers(0, 9)) == 0:
        payload += b"\0" * draw(st.integers(1, 8))  # trailing bytes a read must not carry
    return {"cmd": 10 if write else 9, "payload": payload}


@st.composite
def dma_map(draw: st.DrawFn) -> dict:
    size = draw(st.one_of(st.sampled_from([4096, 8192, 65536]), st.integers(0, 1 << 20), st.sampled_from([0, U64])))
    iova = draw(st.one_of(st.integers(0, 64).map(lambda p: p * 4096), st.integers(0, U64), st.just(U64 - 4095)))
    offset = draw(st.one_of(st.just(0), st.just(4096), st.integers(0, 1 << 20)))
    flags = draw(st.one_of(st.just(3), st.just(1), st.integers(0, 0xFF)))
    argsz = draw(st.one_of(st.just(32), _u32()))
    fd = draw(st.one_of(st.none(), st.tuples(st.sampled_from(["memfd", "sealed"]), st.integers(0, 1 << 18)),
                        st.tuples(_fd_kinds, st.just(4096))))  # fmt: skip
    return {"cmd": 2, "payload": P.DMA_MAP.pack(argsz, flags, offset, iova, size), "fds": [fd] if fd else []}


@st.composite
def dma_unmap(draw: st.DrawFn) -> dict:
    flags = draw(st.one_of(st.just(0), st.just(P.DMA_UNMAP_FLAG_ALL), st.integers(0, 0xFF)))
    iova = draw(st.one_of(st.integers(0, 64).map(lambda p: p * 4096), st.integers(0, U64)))
    size = draw(st.one_of(st.sampled_from([4096, 65536, 0]), st.integers(0, U64)))
    return {"cmd": 3, "payload": P.DMA_UNMAP.pack(draw(st.one_of(st.just(24), _u32())), flags, iova, size)}


@st.composite
def set_irqs(draw: st.DrawFn) -> dict:
    data_type = draw(st.sampled_from([1, 2, 4, 0, 3, 7]))
    action = draw(st.sampled_from([8, 16, 32, 0, 24]))
    index, start, count = draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 4))
    data = bytes(draw(st.lists(st.integers(0, 2), max_size=count + 1))) if data_type == 2 else b""
    n_fds = draw(st.integers(0, count + 1)) if data_type == 4 else draw(st.sampled_from([0, 0, 0, 1]))
    fds = [(draw(st.sampled_from(["eventfd", "eventfd", "pipe"])), 0) for _ in range(n_fds)]
    argsz = draw(st.one_of(st.just(20 + len(data)), _u32()))
    payload = P.IRQ_SET.pack(argsz, data_type | action, index, start, count) + data
    return {"cmd": 8, "payload": payload, "fds": fds}


def _version() -> st.SearchStrategy[dict]:
    caps = st.one_of(
        st.just(QEMU_CAPS),
        st.fixed_dictionaries(
            {},
            optional={
                "capabilities": st.dictionaries(
                    st.sampled_from(["max_msg_fds", "max_data_xfer_size", "pgsizes", "migration", "write_multiple"]),
                    st.one_of(
                        st.integers(-(1 << 70), 1 << 70),
                        st.text(max_size=8),
                        st.none(),
                        st.booleans(),
                        st.lists(st.integers(), max_size=2),
                    ),  # fmt: skip
                )
            },
        ),
        st.lists(st.integers(), max_size=3),
    )
    text = st.one_of(caps.map(lambda c: json.dumps(c).encode() + b"\0"), st.binary(max_size=64))
    return st.builds(
        lambda major, minor, body: {"cmd": 1, "payload": struct.pack("<HH", major, minor) + body},
        st.sampled_from([0, 0, 1, 0xFFFF]),
        st.integers(0, 0xFFFF),
        text,
    )


def _argsz_index(cmd: int, fmt: struct.Struct) -> st.SearchStrategy[dict]:
    """A GET_*_INFO request: argsz, flags, index, then zeros (cut short sometimes)."""

    def build(argsz: int, index: int, cut: int) -> dict:
        return {"cmd": cmd, "payload": fmt.pack(argsz, 0, index, *[0] * (len(fmt.format) - 4))[:cut]}

    return st.builds(
        build,
        st.one_of(st.just(fmt.size), _u32()),
        st.one_of(st.integers(0, 10), _u32()),
        st.one_of(st.just(fmt.size), st.integers(0, fmt.size)),
    )


def _with_fds() -> st.SearchStrategy[list]:
    return st.one_of(st.just([]), st.just([]), st.just([]), st.lists(st.tuples(_fd_kinds, st.just(4096)), max_size=10))


request = st.one_of(
    region_access(write=False),
    region_access(write=True),
    region_access(write=True),
    dma_map(),
    dma_unmap(),
    set_irqs(),
    _version(),
    _argsz_index(5, P.REGION_INFO),
    _argsz_index(7, P.IRQ_INFO),
    st.builds(lambda cut: {"cmd": 4, "payload": P.DEVICE_INFO.pack(16, 0, 0, 0)[:cut]}, st.integers(0, 16)),
    st.builds(lambda p: {"cmd": 13, "payload": p}, st.sampled_from([b"", b"", b"\0" * 4])),
    st.builds(lambda cmd, p: {"cmd": cmd, "payload": p}, st.integers(0, 0xFFFF), st.binary(max_size=48)),
)
message = st.builds(
    lambda req, flags, fds, mid: {**req, "flags": flags, "fds": req.get("fds") or fds, "id": mid},
    request,
    _flags,
    _with_fds(),
    st.integers(0, 0xFFFF),
)
# What the device does between messages: DMA through the client's maps (reads and writes at mapped and unmapped
# addresses), or the client shrinking the memfd behind a map.
device_step = st.one_of(
    st.tuples(st.just("dma"), st.booleans(), st.integers(0, 70 * 4096), st.integers(0, 9000)),
    st.tuples(st.just("dma-map"), st.booleans(), st.integers(0, 7), st.integers(-16, 8192), st.integers(0, 9000)),
    st.tuples(st.just("shrink"), st.integers(0, 3)),
)
# The last message may lie about its size (stream out of step: the server must drop it, not hang or crash).
tail = st.one_of(st.none(), st.none(), st.none(), st.integers(17, 4096), st.just(P.MAX_DISCARD + 1))


# ----------------------------------------------------------------------------------------------- the oracle
def _fd(kind: str, size: int, memfds: list[tuple[int, int]]) -> int:
    """A new fd of `kind` to send (the caller closes it once sent). A memfd's original stays open in `memfds`,
    as QEMU keeps its RAM's, so a later "shrink" step truncates that very file."""
    if kind in ("memfd", "sealed"):
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if kind == "sealed" else 0))
        os.ftruncate(fd, size)
        os.pwrite(fd, random.Random(size).randbytes(min(size, 4096)), 0)
        if kind == "sealed":  # how QEMU's memory-backend-memfd hands out guest RAM (seal=on)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        memfds.append((fd, size))
        return os.dup(fd)
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    if kind == "pipe":
        fd, other = os.pipe()
        os.close(other)
        return fd
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _legal_region(target: Target, negotiated: bool, msg: dict) -> bool:
    """Whether a REGION_READ/WRITE is one a device must serve (our reading of the spec, not the server's)."""
    payload, write = msg["payload"], msg["cmd"] == 10
    if not negotiated or msg["fds"] or len(payload) < P.REGION_RW.size:
        return False
    offset, region, count = P.REGION_RW.unpack_from(payload)
    if count == 0 or count > P.MAX_DATA_XFER or len(payload) != P.REGION_RW.size + (count if write else 0):
        return False
    size = 256 if region == CONFIG else target.bar_sizes.get(region)
    if size is None or offset + count > size:
        return False
    if region == 0 and not target.split:  # the SVGA's ports take any 1/2/4-byte access, as QEMU hands them on
        return count in (1, 2, 4)
    return True


def _wants_reply(msg: dict) -> bool:
    return msg["flags"] & 0xF != REPLY and not msg["flags"] & NO_REPLY


def _check_pieces(target: Target, offset: int, count: int | None) -> None:
    """Every access the device saw since the last check is a 1/2/4-byte piece inside BAR0 (aligned where the
    BAR splits accesses); with `count`, the last ones cover exactly the access just answered."""
    pieces, target.device.pieces = target.device.pieces, []
    for _, off, size in pieces:
        assert size in (1, 2, 4) and 0 <= off and off + size <= target.bar_sizes[0], pieces
        assert not target.split or off % size == 0, pieces
    if count is None:
        return
    end = offset + count
    for _, off, size in reversed(pieces):  # earlier pieces may come from posted writes before this access
        if end == offset:
            break
        assert off + size == end, (pieces, offset, count)
        end = off
    assert end == offset, (pieces, offset, count)


@fuzz_settings(ci=150, weight=0.5)
@given(
    kind=st.sampled_from(["es1370", "svga"]),
    steps=st.lists(st.one_of(message, message, message, device_step), min_size=1, max_size=14),
    negotiate=st.sampled_from([True, True, True, False]),
    lie=tail,
)
def test_vfio_user_server_under_hostile_messages(kind: str, steps: list, negotiate: bool, lie: int | None) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    target, memory, irq = make_target(kind), DmaMemory(), IrqController()
    server = VfioUserServer(target.function, memory, irq, dma_timeout=0.2)
    ram = GuestRam(RAM_SIZE, RAM_BASE)
    memfds: list[tuple[int, int]] = []
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=server.serve_socket, args=(ours,), daemon=True)
    thread.start()
    client = VfioUserClient(theirs, ram, timeout=5.0)
    negotiated: bool | None = False  # None: a posted VERSION may or may not have been taken
    shadow_known = True
    try:
        if negotiate:
            client.version()
            negotiated = True
        for step in steps:
            if isinstance(step, tuple):
                _device_step(step, memory, memfds)
                continue
            fds = [_fd(k, size, memfds) for k, size in step["fds"]]
            payload = step["payload"]
            client._send_raw(HDR.pack(step["id"], step["cmd"] & 0xFFFF, 16 + len(payload), step["flags"], 0) + payload,
                             fds)  # fmt: skip
            for fd in fds:  # the server has its own copies now; ours go, so a leak shows in the fd count
                os.close(fd)
            if not _wants_reply(step):
                if step["flags"] == NO_REPLY and step["cmd"] == 1 and negotiated is False:
                    negotiated = None
                if step["flags"] == NO_REPLY and step["cmd"] == 10:  # a posted write: applied when legal
                    shadow_known &= negotiated is not None
                    if negotiated and _legal_region(target, True, step):
                        offset, region, count = P.REGION_RW.unpack_from(step["payload"])
                        if region in target.memory_bars:
                            target.memory_bars[region][offset : offset + count] = step["payload"][P.REGION_RW.size :]
                continue
            reply = client.wait_reply(step["id"])
            for fd in reply.fds:
                os.close(fd)
            assert reply.command == step["cmd"] & 0xFFFF
            failed = bool(reply.flags & ERROR)
            assert not failed or reply.error in REFUSALS, (errno.errorcode.get(reply.error), step)
            if step["cmd"] == 1 and not failed and step["flags"] == 0:
                negotiated = True
            if step["cmd"] in (9, 10) and step["flags"] == 0:
                _check_region_reply(target, negotiated, step, reply.payload, failed)
            _check_pieces(target, 0, None)
        if lie is not None:  # a header announcing more than follows: the stream is lost, the connection ends
            client._send_raw(HDR.pack(0xAAAA, 10, 16 + lie, 0, 0) + b"\0" * min(lie // 2, 64))
            client.sock.shutdown(socket.SHUT_WR)
            thread.join(5)
            assert not thread.is_alive(), "server still reading a stream that can no longer be in step"
            client.close()
            ours, theirs = socket.socketpair()  # the next QEMU is served, by the same server and device
            thread = threading.Thread(target=server.serve_socket, args=(ours,), daemon=True)
            thread.start()
            client = VfioUserClient(theirs, ram, timeout=5.0)
            client.version()
            assert client.read32(CONFIG, 0) == target.function.spec.vendor_id | target.function.spec.device_id << 16
        else:
            if not negotiated:
                try:
                    client.version()
                except ClientError as exc:
                    assert negotiated is None and exc.errno == errno.EINVAL  # a posted VERSION was taken
            # Still serving, in step: the IDs are where they were.
            assert client.read32(CONFIG, 0) == target.function.spec.vendor_id | target.function.spec.device_id << 16
            assert thread.is_alive()
        _check_config(target)
        if shadow_known:
            _check_memory_bars(target)
    finally:
        client.close()
        thread.join(5)
        alive = thread.is_alive()
        irq.close()
        memory.remove_all()
        target.close()
        ram.close()
        for fd, _ in memfds:
            os.close(fd)
    assert not alive, "the server thread did not end when the client went away"
    assert len(os.listdir("/proc/self/fd")) == fds_before, "fds leaked"


def _device_step(step: tuple, memory: DmaMemory, memfds: list[tuple[int, int]]) -> None:
    if step[0] == "shrink":  # the client truncates one of its memfds (a sealed one refuses)
        if memfds:
            fd, _ = memfds[step[1] % len(memfds)]
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        return
    if step[0] == "dma-map":  # DMA near the start of one of the maps the server holds
        _, write, which, delta, length = step
        maps = memory.regions()
        if not maps:
            return
        addr = max(0, maps[which % len(maps)][0] + delta)
    else:
        _, write, addr, length = step
    try:
        if write:
            memory.write(addr, b"\x5a" * length)
        else:
            assert len(memory.read(addr, length)) == length
    except GuestMemoryError:
        pass


def _check_region_reply(target: Target, negotiated: bool | None, msg: dict, payload: bytes, failed: bool) -> None:
    if negotiated is not None:
        legal = _legal_region(target, negotiated, msg)
        assert failed != legal, ("refused" if failed else "served", msg["payload"][:16].hex())
    if failed:
        return
    offset, region, count = P.REGION_RW.unpack_from(msg["payload"])
    write = msg["cmd"] == 10
    assert payload[: P.REGION_RW.size] == P.REGION_RW.pack(offset, region, count)
    if write:
        data = msg["payload"][P.REGION_RW.size :]
        if region in target.memory_bars:
            target.memory_bars[region][offset : offset + count] = data
    else:
        data = payload[P.REGION_RW.size :]
        assert len(data) == count
        if region in target.memory_bars:
            assert data == bytes(target.memory_bars[region][offset : offset + count])
    if region == 0:
        _check_pieces(target, offset, count)


def _check_config(target: Target) -> None:
    spec, cfg = target.function.spec, target.function.config
    assert cfg.word(0) == spec.vendor_id and cfg.word(2) == spec.device_id
    assert int.from_bytes(cfg.read(9, 3), "little") == spec.class_code
    for bar in spec.bars:
        value = int.from_bytes(cfg.read(0x10 + 4 * bar.index, 4), "little")
        assert value & (0x3 if bar.kind == "io" else 0xF) == bar.type_bits
        assert value & (bar.size - 1) & ~(0x3 if bar.kind == "io" else 0xF) == 0


def _check_memory_bars(target: Target) -> None:
    """Memory BARs hold exactly what the client wrote through the server (posted writes included: they are
    legal or not by the same rule), and their memfds kept their size."""
    for bar in target.function.spec.bars:
        if bar.backing is None:
            continue
        assert os.fstat(bar.backing.fd).st_size == bar.size
        with mmap.mmap(bar.backing.fd, bar.size) as mm:
            assert mm[:] == bytes(target.memory_bars[bar.index]), f"BAR{bar.index} differs from what was written"


@pytest.mark.parametrize("sealed", [True, False])
def test_only_guest_ram_that_cannot_shrink_is_mapped(sealed: bool) -> None:
    """DMA through an mmap of a memfd the client truncated after DMA_MAP would kill the shim with SIGBUS. The
    shim maps only memory sealed against shrinking (QEMU's memory-backend-memfd is, by default); DMA to any
    other fd-backed map goes through DMA_READ/DMA_WRITE messages, which a client can only refuse."""
    memory = DmaMemory()
    fd = os.memfd_create("ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 65536)
    os.pwrite(fd, b"guest", 0)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    try:
        memory.add(P.DmaMap(3, 0, 0x10000, 65536), os.dup(fd))
        assert memory.regions() == [(0x10000, 65536, sealed)]
        if sealed:
            assert memory.read(0x10000, 5) == b"guest"
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
        else:
            os.ftruncate(fd, 0)  # the client may: nothing of ours maps it
            with pytest.raises(GuestMemoryError, match="no client connected"):
                memory.read(0x10000, 5)
    finally:
        memory.remove_all()
        os.close(fd)
