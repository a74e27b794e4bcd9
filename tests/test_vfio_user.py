"""The vfio-user server, driven by the pure-Python client harness (no QEMU): protocol, config space, BAR0 into
the ES1370, DMA through a memfd and through DMA_READ/DMA_WRITE messages, INTx eventfds, and hostile input."""

from __future__ import annotations

import errno
import mmap
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from frontend_shim.guests.guest import Device, GuestMemoryBusy, GuestMemoryError
from frontend_shim.guests.pcm import melody
from frontend_shim.links.audio import AudioLink
from frontend_shim.vfio_user import protocol as P
from frontend_shim.vfio_user.devices import es1370_function, es1370_over_link, svga_spec
from frontend_shim.vfio_user.irq import IrqController
from frontend_shim.vfio_user.memory import DmaMemory
from frontend_shim.vfio_user.pci import PciFunction, memfd_backing
from frontend_shim.vfio_user.server import VfioUserServer
from frontend_shim.vfio_user.trace import AccessLog, read_access_log
from services.common.clock import Clock
from services.devices import es1370_regs as R
from services.devices.es1370 import Es1370, PcmFormat
from tests.audio_helpers import STEREO16, start_dac2, wait_sessions_closed
from tests.helpers import ServiceProcess, start_service
from tests.test_idle_wakeups import _switches
from tests.test_vfio_user_harness import (
    CONFIG_REGION,
    DMA_MAP,
    DMA_UNMAP,
    ERROR,
    GET_INFO,
    GET_IRQ_INFO,
    GET_REGION_INFO,
    GET_REGION_IO_FDS,
    HDR,
    IRQ_DATA_BOOL,
    IRQ_DATA_EVENTFD,
    IRQ_DATA_NONE,
    IRQ_MASK,
    IRQ_TRIGGER,
    IRQ_UNMASK,
    NO_REPLY,
    REGION_READ,
    REGION_WRITE,
    SET_IRQS,
    VERSION,
    ClientError,
    GuestRam,
    VfioUserClient,
    sealed_memfd,
)

SCALE = 4.0  # the audio service and the link run 4x faster than real time
T = TypeVar("T")


class ModelDevice:
    """The real ES1370 model behind BAR0, with no link: for protocol tests that need no audio service."""

    def __init__(self) -> None:
        self.model = Es1370()
        self.writes: list[tuple[int, int, int]] = []

    def io_read(self, bar: int, offset: int, size: int) -> int:
        return self.model.read(offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))
        self.model.write(offset, size, value)


@dataclass
class Rig:
    client: VfioUserClient
    server: VfioUserServer
    memory: DmaMemory
    irq: IrqController
    thread: threading.Thread
    accesses: list[tuple] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()
        self.thread.join(5)
        self.irq.close()
        self.server.function.close()


def start_rig(
    function: PciFunction,
    memory: DmaMemory | None = None,
    irq: IrqController | None = None,
    ram: GuestRam | None = None,
    negotiate: bool = True,
    dma_timeout: float = 1.0,
    log_accesses: bool = True,
) -> Rig:
    """The server on one end of a socket pair, the test's client on the other; with `log_accesses` every BAR
    access is also listed in `Rig.accesses` (the server's access hook, which keeps reads off their short path)."""
    memory = memory or DmaMemory()
    irq = irq or IrqController()
    accesses: list[tuple] = []
    hook = (lambda *a: accesses.append(a)) if log_accesses else None
    server = VfioUserServer(function, memory, irq, on_access=hook, dma_timeout=dma_timeout)
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=server.serve_socket, args=(ours,), daemon=True)
    thread.start()
    client = VfioUserClient(theirs, ram)
    if negotiate:
        client.version()
    return Rig(client, server, memory, irq, thread, accesses)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = start_rig(es1370_function(ModelDevice()))
    yield r
    r.close()


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Path]]:
    d = tmp_path_factory.mktemp("audio")
    svc = start_service(
        "audio", d, "--alsa-device", f"file:FILE={d}/out-{{session}}.raw,FORMAT=raw", "--clock-scale", str(SCALE)
    )
    yield svc, d
    svc.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def signalled(fd: int, timeout: float = 2.0) -> int:
    """The eventfd's count once it is signalled (or 0 after `timeout`): a busy host delays the re-check timer."""
    select.select([fd], [], [], timeout)
    return eventfd_count(fd)


# ---------------------------------------------------------------------------------------------- handshake
def test_version_negotiation() -> None:
    r = start_rig(es1370_function(ModelDevice()), negotiate=False)
    try:
        c = r.client
        # Nothing but VERSION before VERSION.
        assert c.error_of(REGION_READ, struct.pack("<QII", 0, CONFIG_REGION, 4)) == errno.EINVAL
        caps = c.version()["capabilities"]
        assert caps["max_msg_fds"] >= 1 and caps["max_data_xfer_size"] == P.MAX_DATA_XFER
        assert caps["pgsizes"] == 4096 and 0 < caps["max_dma_maps"] <= 65535
        assert "migration" not in caps and "write_multiple" not in caps  # nothing we do not implement
        with pytest.raises(ClientError) as second:
            c.version()
        assert second.value.errno == errno.EINVAL
    finally:
        r.close()


def test_version_reply_fits_a_short_request() -> None:
    r = start_rig(es1370_function(ModelDevice()), negotiate=False)
    try:
        caps = r.client.version({"capabilities": {"max_msg_fds": 4}})  # the harness asserts the size
        assert set(caps["capabilities"]) < {"max_msg_fds", "max_data_xfer_size", "pgsizes", "max_dma_maps"}
    finally:
        r.close()


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("<HH", 1, 0) + b"{}\0",  # major 1
        struct.pack("<HH", 0, 0) + b"{}",  # not NUL-terminated
        struct.pack("<HH", 0, 0) + b"{nope\0",  # not JSON
        struct.pack("<HH", 0, 0) + b'{"capabilities": 5}\0',
        struct.pack("<HH", 0, 0) + b'{"capabilities": {"max_msg_fds": -1}}\0',
        b"\0",  # too short
    ],
)
def test_bad_version_is_refused_and_a_good_one_still_works(payload: bytes) -> None:
    r = start_rig(es1370_function(ModelDevice()), negotiate=False)
    try:
        assert r.client.error_of(VERSION, payload) in (errno.EINVAL, errno.ENOTSUP)
        assert "capabilities" in r.client.version()
    finally:
        r.close()


def test_device_region_and_irq_info(rig: Rig) -> None:
    c = rig.client
    flags, regions, irqs = c.device_info()
    assert flags == P.DEVICE_FLAGS_PCI | P.DEVICE_FLAGS_RESET and regions == 9 and irqs >= 3
    rw = P.REGION_INFO_FLAG_READ | P.REGION_INFO_FLAG_WRITE
    assert c.region_info(0)[:3] == (rw, 256, 0) and c.region_info(0)[3] == []  # BAR0: trapped, no fd
    assert c.region_info(CONFIG_REGION)[:2] == (rw, 256)
    for index in (1, 2, 3, 4, 5, 6, 8):
        assert c.region_info(index)[:2] == (0, 0)
    assert c.error_of(GET_REGION_INFO, struct.pack("<IIIIQQ", 32, 0, 9, 0, 0, 0)) == errno.EINVAL
    assert c.irq_info(0) == (P.IRQ_INFO_EVENTFD | P.IRQ_INFO_MASKABLE | P.IRQ_INFO_AUTOMASKED, 1)
    assert c.irq_info(1)[1] == 0 and c.irq_info(2)[1] == 0  # the ES1370 has neither MSI nor MSI-X
    assert c.error_of(GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 3, 0)) == errno.EINVAL  # no ERR IRQ


# ---------------------------------------------------------------------------------------------- config space
def test_config_space_ids_and_bar_sizing(rig: Rig) -> None:
    c = rig.client
    cfg = c.read(CONFIG_REGION, 0, 256)
    assert struct.unpack_from("<HH", cfg, 0) == (0x1274, 0x5000)
    assert cfg[0x0B] == 0x04 and cfg[0x0A] == 0x01 and cfg[0x09] == 0x00  # multimedia audio
    assert struct.unpack_from("<HH", cfg, 0x2C) == (0x4942, 0x4C4C)
    assert cfg[0x0E] == 0 and cfg[0x34] == 0  # type-0 header, no capabilities
    assert cfg[0x3D] == 1  # INTA
    assert c.read32(CONFIG_REGION, 0x10) == 0x1  # I/O BAR, not placed yet
    c.write32(CONFIG_REGION, 0x10, 0xFFFFFFFF)
    sized = c.read32(CONFIG_REGION, 0x10)
    assert sized & 1 and (~(sized & ~0x3) & 0xFFFFFFFF) + 1 == 256
    c.write32(CONFIG_REGION, 0x10, 0xC000)
    assert c.read32(CONFIG_REGION, 0x10) == 0xC001
    for bar in range(1, 6):  # unimplemented BARs stay 0 whatever is written
        c.write32(CONFIG_REGION, 0x10 + 4 * bar, 0xFFFFFFFF)
        assert c.read32(CONFIG_REGION, 0x10 + 4 * bar) == 0
    c.write(CONFIG_REGION, 0x00, b"\xff\xff\xff\xff")  # IDs are read-only
    assert c.read32(CONFIG_REGION, 0) == 0x50001274
    c.write(CONFIG_REGION, 0x04, struct.pack("<H", 0xFFFF))
    assert struct.unpack("<H", c.read(CONFIG_REGION, 0x04, 2))[0] == 0x0547  # only the command bits we model
    c.write(CONFIG_REGION, 0x3C, b"\x0b")
    assert c.read(CONFIG_REGION, 0x3C, 2) == b"\x0b\x01"  # line writable, pin not
    assert c.error_of(REGION_READ, struct.pack("<QII", 254, CONFIG_REGION, 4)) == errno.EINVAL


# ---------------------------------------------------------------------------------------------- BAR0
def test_bar0_accesses_reach_the_es1370_with_their_real_widths() -> None:
    device = ModelDevice()
    r = start_rig(es1370_function(device))
    try:
        c = r.client
        assert c.read32(0, R.CONTROL) == R.RESET_CONTROL and c.read32(0, R.STATUS) == R.RESET_STATUS
        c.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)
        c.write32(0, R.DAC2_FRAMEADR & 0xFF, 0x00123400)
        assert device.model.state.channels[R.DAC2].frame_addr == 0x00123400
        c.write(0, R.CODEC, struct.pack("<H", 0x1603))  # the driver's 16-bit CODEC write
        assert device.model.state.codec_regs[0x16] == 0x03
        assert c.read(0, R.UART_STATUS, 1) == b"\xff"  # 8-bit UART access: no UART is modelled
        # An unaligned dword (QEMU sends it whole when its region ops allow unaligned accesses) reaches the chip
        # as the aligned pieces a PCI bus makes of it.
        r.accesses.clear()
        c.write(0, 0x0D, b"\x01\x02\x03\x04")
        assert [(a[0], a[2], a[3]) for a in r.accesses] == [("W", 0x0D, 1), ("W", 0x0E, 2), ("W", 0x10, 1)]
        assert device.model.state.codec & 0xFF == 0x04
        assert c.read(0, 0x0D, 4) == b"\x00\x00\x00\x00"  # MEMPAGE's upper bytes read 0, CODEC is write-only
        assert c.error_of(REGION_READ, struct.pack("<QII", 0xFE, 0, 4)) == errno.EINVAL  # past the BAR
    finally:
        r.close()


def test_device_reset_restores_power_on_registers(rig: Rig) -> None:
    c = rig.client
    c.write32(0, R.CONTROL, R.CTRL_DAC2_EN | R.CTRL_CDC_EN)
    c.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)
    c.write32(0, R.DAC2_FRAMECNT & 0xFF, 0x0000FFFF)
    c.write32(0, R.SERIAL_CONTROL, R.SCTRL_P2INTEN)
    c.reset()
    assert c.read32(0, R.CONTROL) == R.RESET_CONTROL
    assert c.read32(0, R.STATUS) == R.RESET_STATUS
    assert c.read32(0, R.MEMPAGE) == 0 and c.read32(0, R.SERIAL_CONTROL) == 0
    c.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)
    assert c.read32(0, R.DAC2_FRAMECNT & 0xFF) == 0
    assert c.read32(CONFIG_REGION, 0) == 0x50001274


# ---------------------------------------------------------------------------------------------- DMA + INTx + audio
@pytest.mark.parametrize(
    ("mode", "shared"), [("mirrored", True), ("backend", False)], ids=["mirrored-memfd", "backend-dma-messages"]
)
def test_guest_pcm_reaches_the_audio_service_by_dma_with_intx(audio, mode: str, shared: bool) -> None:
    """The guest's buffer (in a memfd the server maps, or reached with DMA_READ messages) is played by the real
    audio service, and every period interrupt arrives on the INTx eventfd: once, acknowledged like QEMU does."""
    svc, outdir = audio
    fmt, period_frames, periods = PcmFormat(44100, 2, 16), 2048, 4
    pcm = melody(fmt, periods * period_frames / fmt.rate)[: periods * period_frames * 4]
    with _AudioRig(svc.address, outdir, mode, shared, pcm, len(pcm), period_frames, fmt.rate) as rig:
        c, intx, memory, irq = rig.client, rig.intx, rig.memory, rig.irq
        handled = spurious = 0
        while handled < periods + 1:  # one loop over the ring and one period more
            assert intx.wait(5.0), f"no interrupt after {handled} periods"
            # snd-ens1370's interrupt handler, each access followed by QEMU's end-of-interrupt logic.
            status = intx.access(lambda: c.read32(0, R.STATUS))
            if not status & R.STAT_INTR:
                spurious += 1
                continue
            assert status & R.STAT_DAC2
            intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16))  # ack: INT_EN off, then on again
            intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16 | R.SCTRL_P2INTEN))
            handled += 1
        intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16))  # the driver's stop: interrupts off ...
        intx.access(lambda: c.write32(0, R.CONTROL, R.CTRL_CDC_EN))  # ... and the DAC off
        time.sleep(0.05)
        assert not intx.wait(0), "the guest saw an interrupt the card did not raise"
        # None in either mode: backend mode learns the line's level a round trip after the ack, but a re-check never
        # signals a level settled while a write was on its way (irq.py).
        assert spurious == 0, f"{spurious} spurious interrupts"
        assert handled <= irq.stats.raised <= handled + 1  # + a period that may end before the stop
        if not shared:
            assert memory.stats.message_reads > 0 and memory.stats.fd_maps == 0
            reads = [(size, count) for cmd, size, count in c.dma_requests if cmd == 11]
            assert reads and all(size == 32 for size, _ in reads)  # QEMU 10.2.2's padded DMA_READ request
    played = rig.played
    assert len(played) >= len(pcm) + period_frames * 4
    # Loop mode: after the ring's end the chip plays it again from the start, until the stop.
    assert played == (pcm * (len(played) // len(pcm) + 1))[: len(played)]


def test_backend_position_never_runs_ahead_of_a_dma_read_that_waits(audio) -> None:  # noqa: ANN001
    """Backend mode over DMA messages: a DMA read the service asked for waits while QEMU waits for our reply to
    the guest's own register read. The position that reply shows must not count the waiting read's bytes, or the
    guest (which refills its ring up to where the card is, as ALSA does) overwrites them before they are read and
    the card plays the next lap (seen with snd-ens1370 on QEMU 10.2). This guest refills at once after each read,
    always faster than the DMA retry, so any run-ahead shows in the output."""
    svc, outdir = audio
    fmt, period_frames, periods, laps = PcmFormat(44100, 2, 16), 1024, 4, 3
    ring = periods * period_frames * 4
    stream = b"".join(struct.pack("<I", i) for i in range(laps * ring // 4))  # no two frames alike
    written = ring  # the guest's application pointer, in stream bytes
    with _AudioRig(svc.address, outdir, "backend", False, stream[:ring], ring, period_frames, fmt.rate) as rig:
        c, intx, link, ram, buf = rig.client, rig.intx, rig.link, rig.ram, rig.buf
        lap_base = 0  # stream bytes the card has wrapped past
        last = 0
        handled = 0
        while written < len(stream):
            assert intx.wait(5.0), f"no interrupt after {handled} periods"
            status = intx.access(lambda: c.read32(0, R.STATUS))
            if not status & R.STAT_INTR:
                continue
            intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16))
            intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16 | R.SCTRL_P2INTEN))
            handled += 1
            # snd-ens1370's pointer callback, then ALSA's refill up to one ring past the position
            pos = (intx.access(lambda: c.read32(0, R.DAC2_FRAMECNT & 0xFF)) >> 16) * 4
            if pos < last:
                lap_base += ring
            last = pos
            upto = min(lap_base + pos + ring, len(stream))
            for at in range(written, upto, 4096):
                n = min(4096, upto - at)
                ram.write(buf + at % ring, stream[at : at + n])
            written = max(written, upto)
        intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, STEREO16))
        intx.access(lambda: c.write32(0, R.CONTROL, R.CTRL_CDC_EN))
        assert link.stats.dma_deferred > 0, "no DMA read ever waited: this run did not test the race"
        assert link.stats.dma_errors == 0
    played = rig.played
    assert len(played) >= 2 * ring
    assert played[: 2 * ring] == stream[: 2 * ring], "the card played bytes the guest had already refilled"


class _AudioRig:
    """A guest ES1370 on the vfio-user server, its AudioLink to the real audio service, guest RAM at 0x100000 with
    `ring` (its first bytes) at `buf`, DAC2 started as snd-ens1370 starts it, INTx on an eventfd. On exit every
    piece is closed and `played` holds what the service's sink wrote."""

    buf = 0x180000

    def __init__(self, address: str, outdir: Path, mode: str, shared: bool, ring: bytes, ring_bytes: int,
                 period_frames: int, rate: int) -> None:  # fmt: skip
        self.address, self.outdir, self.mode, self.shared = address, outdir, mode, shared
        self.ring, self.ring_bytes, self.period_frames, self.rate = ring, ring_bytes, period_frames, rate
        self.played = b""

    def __enter__(self) -> _AudioRig:
        self.ram = GuestRam(1 << 20, 0x100000)
        self.ram.write(self.buf, self.ring)
        self.memory, self.irq = DmaMemory(), IrqController()
        self.link = AudioLink(self.address, self.mode, self.memory, self.irq, vm=f"test-{self.mode}",
                              clock=Clock(SCALE), access_timeout=2.0)  # fmt: skip
        self.link.start()
        self._before = set(self.outdir.glob("out-*.raw"))
        self._rig = start_rig(es1370_over_link(self.link, self.irq), self.memory, self.irq, self.ram)
        self._efd = eventfd()
        self.client = c = self._rig.client
        c.dma_map(0x100000, 1 << 20, self.ram.fd if self.shared else None)
        c.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (self._efd,))
        start_dac2(c.write32, self.buf, self.ring_bytes, self.period_frames, self.rate)
        self.intx = QemuIntx(c, self._efd)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._rig.close()
            self.link.close(drain=True)
            os.close(self._efd)
            if exc[0] is None:
                wait_sessions_closed(self.address)
                (out,) = set(self.outdir.glob("out-*.raw")) - self._before
                self.played = out.read_bytes()
        finally:
            self.ram.close()


class QemuIntx:
    """QEMU's side of INTx over vfio-user (hw/vfio/pci.c): the eventfd asserts the pin ("pending"); after every
    BAR access a pending pin is deasserted and SET_IRQS UNMASK is sent. The guest runs its handler while the
    pin is asserted."""

    def __init__(self, client: VfioUserClient, efd: int) -> None:
        self.client, self.efd, self.pending = client, efd, False

    def _poll(self) -> None:
        if eventfd_count(self.efd):
            self.pending = True

    def wait(self, timeout: float) -> bool:
        self._poll()
        if not self.pending and select.select([self.efd], [], [], timeout)[0]:
            self._poll()
        return self.pending

    def access(self, fn: Callable[[], T]) -> T:
        result = fn()
        self._poll()
        if self.pending:
            self.pending = False
            self.client.set_irqs(IRQ_DATA_NONE | IRQ_UNMASK, 0, 0, 1)
        return result


# ---------------------------------------------------------------------------------------------- DMA messages
def test_dma_read_and_write_messages_use_qemus_layout() -> None:
    ram = GuestRam(64 << 10, 0x200000)
    ram.write(0x200000, bytes(range(256)) * 256)
    r = start_rig(es1370_function(ModelDevice()), ram=ram, negotiate=False)
    try:
        r.client.version({"capabilities": {"max_data_xfer_size": 4096, "max_msg_fds": 16}})
        r.client.dma_map(0x200000, 64 << 10)  # no fd: not shared
        assert r.memory.regions() == [(0x200000, 64 << 10, False)]
        got = r.memory.read(0x200010, 10000)
        assert got == ram.read(0x200010, 10000)
        assert [(cmd, size, n) for cmd, size, n in r.client.dma_requests] == [
            (11, 32, 4096),
            (11, 32, 4096),
            (11, 32, 10000 - 8192),
        ]  # chunked to the client's max_data_xfer_size; each request is the 32-byte padded struct
        r.client.dma_requests.clear()
        r.memory.write(0x20F000, b"hello, guest")
        assert ram.read(0x20F000, 12) == b"hello, guest"
        assert r.client.dma_requests == [(12, 32 + 12, 12)]  # data at +12, 4 bytes of padding after it
        with pytest.raises(GuestMemoryError):
            r.memory.read(0x20FFF0, 32)  # runs off the map
        with pytest.raises(GuestMemoryError):
            r.memory.read(0x300000, 4)  # never mapped
    finally:
        r.close()
        ram.close()


def test_dma_message_is_abandoned_when_the_client_is_blocked_on_us() -> None:
    """QEMU cannot answer a DMA_READ while it waits for our reply to a region access (it holds its big lock):
    the DMA gives up at once instead of deadlocking the two."""
    ram = GuestRam(4096, 0x1000)
    r = start_rig(es1370_function(ModelDevice()), ram=ram, dma_timeout=3.0)
    try:
        r.client.dma_map(0x1000, 4096)
        hold = threading.Event()
        original = r.client._serve_request
        r.client._serve_request = lambda *a: (hold.wait(2.0), original(*a))  # type: ignore[method-assign]
        result: list[object] = []
        t = threading.Thread(target=lambda: result.append(_try_read(r.memory, 0x1000, 16)))
        t.start()
        time.sleep(0.1)
        started = time.monotonic()
        r.client.send(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))  # a request arrives while the DMA waits
        t.join(2.5)
        assert isinstance(result[0], GuestMemoryBusy) and time.monotonic() - started < 1.0
        hold.set()
        assert r.server.stats.dma_aborted >= 1
        assert r.memory.read(0x1000, 16) == bytes(16)  # and DMA works again afterwards
    finally:
        r.close()
        ram.close()


def _try_read(memory: DmaMemory, addr: int, n: int) -> object:
    try:
        return memory.read(addr, n)
    except GuestMemoryError as exc:
        return exc


def test_dma_map_with_memfd_and_unmap(rig: Rig) -> None:
    c = rig.client
    fd = sealed_memfd("ram", 3 * 4096)
    with mmap.mmap(fd, 3 * 4096) as mm:
        mm[4096 : 4096 + 5] = b"abcde"
        c.dma_map(0x10000, 2 * 4096, fd, offset=4096)  # the map starts 4 KiB into the file
        c.dma_map(0x12000, 4096, None)
        assert rig.memory.read(0x10000, 5) == b"abcde"
        rig.memory.write(0x10001, b"XY")
        assert mm[4096 : 4096 + 5] == b"aXYde"
    fd2 = sealed_memfd("ram2", 4096)
    dup = os.dup(fd2)
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x11000, 4096), (dup,)) == errno.EEXIST
    dup = os.dup(fd2)
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 4096, 0x40000, 4096), (dup,)) == errno.EINVAL  # past EOF
    r, w = os.pipe()
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x40000, 4096), (r,)) == errno.EINVAL  # not memory
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x40000, 4096), (fd2, w)) == errno.EINVAL  # 2 fds
    assert c.error_of(DMA_UNMAP, struct.pack("<IIQQ", 24, 0, 0x10000, 4096)) == errno.EINVAL  # would split a map
    c.dma_unmap(0x10000, 2 * 4096)
    with pytest.raises(GuestMemoryError):
        rig.memory.read(0x10000, 1)
    c.dma_unmap(0, 0, flags=P.DMA_UNMAP_FLAG_ALL)
    assert rig.memory.regions() == []
    for f in (fd, fd2, r, w):
        os.close(f)


# ---------------------------------------------------------------------------------------------- interrupts
def test_intx_unmask_only_clears_the_mask_then_rechecks() -> None:
    irq = IrqController(recheck_delay=0.02, lost_delay=0.02)
    efd = eventfd()
    try:
        irq.set_intx_fd(os.dup(efd))
        irq.set_level(True)
        assert eventfd_count(efd) == 1 and irq.masked
        irq.unmask()  # the line is still high (the driver has not acked yet) but UNMASK does not signal ...
        assert eventfd_count(efd) == 0
        assert signalled(efd) == 1 and irq.stats.lost == 1  # ... unless the guest idles without taking it: lost
        irq.unmask()
        irq.set_level(False)  # the ack comes before the timer
        time.sleep(0.05)
        assert eventfd_count(efd) == 0 and not irq.masked
        irq.set_level(True)  # next period: unmasked, so at once
        assert eventfd_count(efd) == 1
        irq.lost_delay = 0.1  # longer than a busy host stretches the 10 ms sleeps, shorter than the whole loop
        irq.unmask()  # an unrelated access made with interrupts off: the guest may hold the interrupt ...
        for _ in range(15):  # ... and be on its way to its handler while it keeps making accesses
            time.sleep(0.01)
            irq.after_access(write=False)
            irq.after_access(write=True)
        irq.note_seen()
        irq.set_level(False)
        time.sleep(0.05)
        assert eventfd_count(efd) == 0 and irq.stats.lost == 1  # no second signal for the interrupt it held
        irq.lost_delay = 0.02
        irq.set_level(True)
        assert eventfd_count(efd) == 1
        irq.set_level(False)  # acked and raised again while QEMU still masks the line: a new edge, owed ...
        irq.set_level(True)
        irq.unmask()
        irq.after_access(write=False)  # ... and a read proves the level: signalled at once
        assert eventfd_count(efd) == 1
        irq.set_level(False)
        irq.set_level(True)
        irq.unmask()
        irq.after_access(write=True)  # a local device's level is current after a write too
        assert eventfd_count(efd) == 1
        settled: list[bool] = []
        irq.settle = lambda: settled.append(True)  # a remote device: its level may lag behind the write
        irq.set_level(False)
        irq.set_level(True)
        irq.unmask()
        irq.after_access(write=True)
        assert eventfd_count(efd) == 0
        assert signalled(efd) == 1 and settled == [True]  # settled first, then still high: signal
        irq.settle = lambda: irq.set_level(False)  # the remote ack arrives while we settle
        irq.set_level(False)
        irq.set_level(True)
        irq.unmask()
        irq.after_access(write=True)
        time.sleep(0.05)
        assert eventfd_count(efd) == 0  # no spurious interrupt from a stale level
        irq.settle = None
        irq.set_level(True)
        assert eventfd_count(efd) == 1
        irq.note_seen()  # the handler read STATUS with INTR set: no short fallback while it works towards the ack
        irq.unmask()
        time.sleep(0.05)
        assert eventfd_count(efd) == 0
        irq.seen_delay = 0.0  # (the long fallback still fires if the handler never acks)
        irq.unmask()
        assert signalled(efd) == 1
        new = eventfd()
        irq.set_intx_fd(os.dup(new))  # system reset: QEMU hands over a new eventfd
        assert signalled(new) == 1 and eventfd_count(efd) == 0
        os.close(new)
    finally:
        irq.close()
        os.close(efd)


def test_intx_recheck_does_not_settle_while_a_write_is_under_way() -> None:
    irq = IrqController(recheck_delay=0.01, lost_delay=0.01)
    efd = eventfd()
    settled: list[bool] = []
    irq.settle = lambda: settled.append(True)
    try:
        irq.set_intx_fd(os.dup(efd))
        irq.set_level(True)
        assert eventfd_count(efd) == 1
        with irq.write_access():  # a write on its way to the device: a barrier sent now might overtake it
            irq.unmask()
            time.sleep(0.05)
            assert settled == [] and eventfd_count(efd) == 0
        assert signalled(efd) == 1 and settled  # once it is in the stream, a barrier behind it tells
    finally:
        irq.close()
        os.close(efd)


class Card:
    """An ES1370 model driving the line, like the shim's link does. Remote (backend mode): writes are posted, and
    the card (the audio service's copy) applies them only when a later read or barrier flushes the stream. Local
    (mirrored mode): at once. Like the service, it reports its level when it changes."""

    def __init__(self, irq: IrqController, remote: bool) -> None:
        self.model, self.irq, self.remote, self.level = Es1370(), irq, remote, False
        self.posted: list[tuple[int, int, int]] = []

    def io_read(self, bar: int, offset: int, size: int) -> int:
        self.apply(len(self.posted))
        return self.model.read(offset, size)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.posted.append((offset, size, value))
        if not self.remote:
            self.apply(len(self.posted))

    def apply(self, n: int) -> None:
        """The first `n` posted writes reach the card."""
        for access in self.posted[:n]:
            self.model.write(*access)
        del self.posted[:n]
        if self.model.irq != self.level:
            self.level = self.model.irq
            self.irq.set_level(self.level)


def _card_rig(irq: IrqController, remote: bool) -> tuple[Rig, Card, int]:
    """A rig whose card has ended a DAC2 period with its interrupt enabled (signalled: the eventfd is returned)."""
    card = Card(irq, remote)
    r = start_rig(es1370_function(card), irq=irq)
    efd = eventfd()
    c = r.client
    c.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (efd,))
    for offset, value in (  # DAC2 on a one-period ring of 16 bytes, its interrupt enabled
        (R.MEMPAGE, R.FRAME_PAGE_DAC),
        (R.DAC2_FRAMECNT & 0xFF, 3),
        (R.SERIAL_CONTROL, R.SCTRL_P2INTEN),
        (R.DAC2_SCOUNT, 15),
        (R.CONTROL, R.CTRL_DAC2_EN),
    ):
        c.write32(0, offset, value)
    assert c.read32(0, R.STATUS) & R.STAT_INTR == 0  # (the read flushes the writes to the card)
    card.model.dma_commit(R.DAC2, card.model.dma_window(R.DAC2, 64)[1])  # the period ends
    card.apply(0)
    return r, card, efd


def test_intx_an_interrupt_the_guest_holds_is_not_signalled_again() -> None:
    """A real guest's spurious interrupt, step by step (mirrored mode, seen at stream start): the period ends while
    the driver still makes accesses with interrupts off. QEMU deasserts the pin at the next one and unmasks, but
    the guest's interrupt controller holds the interrupt, and the handler runs once the accesses are done. A second
    signal sent meanwhile is read by QEMU only after the vCPU's accesses (it holds QEMU's big lock through each),
    so after the handler: a spurious interrupt."""
    irq = IrqController(lost_delay=5.0)  # (the guest never idles here: it cannot look lost)
    r, card, efd = _card_rig(irq, remote=False)
    try:
        c = r.client
        intx = QemuIntx(c, efd)
        assert intx.wait(5.0)
        intx.access(lambda: c.read32(0, R.CONTROL))  # the trigger's next access: QEMU deasserts and unmasks
        c.write32(0, R.MEMPAGE, R.FRAME_PAGE_DAC)  # its last ones, then the held interrupt's handler
        c.read32(0, R.DAC2_FRAMECNT & 0xFF)
        assert c.read32(0, R.STATUS) & R.STAT_INTR
        c.write32(0, R.SERIAL_CONTROL, 0)
        c.write32(0, R.SERIAL_CONTROL, R.SCTRL_P2INTEN)
        assert eventfd_count(efd) == 0, "a second signal for the interrupt the guest held: spurious after its handler"
        assert irq.stats.signals == 1 and not irq.level
    finally:
        r.close()
        os.close(efd)


def test_intx_recheck_never_signals_a_level_the_handlers_ack_already_cleared() -> None:
    """Backend mode's race, step by step: a re-check's barrier goes out, the handler's ack is posted behind it, and
    the barrier's answer still shows the line high. That level predates the ack: signalled, it would reach the
    guest after its handler returned, a spurious interrupt. The re-check must settle again instead."""
    irq = IrqController(recheck_delay=0.005, seen_delay=0.005)  # the handler looks slow: the fallback settles
    barrier_out, answer = threading.Event(), threading.Event()
    barriers: list[int] = []  # the posted writes each barrier found ahead of it in the stream

    def barrier() -> None:
        n = len(card.posted)
        if not barriers:  # the first answer is held back until the handler has acked
            barrier_out.set()
            answer.wait(5.0)
        card.apply(n)
        barriers.append(n)

    irq.settle = barrier
    r, card, efd = _card_rig(irq, remote=True)
    try:
        c = r.client
        intx = QemuIntx(c, efd)
        assert intx.wait(5.0)
        assert intx.access(lambda: c.read32(0, R.STATUS)) & R.STAT_INTR  # the handler; QEMU unmasks after it
        assert barrier_out.wait(5.0)  # the fallback re-check settles the level, while the handler acks
        intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, 0))
        intx.access(lambda: c.write32(0, R.SERIAL_CONTROL, R.SCTRL_P2INTEN))
        answer.set()
        deadline = time.monotonic() + 5.0
        while len(barriers) < 2 and not intx.wait(0) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert not intx.wait(0), "a level from before the handler's ack was signalled: a spurious interrupt"
        assert barriers == [0, 2] and not irq.level  # settled again, behind the ack
        assert irq.stats.signals == 1
    finally:
        r.close()
        os.close(efd)


def test_es1370_status_reads_that_show_the_interrupt() -> None:
    f = es1370_function(ModelDevice())
    assert f.shows_interrupt(0, [(R.STATUS, 4, R.STAT_INTR | R.STAT_DAC2)])
    assert f.shows_interrupt(0, [(R.STATUS + 3, 1, 0x80)])  # a byte read of STATUS's top byte
    assert not f.shows_interrupt(0, [(R.STATUS, 4, R.RESET_STATUS)])
    assert not f.shows_interrupt(0, [(R.CONTROL, 4, 0xFFFFFFFF)])
    assert not f.shows_interrupt(CONFIG_REGION, [(R.STATUS, 4, R.STAT_INTR)])


def test_set_irqs_over_the_socket(rig: Rig) -> None:
    c, efd = rig.client, eventfd()
    try:
        c.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (efd,))
        c.set_irqs(IRQ_DATA_NONE | IRQ_TRIGGER, 0, 0, 1)  # client-requested trigger
        assert eventfd_count(efd) == 1
        c.set_irqs(IRQ_DATA_BOOL | IRQ_TRIGGER, 0, 0, 1, data=b"\0")  # not selected
        assert eventfd_count(efd) == 0
        c.set_irqs(IRQ_DATA_NONE | IRQ_MASK, 0, 0, 1)
        assert rig.irq.masked
        c.set_irqs(IRQ_DATA_NONE | IRQ_UNMASK, 0, 0, 1)
        assert not rig.irq.masked
        c.set_irqs(IRQ_DATA_NONE | IRQ_TRIGGER, 0, 0, 0)  # disable INTx
        assert not rig.irq.has_intx_fd
        for flags, index, count in [
            (IRQ_DATA_EVENTFD | IRQ_TRIGGER, 1, 1),  # no MSI vectors on this device
            (IRQ_DATA_NONE | IRQ_MASK, 1, 1),
            (IRQ_DATA_NONE | IRQ_TRIGGER, 7, 1),
            (IRQ_DATA_NONE | IRQ_DATA_BOOL | IRQ_TRIGGER, 0, 1),
            (IRQ_DATA_NONE | IRQ_MASK | IRQ_UNMASK, 0, 1),
            (IRQ_DATA_NONE | IRQ_TRIGGER, 0, 2),
        ]:
            assert c.error_of(SET_IRQS, struct.pack("<IIIII", 20, flags, index, 0, count)) == errno.EINVAL
        r, w = os.pipe()
        payload = struct.pack("<IIIII", 20, IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1)
        assert c.error_of(SET_IRQS, payload, (r,)) == errno.EINVAL  # a pipe is not an eventfd
        assert c.error_of(SET_IRQS, payload, (efd, efd)) == errno.EINVAL  # two fds for one vector
        os.close(r)
        os.close(w)
    finally:
        os.close(efd)


def test_msi_vectors_when_the_device_has_them() -> None:
    device = ModelDevice()
    spec = es1370_function(device).spec.__class__(**{**vars(es1370_function(device).spec), "msi_vectors": 1})
    r = start_rig(PciFunction(spec, device))
    intx, msi = eventfd(), eventfd()
    try:
        r.client.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (intx,))
        assert r.client.irq_info(1)[1] == 1
        r.client.set_irqs(IRQ_DATA_NONE | IRQ_TRIGGER, 0, 0, 0)  # QEMU turns INTx off, then gives the MSI fd
        r.client.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 1, 0, 1, (msi,))
        r.irq.set_level(True)
        assert eventfd_count(msi) == 1 and eventfd_count(intx) == 0
        r.irq.set_level(False)
        r.irq.set_level(True)
        assert eventfd_count(msi) == 1  # every rising edge, no mask
    finally:
        r.close()
        os.close(intx)
        os.close(msi)


# ---------------------------------------------------------------------------------------------- hostile input
def test_malformed_and_hostile_messages_get_errors_and_the_server_keeps_serving(rig: Rig) -> None:
    c = rig.client
    fds_before = open_fds()

    def raw(mid: int, cmd: int, size: int, flags: int, payload: bytes = b"", fds: tuple = ()) -> int:
        c._send_raw(HDR.pack(mid, cmd, size, flags, 0) + payload, fds)
        reply = c.wait_reply(mid)
        assert reply.flags & ERROR and reply.size == 16
        return reply.error

    assert raw(1, GET_INFO, 8, 0) == errno.EINVAL  # size smaller than the header
    assert raw(2, GET_INFO, 16, 0x2) == errno.EINVAL  # unknown message type
    assert raw(3, GET_INFO, 16, 0x100) == errno.EINVAL  # unknown flag bits
    assert raw(4, 99, 16, 0) == errno.ENOSYS  # unknown command
    assert raw(5, GET_INFO, 16, ERROR) == errno.EINVAL  # a request flagged as an error
    assert c.error_of(GET_REGION_IO_FDS, struct.pack("<IIII", 16, 0, 0, 0)) == errno.ENOTSUP
    assert c.error_of(GET_INFO, b"\x01\x00") == errno.EINVAL  # argsz truncated
    assert c.error_of(GET_REGION_INFO, struct.pack("<IIIIQQ", 8, 0, 0, 0, 0, 0)) == errno.EINVAL  # argsz too small
    assert c.error_of(REGION_READ, b"\0" * 8) == errno.EINVAL  # short
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 0, 0)) == errno.EINVAL  # count 0
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 9, 4)) == errno.EINVAL  # no region 9
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 1, 4)) == errno.EINVAL  # BAR1 not implemented
    assert c.error_of(REGION_READ, struct.pack("<QII", 1 << 63, 0, 4)) == errno.EINVAL  # offset far out
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 0, 2 << 20)) == errno.EINVAL  # count over the max
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 0, 4) + b"xx") == errno.EINVAL  # trailing bytes
    assert c.error_of(REGION_WRITE, struct.pack("<QII", 0, 0, 4) + b"\0\0") == errno.EINVAL  # data short
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 0x80, 0, 0, 4096)) == errno.EINVAL  # unknown flags
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0, 0)) == errno.EINVAL  # size 0
    assert c.error_of(DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, (1 << 64) - 4096, 8192)) == errno.EINVAL  # wraps
    assert c.error_of(DMA_UNMAP, struct.pack("<IIQQ", 24, P.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0, 4096)) == errno.ENOTSUP
    efds = [eventfd() for _ in range(20)]
    assert c.error_of(GET_INFO, struct.pack("<IIII", 16, 0, 0, 0), tuple(efds)) == errno.EINVAL  # too many fds
    assert c.error_of(REGION_READ, struct.pack("<QII", 0, 0, 4), (efds[0],)) == errno.EINVAL  # fd where none goes
    for fd in efds:
        os.close(fd)
    # Oversize: refused with E2BIG, its bytes skipped, and the stream is still in step afterwards.
    big = P.MAX_MESSAGE + 100
    assert raw(6, REGION_WRITE, big, 0, bytes(big - 16)) == errno.E2BIG
    # A bad posted write gets no reply (QEMU would treat one as a protocol error) and changes nothing.
    mid = c.send(REGION_WRITE, struct.pack("<QII", 0x200, 0, 4) + b"\0" * 4, flags=NO_REPLY)
    assert c.no_reply_within(mid, 0.1)
    # A reply to nothing we asked is dropped.
    c._send_raw(HDR.pack(77, 11, 16, 1, 0))
    # Still serving, and every fd we sent was closed by the server.
    assert c.read32(CONFIG_REGION, 0) == 0x50001274
    assert open_fds() == fds_before
    assert rig.thread.is_alive()


class BrokenDevice:
    def io_read(self, bar: int, offset: int, size: int) -> int:
        raise RuntimeError("the device model fell over")

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        raise ValueError("refused")


@pytest.mark.parametrize("logged", [False, True], ids=["short read path", "access log"])
def test_a_failing_device_answers_eio_and_the_server_keeps_serving(logged: bool) -> None:
    r = start_rig(es1370_function(BrokenDevice()), log_accesses=logged)
    try:
        assert r.client.error_of(REGION_READ, struct.pack("<QII", 0, 0, 4)) == errno.EIO
        assert r.client.error_of(REGION_READ, struct.pack("<QII", 4, 0, 1)) == errno.EIO
        assert r.server.stats.errors["EIO"] == 2
        assert r.client.error_of(REGION_WRITE, struct.pack("<QII", 0, 0, 4) + bytes(4)) == errno.EIO
        assert r.client.read32(CONFIG_REGION, 0) == 0x50001274
    finally:
        r.close()


class FixedRegisters:
    """A device of fixed 32-bit registers (reads of any width and lane), for comparing the server's paths."""

    def __init__(self, values: dict[int, int]) -> None:
        self.values = values

    def io_read(self, bar: int, offset: int, size: int) -> int:
        word = self.values.get(offset & ~3, 0)
        return (word >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        pass


class RecordingIrq(IrqController):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[object] = []

    def note_seen(self) -> None:
        self.calls.append("seen")
        super().note_seen()

    def after_access(self, write: bool) -> None:
        self.calls.append(("after", write))
        super().after_access(write)


def test_register_reads_answer_alike_on_the_short_path_and_with_an_access_log() -> None:
    """Without an access log a register read takes the server's short path (`_read`): the same answers, the same
    interrupt bookkeeping (a read showing STATUS's INTR bit tells the IrqController the handler runs) and the
    same counts as the general path, for every width, lane, unaligned and non-register read."""
    reads = [(0, R.STATUS, 4), (0, R.STATUS + 3, 1), (0, R.STATUS + 2, 2), (0, R.STATUS, 2), (0, R.CONTROL, 4),
             (0, R.SERIAL_CONTROL + 1, 1), (0, 1, 4), (0, 2, 4), (0, 0, 8), (CONFIG_REGION, 0, 4),
             (CONFIG_REGION, 2, 2), (0, R.STATUS, 4)]  # fmt: skip
    seen = {}
    for logged in (True, False):
        irq = RecordingIrq()
        values = {R.STATUS: R.STAT_INTR | R.STAT_DAC2, R.CONTROL: 0x12345678, R.SERIAL_CONTROL: 0xA5C3}
        r = start_rig(es1370_function(FixedRegisters(values)), irq=irq, log_accesses=logged)
        try:
            answers = [r.client.read(region, offset, count) for region, offset, count in reads]
            stats = r.server.stats
            seen[logged] = (answers, irq.calls, stats.bar_reads, stats.requests[REGION_READ], dict(stats.errors))
        finally:
            r.close()
    assert seen[False] == seen[True]
    answers, calls, bar_reads, requests, errors = seen[False]
    assert int.from_bytes(answers[0], "little") == R.STAT_INTR | R.STAT_DAC2 and answers[-1] == answers[0]
    assert answers[3] == (R.STAT_DAC2 & 0xFFFF).to_bytes(2, "little") and answers[4] == b"\x78\x56\x34\x12"
    assert calls.count("seen") == 5  # the reads that showed byte 3 of STATUS (INTR): 4, 1, 2, 8 bytes, and again
    assert calls.count(("after", False)) == len(reads)
    assert (requests, errors) == (len(reads), {})
    assert bar_reads == 14  # the unaligned ones in pieces (1+2+1, 2+2), the 8-byte one as two words, no config


def test_random_messages_never_break_the_server() -> None:
    """Well-framed messages with random commands, flags and payloads: each gets a reply or is ignored."""
    rng = random.Random(1370)
    device = ModelDevice()
    r = start_rig(es1370_function(device))
    try:
        c = r.client
        for i in range(400):
            cmd = rng.choice([*range(0, 20), 255, 0xFFFF])
            payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 4, 12, 16, 20, 24, 32, 40, 64])))
            if rng.random() < 0.5 and len(payload) >= 16:  # make REGION_* and friends plausible half the time
                payload = struct.pack("<QII", rng.randrange(0, 300), rng.randrange(0, 10), rng.choice([1, 2, 4, 8]))
                payload += bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 2, 4, 8])))
            flags = rng.choice([0, 0, 0, NO_REPLY, 1, 0x20, 0x40])
            mid = 0x4000 + i
            c._send_raw(HDR.pack(mid, cmd, 16 + len(payload), flags, 0) + payload)
            if flags == 0 or flags & 0xF not in (0, 1) or flags & 0x20:
                c.wait_reply(mid, timeout=2.0)
            elif flags == 1:
                pass  # a stray "reply": dropped
        assert c.read32(CONFIG_REGION, 0) == 0x50001274
        assert r.thread.is_alive()
    finally:
        r.close()


# ---------------------------------------------------------------------------------------------- reconnects
def test_reconnect_keeps_device_state_and_drops_maps_and_fds(tmp_path: Path) -> None:
    device, memory, irq = ModelDevice(), DmaMemory(), IrqController()
    server = VfioUserServer(es1370_function(device), memory, irq)
    path = str(tmp_path / "es1370.sock")
    server.listen(path)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    efd = eventfd()
    ram = GuestRam(8192, 0x1000)
    try:
        first = VfioUserClient(_connect(path), ram)
        first.version()
        first.dma_map(0x1000, 8192, ram.fd)
        first.set_irqs(IRQ_DATA_EVENTFD | IRQ_TRIGGER, 0, 0, 1, (efd,))
        first.write32(0, R.MEMPAGE, R.FRAME_PAGE_ADC)
        assert memory.regions() and irq.has_intx_fd
        intruder = _connect(path)  # a second client while one is connected is turned away
        assert intruder.recv(16) == b""
        intruder.close()
        first.close()
        assert server.wait_idle(5.0)
        assert memory.regions() == [] and not irq.has_intx_fd
        with pytest.raises(GuestMemoryError):
            memory.read(0x1000, 4)
        second = VfioUserClient(_connect(path))
        second.version()
        assert second.read32(0, R.MEMPAGE) == R.FRAME_PAGE_ADC  # the card kept its state
        second.close()
        assert server.stats.connections == 2 and server.stats.rejected_connections == 1
    finally:
        server.stop()
        t.join(5)
        irq.close()
        os.close(efd)
        ram.close()
    assert not os.path.exists(path)


def test_an_idle_listener_sleeps_until_a_client_or_stop(tmp_path: Path) -> None:
    """The accept thread wakes for nothing while no client comes (it polled every 0.2 s), and stop() still ends
    it at once."""
    irq = IrqController()
    server = VfioUserServer(es1370_function(ModelDevice()), DmaMemory(), irq)
    server.listen(str(tmp_path / "idle.sock"))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        time.sleep(0.1)
        assert t.native_id is not None
        before = _switches(os.getpid(), t.native_id)
        time.sleep(1.0)
        assert _switches(os.getpid(), t.native_id) - before == 0
        started = time.monotonic()
        server.stop()
        t.join(2.0)
        assert not t.is_alive() and time.monotonic() - started < 1.0
    finally:
        server.stop()
        irq.close()


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_listen_refuses_a_live_socket_and_replaces_a_stale_one(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    a = VfioUserServer(es1370_function(ModelDevice()), DmaMemory(), irq_a := IrqController())
    a.listen(path)
    b = VfioUserServer(es1370_function(ModelDevice()), DmaMemory(), irq_b := IrqController())
    with pytest.raises(FileExistsError):
        b.listen(path)
    a.stop()
    irq_a.close()
    irq_b.close()


# ---------------------------------------------------------------------------------------------- other devices
class RegisterFile:
    """A 16-byte I/O BAR of plain registers, standing in for a device with unaligned port accesses."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int | None]] = []

    def io_read(self, bar: int, offset: int, size: int) -> int:
        self.seen.append((offset, size, None))
        return 0x90000002 if offset == 1 else 0

    def io_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.seen.append((offset, size, value))


def test_an_svga_like_function_needs_only_a_description() -> None:
    """I/O BAR0 + memfd-backed VRAM and FIFO BARs: the same server serves it; the client gets mmap fds."""
    vram, fifo = memfd_backing("vram", 16 << 20), memfd_backing("fifo", 256 << 10)
    device: Device = RegisterFile()
    r = start_rig(PciFunction(svga_spec(vram, fifo), device))
    try:
        c = r.client
        assert struct.unpack_from("<HH", c.read(CONFIG_REGION, 0, 4)) == (0x15AD, 0x0405)
        flags, size, offset, fds = c.region_info(1)
        assert flags & P.REGION_INFO_FLAG_MMAP and size == 16 << 20 and len(fds) == 1
        with mmap.mmap(fds[0], size, offset=offset) as vram_map:
            c.write(1, 0x100, b"pixel")
            assert vram_map[0x100:0x105] == b"pixel"  # the client's mapping and the server's are one memory
            vram_map[0x200:0x203] = b"abc"
            assert c.read(1, 0x200, 3) == b"abc"
        os.close(fds[0])
        c.write32(CONFIG_REGION, 0x14, 0xFFFFFFFF)
        assert c.read32(CONFIG_REGION, 0x14) == 0xFF000008  # 16 MiB, 32-bit, prefetchable
        assert c.read32(CONFIG_REGION, 0x18) & 0xF == 0 and c.region_info(2)[1] == 256 << 10
        assert c.read32(0, 1) == 0x90000002  # the VALUE port: one unaligned dword, not split
        assert device.seen[-1] == (1, 4, None)  # type: ignore[attr-defined]
    finally:
        r.close()
        os.close(vram.fd)
        os.close(fifo.fd)


# ---------------------------------------------------------------------------------------------- access log
def test_access_log_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "log.tsv.gz")
    log = AccessLog(path, "unit test")
    log.access("W", 0, 0x20, 4, 0x20C)
    log.event("signal")
    log.access("R", 0, 0x04, 4, 0x80000062)
    log.event("unmask")
    log.close()
    events = read_access_log(path)
    assert [(e.kind, e.offset, e.size, e.value) for e in events] == [
        ("W", 0x20, 4, 0x20C),
        ("I", None, None, None),
        ("R", 0x04, 4, 0x80000062),
        ("U", None, None, None),
    ]
    assert all(b.t_us >= a.t_us for a, b in zip(events, events[1:], strict=False))


@pytest.mark.parametrize("mode", ["mirrored", "backend"])
def test_recorded_guest_traces_are_well_formed(mode: str) -> None:
    """The traces the live test recorded (tests/data) parse, and show the driver's probe, its DAC2 set-up, and an
    eventfd signal before every interrupt the handler found (STATUS with INTR), each acknowledged."""
    path = Path(__file__).parent / "data" / f"es1370_vfio_user_{mode}.tsv.gz"
    if not path.exists():
        pytest.skip(f"{path.name} not recorded (RDV_RECORD_TRACES=1 make test-live)")
    events = read_access_log(str(path))
    assert events[0].kind == "X"  # QEMU resets the device before the guest runs
    assert sum(1 for e in events if e.kind == "W" and e.offset == R.CODEC and e.size == 2) > 20  # mixer set-up
    assert any(e.kind == "W" and e.offset == R.DAC2_SCOUNT for e in events)
    # A signal can be "used up" by an unrelated access while the guest has interrupts disabled (QEMU deasserts
    # INTx on any BAR access); the server's re-check after accesses then signals again. So: at least one signal
    # before each interrupt the handler sees, and one acknowledgement (P2 INT_EN cleared) per interrupt.
    signalled, handled, acks = False, 0, 0
    for e in events:
        if e.kind == "I":
            signalled = True
        elif e.kind == "R" and e.offset == R.STATUS and (e.value or 0) & R.STAT_INTR:
            assert signalled, f"interrupt seen at {e.t_us} us without a signal"
            signalled, handled = False, handled + 1
        elif e.kind == "W" and e.offset == R.SERIAL_CONTROL and e.value is not None and e.value & R.SCTRL_P2INTEN == 0:
            acks += 1
    assert handled >= 1 and acks >= handled


def test_dma_layouts() -> None:
    q, s = P.QEMU_DMA_LAYOUT, P.SPEC_DMA_LAYOUT
    assert q.read_request(0x1234, 16) == struct.pack("<QI", 0x1234, 16) + bytes(4)
    assert q.write_request(0x10, b"ab") == struct.pack("<QI", 0x10, 2) + b"ab" + bytes(4)
    assert q.read_reply_data(struct.pack("<QI", 0x10, 2) + b"ab" + bytes(4), 0x10, 2) == b"ab"
    assert s.read_request(0x1234, 16) == struct.pack("<QQ", 0x1234, 16)
    assert s.read_reply_data(struct.pack("<QQ", 0x10, 2) + b"ab", 0x10, 2) == b"ab"
    with pytest.raises(P.ProtocolError):
        q.read_reply_data(struct.pack("<QI", 0x10, 2) + b"a", 0x10, 2)


def _msg(mid: int, command: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return P.HEADER.pack(mid, command, P.HEADER_SIZE + len(payload), flags, 0) + payload


def test_framer_cuts_messages_out_of_reads_and_gives_fds_to_the_message_they_came_with() -> None:
    """P.Framer: several messages in one read, a message in pieces, fds sent with the second of two messages,
    a message longer than the buffer, an oversize one skipped in step, and the end mid-message."""
    ours, theirs = socket.socketpair()
    framer = P.Framer(ours, capacity=64, max_size=200)
    try:
        theirs.sendall(_msg(1, REGION_READ, bytes(16)) + _msg(2, REGION_WRITE, bytes(20), P.FLAG_NO_REPLY))
        r, w = os.pipe()
        theirs.sendall(_msg(3, REGION_READ, b"\1" * 16))
        theirs.sendmsg([_msg(4, SET_IRQS, b"\2" * 20)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
        os.close(r)
        got = [framer.next() for _ in range(4)]
        assert [(m[0], m[1], m[2], m[3], len(m[5]), len(m[6])) for m in got] == [
            (1, REGION_READ, 32, 0, 16, 0),
            (2, REGION_WRITE, 36, P.FLAG_NO_REPLY, 20, 0),
            (3, REGION_READ, 32, 0, 16, 0),
            (4, SET_IRQS, 36, 0, 20, 1),
        ]
        assert bytes(got[3][5]) == b"\2" * 20 and not got[3][7]
        os.write(w, b"x")
        assert os.read(got[3][6][0], 1) == b"x"  # the pipe's read end, passed along with message 4
        os.close(got[3][6][0])
        os.close(w)

        piece = _msg(5, REGION_WRITE, b"\3" * 20)
        theirs.sendall(piece[:10])
        threading.Timer(0.05, theirs.sendall, (piece[10:],)).start()
        mid, _, _, _, _, payload, fds, _ = framer.next()
        assert (mid, bytes(payload), fds) == (5, b"\3" * 20, [])

        long_payload = bytes(range(150))  # longer than the 64-byte buffer, within max_size
        theirs.sendall(_msg(6, DMA_MAP, long_payload) + _msg(7, VERSION, b"\4" * 4))
        assert framer.next()[5] == long_payload
        after = framer.next()
        assert (after[0], bytes(after[5])) == (7, b"\4" * 4)

        theirs.sendall(_msg(8, DMA_MAP, bytes(300)) + _msg(9, REGION_READ, bytes(16)))  # over max_size
        mid, _, size, _, _, payload, _, _ = framer.next()
        assert (mid, size, payload) == (8, 316, b"")
        assert framer.next()[0] == 9  # still in step

        r, w = os.pipe()  # a message alone in its read, with an fd: not the fast path's, still its own fds
        theirs.sendmsg([_msg(10, SET_IRQS, bytes(20))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
        os.close(r)
        mid, _, _, _, _, _, fds, truncated = framer.next()
        assert (mid, len(fds), truncated) == (10, 1, False)
        os.close(fds[0])
        os.close(w)

        theirs.sendall(_msg(11, REGION_READ, bytes(16))[:20])
        theirs.close()
        with pytest.raises(P.ConnectionDropped, match="mid-message"):
            framer.next()
    finally:
        ours.close()
        theirs.close()
    ours, theirs = socket.socketpair()  # the peer gone between messages
    theirs.sendall(_msg(1, REGION_READ, bytes(16)))
    theirs.close()
    framer = P.Framer(ours)
    assert framer.next()[0] == 1
    with pytest.raises(P.ConnectionDropped, match="^peer closed the socket$"):
        framer.next()
    ours.close()


class RemoteDevice(ModelDevice):
    """A device that answers reads remotely (guests.guest.RepliesEarly): another thread has the value first and
    hands it to `reply_early`; io_read returns only once the test lets it."""

    answers_remotely = True

    def __init__(self) -> None:
        super().__init__()
        self.reply_early: Callable[[int], None] | None = None
        self.woken = threading.Event()

    def io_read(self, bar: int, offset: int, size: int) -> int:
        value = self.model.read(offset, size)
        early = self.reply_early
        reader = threading.Thread(target=early, args=(value,)) if early is not None else None
        if reader is not None:
            reader.start()  # the link's reader thread: it calls reply_early, then wakes us
        assert self.woken.wait(10), "the test never let the reading thread go on"
        if reader is not None:
            reader.join()
        return value


def test_a_device_that_answers_remotely_replies_from_the_thread_that_has_the_value() -> None:
    """A register read's reply leaves as soon as the value is there, before the connection's thread (waiting
    for it in io_read) wakes; that thread then sends nothing more, and the next access works as usual."""
    device = RemoteDevice()
    r = start_rig(es1370_function(device))
    try:
        expected = device.model.read(R.STATUS, 4)
        assert r.client.read(0, R.STATUS, 4) == expected.to_bytes(4, "little")  # io_read has not returned yet
        device.woken.set()
        assert r.client.read(CONFIG_REGION, 0, 2) == R.PCI_VENDOR_ID.to_bytes(2, "little")  # in step: one reply
        assert r.client.read(0, R.STATUS, 4) == expected.to_bytes(4, "little")
        r.client.read(CONFIG_REGION, 0, 2)  # answered once the connection's thread is done with the read
        assert device.reply_early is None  # set around each register read only
        assert r.server.stats.bar_reads == 2
    finally:
        device.woken.set()
        r.close()
