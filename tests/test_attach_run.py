"""`rdv-shim vm` / `rdv-shim run` around a fake QEMU (tests/fake_qemu.py) with the real services: the sockets
listen before QEMU starts, QEMU gets rdv's arguments after the user's, signals reach QEMU, QEMU's exit status
is the command's, and nothing (process, socket) is left behind. Plus the golden `--print-qemu-args` output and
a real QEMU (Debian's 7.2) taking rdv's memory, QMP and tablet arguments."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend_shim.attach.config import load
from frontend_shim.attach.qemu_args import conflicts, rdv_args
from tests.helpers import ROOT, ServiceProcess, run_shim, start_service

DATA = ROOT / "tests" / "data" / "attach"
FAKE = [sys.executable, str(ROOT / "tests" / "fake_qemu.py")]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    """The three real services on loopback, for the whole module."""
    logs = tmp_path_factory.mktemp("services")
    started = {
        "audio": start_service("audio", logs, "--sink", "null"),
        "display": start_service("display", logs, "--presenter", "headless"),
        "input": start_service("input", logs),
    }
    yield started
    for svc in started.values():
        svc.stop()


def config(tmp_path: Path, node: dict[str, ServiceProcess], audio: str | None = None) -> Path:
    path = tmp_path / "vm.toml"
    path.write_text(
        f'name = "t1"\ninsecure = true\nruntime_dir = "{tmp_path}/run"\n[qemu]\nmemory = "256M"\n'
        f'[audio]\nendpoint = "{audio or node["audio"].address}"\n'
        f'[display]\nendpoints = ["{node["display"].address}"]\n'
        f'[input]\nendpoint = "{node["input"].address}"\n'
    )
    return path


def start_run(cfg: Path, report: Path, *qemu_args: str, exit_code: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "FAKE_QEMU_REPORT": str(report), "RDV_LOG_LEVEL": "info"}
    env.pop("FAKE_QEMU_EXIT", None)
    if exit_code is not None:
        env["FAKE_QEMU_EXIT"] = str(exit_code)
    return subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "run", "--config", str(cfg), "--", *FAKE, *qemu_args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def wait_report(report: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while not report.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the fake QEMU never started"
        time.sleep(0.05)
    return json.loads(report.read_text())


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie of an exited child is gone too: its parent (the runner) has exited and init reaps it
        time.sleep(0.05)
    return False


def leftovers(tmp_path: Path) -> list[str]:
    run = tmp_path / "run"
    return sorted(p.name for p in run.iterdir()) if run.exists() else []


# ----------------------------------------------------------------------------------------------- run
def test_qemu_starts_after_every_socket_listens_and_its_status_is_ours(tmp_path: Path, node: dict) -> None:
    cfg = config(tmp_path, node)
    report = tmp_path / "report.json"
    proc = start_run(cfg, report, "-accel", "tcg", "-m", "256M", exit_code=7)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 7, err
    r = json.loads(report.read_text())
    assert len(r["sockets"]) == 2 and r["answered"] == r["sockets"], r  # both listened when QEMU started
    assert r["args"] == ["-accel", "tcg", "-m", "256M", *rdv_args(load(str(cfg)))]  # the user's, then rdv's
    assert gone(r["pid"]) and leftovers(tmp_path) == []
    # both PCI devices' services were reachable: their final status says online
    assert "status device=es1370 state=online" in err and "status device=svga state=online" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGHUP, False)],
                         ids=["sigterm", "ctrl-c", "sighup"])  # fmt: skip
def test_signals_reach_qemu_and_nothing_is_left_behind(tmp_path: Path, node: dict, sig: int, group: bool) -> None:
    """Ctrl-C in a terminal signals the whole foreground group (runner and QEMU); kill/systemd the runner."""
    report = tmp_path / "report.json"
    proc = start_run(config(tmp_path, node), report)
    r = wait_report(report, proc)
    assert set(leftovers(tmp_path)) == {"es1370.sock", "svga.sock"}
    (os.killpg if group else os.kill)(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 100 + sig, err  # what the fake QEMU exited with, passed on
    assert gone(r["pid"]) and leftovers(tmp_path) == [], leftovers(tmp_path)
    assert "Traceback" not in err and "level=critical" not in err and "level=error" not in err, err


def test_a_device_whose_service_is_down_does_not_stop_the_others(tmp_path: Path, node: dict) -> None:
    cfg = config(tmp_path, node, audio="127.0.0.1:9")  # discard port: nothing answers
    report = tmp_path / "report.json"
    proc = start_run(cfg, report, exit_code=0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    r = json.loads(report.read_text())
    assert r["answered"] == r["sockets"] and len(r["sockets"]) == 2  # the ES1370 listens anyway
    assert "status device=es1370 state=offline" in err and "status device=svga state=online" in err, err


def test_conflicting_user_arguments_are_refused_before_anything_starts(tmp_path: Path, node: dict) -> None:
    cfg = config(tmp_path, node)
    report = tmp_path / "report.json"
    proc = start_run(cfg, report, "-vga", "std", "-machine", "pc,memory-backend=mem", "-m", "1G", "-daemonize")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and not report.exists() and leftovers(tmp_path) == []
    for words in ("-vga std", "memory-backend=mem", "-m 1G", "qemu.memory is 256M", "-daemonize"):
        assert words in err, err


def test_a_missing_qemu_is_status_127_and_leaves_nothing(tmp_path: Path, node: dict) -> None:
    res = run_shim("run", "--config", str(config(tmp_path, node)), "--", str(tmp_path / "no-such-qemu"))
    assert res.returncode == 127 and "cannot start" in res.stderr and "Traceback" not in res.stderr
    assert leftovers(tmp_path) == []


def test_vm_serves_until_sigterm_and_cleans_up(tmp_path: Path, node: dict) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "vm", "--config", str(config(tmp_path, node)), "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while set(leftovers(tmp_path)) != {"es1370.sock", "svga.sock"}:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) == {"es1370", "svga", "input"} and summary["es1370"]["device"] == "es1370"
    assert leftovers(tmp_path) == []


def test_the_conflict_rules() -> None:
    cfg = load(str(DATA / "two_screens.toml"), env={})
    assert conflicts(["-accel", "kvm", "-m", "4G", "-vga", "none", "-machine", "q35"], cfg) == []
    assert conflicts(["-m", "4096"], cfg) == [] and conflicts(["-m", "size=4G,maxmem=8G"], cfg) == []
    assert conflicts(["-device", "VGA"], cfg) and conflicts(["-device", '{"driver":"virtio-vga"}'], cfg)
    assert conflicts(["-mem-path", "/dev/hugepages"], cfg)
    assert conflicts(["-qmp", "unix:/run/rdv/desk/qmp.sock,server=on,wait=off"], cfg)
    assert conflicts(["-M", "pc,memory-backend=m"], cfg)
    audio_only = load(str(DATA / "audio_only.toml"), env={})
    assert conflicts(["-vga", "std", "-device", "VGA"], audio_only) == []  # rdv's SVGA is not attached


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("name", ["audio_only", "two_screens", "input_only", "example"])
def test_print_qemu_args_golden(name: str) -> None:
    path = ROOT / "deploy" / "vm.example.toml" if name == "example" else DATA / f"{name}.toml"
    for style, suffix in (("lines", ".args"), ("shell", ".sh")):
        golden = DATA / f"{name}{suffix}"
        if not golden.exists():
            continue
        res = subprocess.run(
            [sys.executable, "-m", "frontend_shim", "vm", "--config", str(path), "--print-qemu-args", style],
            cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/home/nobody"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout == golden.read_text(), f"{golden.name} differs:\n{res.stdout}"


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (make setup installs it)")
def test_a_real_qemu_takes_rdvs_memory_qmp_and_tablet_arguments(tmp_path: Path) -> None:
    """Debian's QEMU 7.2 has no vfio-user-pci: everything else of rdv's arguments, after the user's own
    -machine, gives a VM whose RAM is the shared memfd and whose QMP socket is rdv's."""
    from qemu.qmp import QMPClient

    cfg_path = tmp_path / "vm.toml"
    cfg_path.write_text(
        f'name = "real"\ninsecure = true\nruntime_dir = "{tmp_path}"\n[qemu]\nmemory = "64M"\n'
        '[audio]\nendpoint = "127.0.0.1:9"\n[input]\nendpoint = "127.0.0.1:9"\n'
    )
    args = rdv_args(load(str(cfg_path), env={}))
    i = args.index("-device")
    assert "vfio-user-pci" in args[i + 1]
    del args[i : i + 2]
    qemu = subprocess.Popen(
        [QEMU, "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults", "-S", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    qmp_path = str(tmp_path / "qmp.sock")

    async def ask() -> tuple[list, list]:
        client = QMPClient("test")
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.connect(qmp_path)
                break
            except Exception:
                assert qemu.poll() is None, qemu.communicate()
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        try:
            memdev = await client.execute("query-memdev")
            usb = await client.execute("qom-list", {"path": "/machine/peripheral"})
        finally:
            await client.disconnect()
        return memdev, usb  # type: ignore[return-value]

    try:
        memdev, peripherals = asyncio.run(ask())
    finally:
        qemu.terminate()
        qemu.wait(30)
    assert [(m["id"], m["size"], m["share"]) for m in memdev] == [("rdv-ram", 64 << 20, True)]
    assert {"rdv-usb"} <= {p["name"] for p in peripherals}


def test_status_lines_on_a_terminal_are_redrawn_in_place_and_give_way_to_logs() -> None:
    import io
    import logging

    from frontend_shim.attach.status import StatusBoard
    from frontend_shim.attach.vm import DeviceStatus

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    states = [DeviceStatus("es1370", "tv:1", "online", True, 0.42, 12_345.0, "bytes_s", 2),
              DeviceStatus("input", "tv:3", "offline", False, None, 0.0, "events_s", 0)]  # fmt: skip
    board = StatusBoard(lambda: states, period=3600, stream=tty)
    handler = logging.StreamHandler(tty)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        board.start()
        board.update()
        logging.getLogger("rdv.test").warning("a log line")
        board.update()
        board.stop()
    finally:
        root.removeHandler(handler)
    out = tty.getvalue()
    first = out.index("es1370  online  qemu connected  rtt    0.4 ms    12.3k B/s")
    assert "input   offline qemu waiting" in out and "ev/s" in out
    erase = "\x1b[2F\x1b[J"  # two lines up, clear to the end
    assert out.index(erase, first) < out.index("a log line") < out.index("es1370", out.index("a log line"))
    assert out.count(erase) == 2 and out.endswith("tv:3\n")  # once for the log, once for the final state


def test_qemu_does_not_outlive_a_killed_runner(tmp_path: Path, node: dict) -> None:
    """SIGKILL leaves rdv no time to tear down: QEMU still goes (its parent-death signal), so no VM keeps
    running against devices that are gone."""
    if shutil.which("setpriv") is None:
        pytest.skip("util-linux's setpriv is not installed")
    report = tmp_path / "report.json"
    proc = start_run(config(tmp_path, node), report)
    r = wait_report(report, proc)
    proc.kill()
    proc.communicate(timeout=30)
    left = not gone(r["pid"])
    if left:
        os.kill(r["pid"], signal.SIGKILL)
    assert not left, "the fake QEMU outlived the killed runner"
