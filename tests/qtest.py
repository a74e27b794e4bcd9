"""A small client for QEMU's qtest protocol, so QEMU's own device models can judge ours.

QEMU runs with `-accel qtest`: no guest CPU, its virtual clock moves only when we say `clock_step`, and we
play the guest ourselves with port and memory accesses. Debian's QEMU ships without the qtest accelerator;
`tests/tools/build_qtest_module.sh` rebuilds it (cached) and prints the module directory QEMU must be
pointed at with QEMU_MODULE_DIR.

Protocol facts (QEMU 7.2 softmmu/qtest.c): one command per line; the answer is `OK [value]`, `FAIL ...` or
`ERR ...`; `IRQ raise N` / `IRQ lower N` lines arrive in between once `irq_intercept_in` is set. PCI config
space is reached through ports 0xcf8/0xcfc.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "tests" / "tools" / "build_qtest_module.sh"
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"

PCI_ADDR_PORT = 0xCF8
PCI_DATA_PORT = 0xCFC
PCI_COMMAND = 0x04
PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_BAR0 = 0x10
PCI_INTERRUPT_LINE = 0x3C
PIIX3_DEVFN = (1, 0)  # the i440FX machine's PCI-to-ISA bridge
PIIX3_PIRQ_ROUTE = 0x60  # PIRQA..D route registers, one byte each
PCI_IRQ = 11  # every PIRQ is routed here (REFERENCE.md: slot 2 INTA is PIRQB on i440FX)


class QemuUnavailable(RuntimeError):
    """QEMU's qtest accelerator could not be built or started here: tests that need it skip."""


class QtestError(RuntimeError):
    """QEMU answered FAIL/ERR, or went away."""


_module: Path | QemuUnavailable | None = None  # built once per test run, failure included


def module_dir() -> Path:
    """The qtest module directory (built on first use; the script caches it). Raises QemuUnavailable."""
    global _module
    if _module is None:
        try:
            _module = _build_module()
        except QemuUnavailable as exc:
            _module = exc
    if isinstance(_module, QemuUnavailable):
        raise _module
    return _module


def _build_module() -> Path:
    if given := os.environ.get("RDV_QTEST_MODULE_DIR"):
        return Path(given)
    if not Path(QEMU).exists():
        raise QemuUnavailable(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    try:
        res = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise QemuUnavailable(f"{BUILD_SCRIPT.name} timed out") from exc
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
        tail = "\n".join(res.stderr.strip().splitlines()[-8:])
        raise QemuUnavailable(f"{BUILD_SCRIPT.name} failed (rc {res.returncode}): {tail}")
    return Path(lines[-1])


@dataclass(frozen=True)
class PciFunction:
    bus: int
    slot: int
    func: int
    vendor: int
    device: int

    @property
    def config_base(self) -> int:
        return 0x80000000 | (self.bus << 16) | (self.slot << 11) | (self.func << 8)


class Qtest:
    """One QEMU process under qtest control, with an optional QMP monitor (for screendump)."""

    def __init__(self, args: list[str], *, qmp: bool = False, timeout: float = 30.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rdv-qtest-"))
        self.timeout = timeout
        self.irq_levels: dict[int, bool] = {}
        self.irq_raised: dict[int, int] = {}  # rising edges per line since the start
        qtest_sock = self.dir / "qtest.sock"
        qmp_sock = self.dir / "qmp.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(qtest_sock))
        listener.listen(1)
        listener.settimeout(0.1)
        cmd = [QEMU, "-machine", "pc", "-accel", "qtest", "-qtest", f"unix:{qtest_sock}", "-qtest-log", "/dev/null"]
        cmd += ["-display", "none", "-nodefaults", "-vga", "none", *args]
        if qmp:
            cmd += ["-qmp", f"unix:{qmp_sock},server=on,wait=off"]
        env = {**os.environ, "QEMU_MODULE_DIR": str(module_dir())}
        self._stderr = open(self.dir / "stderr.log", "w+b")  # noqa: SIM115 - lives as long as the process
        out = self._stderr
        # QEMU gets SIGTERM when the test process dies (a killed test must not leave QEMUs), set by util-linux's
        # setpriv: a preexec_fn would run Python in a forked copy of this threaded process, where gRPC's fork
        # handler now and then aborted the child before it could exec QEMU.
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "SIGTERM", "--", *cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
        try:
            self._sock = self._accept(listener)
        finally:
            listener.close()
        self._sock.settimeout(timeout)
        self._rx = self._sock.makefile("rb")
        self._qmp: socket.socket | None = None
        self._qmp_rx = None
        if qmp:
            self._qmp_connect(qmp_sock)

    # ------------------------------------------------------------------ plumbing
    def _accept(self, listener: socket.socket) -> socket.socket:
        """Wait for QEMU to connect; fail at once (with its messages) if it exits instead."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return listener.accept()[0]
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    why = f"exited with {self.proc.returncode}" if self.proc.returncode is not None else "timed out"
                    error = QtestError(f"QEMU did not connect to qtest ({why}): {self.stderr()}")
                    self.close()
                    raise error from None

    def stderr(self) -> str:
        self._stderr.flush()
        return (self.dir / "stderr.log").read_text(errors="replace")[-2000:]

    def cmd(self, line: str) -> str:
        """Send one command; return what follows OK (IRQ notifications are recorded on the way)."""
        try:
            self._sock.sendall(line.encode() + b"\n")
            while True:
                raw = self._rx.readline()
                if not raw:
                    raise OSError("connection closed")
                reply = raw.decode().strip()
                if not reply.startswith("IRQ "):
                    break
                self._irq_event(reply)
        except OSError as exc:
            self.proc.poll()
            raise QtestError(f"QEMU went away during {line!r} ({exc}): {self.stderr()}") from None
        if reply == "OK" or reply.startswith("OK "):
            return reply[3:]
        raise QtestError(f"{line!r} -> {reply}")

    def _irq_event(self, reply: str) -> None:
        _, what, num = reply.split()
        n, level = int(num), what == "raise"
        if level and not self.irq_levels.get(n, False):
            self.irq_raised[n] = self.irq_raised.get(n, 0) + 1
        self.irq_levels[n] = level

    def close(self) -> None:
        """Stop QEMU cleanly (SIGTERM runs its cleanup: the wav audiodev completes its file)."""
        for closer in (getattr(self, "_sock", None), self._qmp_or_none()):
            if closer is not None:
                closer.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)
        self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _qmp_or_none(self) -> socket.socket | None:
        return getattr(self, "_qmp", None)

    def __enter__(self) -> Qtest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ guest accesses
    def outb(self, port: int, value: int) -> None:
        self.cmd(f"outb {port:#x} {value:#x}")

    def outw(self, port: int, value: int) -> None:
        self.cmd(f"outw {port:#x} {value:#x}")

    def outl(self, port: int, value: int) -> None:
        self.cmd(f"outl {port:#x} {value:#x}")

    def out(self, port: int, size: int, value: int) -> None:
        self.cmd(f"out{'bwl'[size.bit_length() - 1]} {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        return int(self.cmd(f"inb {port:#x}"), 16)

    def inw(self, port: int) -> int:
        return int(self.cmd(f"inw {port:#x}"), 16)

    def inl(self, port: int) -> int:
        return int(self.cmd(f"inl {port:#x}"), 16)

    def in_(self, port: int, size: int) -> int:
        return int(self.cmd(f"in{'bwl'[size.bit_length() - 1]} {port:#x}"), 16)

    def writel(self, addr: int, value: int) -> None:
        self.cmd(f"writel {addr:#x} {value:#x}")

    def readl(self, addr: int) -> int:
        return int(self.cmd(f"readl {addr:#x}"), 16)

    def write(self, addr: int, data: bytes) -> None:
        """Guest-physical memory write (base64 keeps big writes to one short line)."""
        if data:
            self.cmd(f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}")

    def read(self, addr: int, length: int) -> bytes:
        if not length:
            return b""
        return base64.b64decode(self.cmd(f"b64read {addr:#x} {length:#x}"))

    def memset(self, addr: int, length: int, value: int) -> None:
        self.cmd(f"memset {addr:#x} {length:#x} {value:#x}")

    def clock_step(self, ns: int | None = None) -> int:
        """Advance the virtual clock by `ns`, or to the next timer deadline; returns the new time in ns."""
        return int(self.cmd("clock_step" if ns is None else f"clock_step {ns}"))

    def irq_intercept_in(self, path: str = "ioapic") -> None:
        self.cmd(f"irq_intercept_in {path}")

    # ------------------------------------------------------------------ PCI
    def pci_read(self, fn: PciFunction | int, reg: int) -> int:
        base = fn.config_base if isinstance(fn, PciFunction) else fn
        self.outl(PCI_ADDR_PORT, base | (reg & 0xFC))
        return self.inl(PCI_DATA_PORT)

    def pci_write(self, fn: PciFunction | int, reg: int, value: int) -> None:
        base = fn.config_base if isinstance(fn, PciFunction) else fn
        self.outl(PCI_ADDR_PORT, base | (reg & 0xFC))
        self.outl(PCI_DATA_PORT, value)

    def find_pci(self, vendor: int, device: int) -> PciFunction:
        for slot in range(32):
            base = 0x80000000 | (slot << 11)
            ids = self.pci_read(base, 0)
            if ids & 0xFFFF == vendor and ids >> 16 == device:
                return PciFunction(0, slot, 0, vendor, device)
        raise QtestError(f"no PCI device {vendor:04x}:{device:04x} on bus 0")

    def bar_size(self, fn: PciFunction, bar: int) -> int:
        reg = PCI_BAR0 + 4 * bar
        old = self.pci_read(fn, reg)
        self.pci_write(fn, reg, 0xFFFFFFFF)
        probe = self.pci_read(fn, reg)
        self.pci_write(fn, reg, old)
        mask = 0xFFFFFFFC if old & 1 else 0xFFFFFFF0
        return (~(probe & mask) + 1) & 0xFFFFFFFF

    def setup_pci(self, fn: PciFunction, bars: dict[int, int]) -> None:
        """Assign BAR addresses, route INTx to PCI_IRQ, enable I/O, memory and bus mastering.

        No BIOS runs under qtest, so this is the guest firmware's job done by hand.
        """
        for bar, addr in bars.items():
            self.pci_write(fn, PCI_BAR0 + 4 * bar, addr)
        piix3 = 0x80000000 | (PIIX3_DEVFN[0] << 11) | (PIIX3_DEVFN[1] << 8)
        self.pci_write(piix3, PIIX3_PIRQ_ROUTE, PCI_IRQ * 0x01010101)
        line = self.pci_read(fn, PCI_INTERRUPT_LINE)
        self.pci_write(fn, PCI_INTERRUPT_LINE, (line & ~0xFF) | PCI_IRQ)
        cmd = self.pci_read(fn, PCI_COMMAND)
        self.pci_write(fn, PCI_COMMAND, cmd | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)

    # ------------------------------------------------------------------ QMP
    def _qmp_connect(self, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(path))
        self._qmp, self._qmp_rx = sock, sock.makefile("rb")
        json.loads(self._qmp_rx.readline())  # greeting
        self.qmp("qmp_capabilities")

    def qmp(self, command: str, **arguments: object) -> object:
        if self._qmp is None or self._qmp_rx is None:
            raise QtestError("QEMU was started without QMP")
        msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self._qmp.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            raw = self._qmp_rx.readline()
            if not raw:
                raise QtestError(f"QEMU closed QMP during {command}: {self.stderr()}")
            reply = json.loads(raw)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QtestError(f"QMP {command}: {reply['error']}")
            # asynchronous events are ignored

    def screendump(self) -> tuple[int, int, bytes]:
        """What QEMU's display shows: (width, height, packed RGB rows), from a PPM screendump."""
        path = self.dir / "screen.ppm"
        self.qmp("screendump", filename=str(path))
        return read_ppm(path.read_bytes())


def read_ppm(data: bytes) -> tuple[int, int, bytes]:
    """Parse a binary PPM (P6, maxval 255) as QEMU writes it."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError(f"not a P6 PPM with maxval 255: {fields}")
    width, height = int(fields[1]), int(fields[2])
    pixels = data[pos + 1 : pos + 1 + width * height * 3]
    if len(pixels) != width * height * 3:
        raise ValueError("truncated PPM")
    return width, height, pixels
