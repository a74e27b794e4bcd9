"""Serve a VM's devices until told to stop (`rdv-shim vm`), or around a QEMU process (`rdv-shim run`): the
devices listen before QEMU starts, signals go to QEMU, and when QEMU exits the devices are torn down and its
exit status is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from types import FrameType

from frontend_shim.attach.config import VmConfig
from frontend_shim.attach.qemu_args import rdv_args
from frontend_shim.attach.status import StatusBoard
from frontend_shim.attach.vm import AttachError, VmDevices
from services.common import logs

log = logs.get("shim.vm")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# QEMU gets SIGTERM if this process dies without tearing down (SIGKILL, a crash): it execs through util-linux's
# setpriv, which sets the parent-death signal (a preexec_fn would run in a forked copy of a threaded process).
_DIE_WITH_US = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


def serve(
    cfg: VmConfig,
    qemu: list[str] | None = None,
    *,
    status: bool = True,
    summary: bool = False,
    dma_log: str | None = None,
) -> int:
    """Serve `cfg`'s devices; with `qemu` (argv), run it with rdv's arguments added and return its exit status.
    `dma_log` (tests): where the ES1370's DMA reads of guest memory are saved on exit."""
    devices = VmDevices(cfg, dma_log)
    stop = threading.Event()
    received: list[int] = []
    proc: subprocess.Popen | None = None

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        received.append(sig)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)  # QEMU decides; we follow when it exits
        elif qemu is None:
            stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED}
    board: StatusBoard | None = None
    rc = 0
    try:
        try:
            devices.start()
        except AttachError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        log.info("devices ready", extra={"vm": cfg.name, "devices": ",".join(cfg.devices), "mode": cfg.mode})
        if status:
            board = StatusBoard(devices.status)
            board.start()
        if qemu is None:
            print(f"rdv vm {cfg.name}: serving {', '.join(cfg.devices)} (Ctrl-C stops)", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
            return 0
        if received:  # stopped before QEMU could start
            return 128 + received[0]
        binary = shutil.which(qemu[0])
        if binary is None:  # checked here: through setpriv, a missing QEMU would be setpriv's complaint
            print(f"error: cannot start {qemu[0]}: not found or not executable", file=sys.stderr)
            return 127
        argv = [binary, *qemu[1:], *rdv_args(cfg)]
        log.info("starting QEMU", extra={"argv": " ".join(argv)})
        try:
            proc = subprocess.Popen([*_DIE_WITH_US, *argv])
        except OSError as exc:
            print(f"error: cannot start {qemu[0]}: {exc.strerror or exc}", file=sys.stderr)
            return 126
        while True:
            try:
                code = proc.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = code if code >= 0 else 128 - code
        log.info("QEMU exited", extra={"status": code})
        return rc
    finally:
        if proc is not None and proc.poll() is None:  # an exception of ours: QEMU must not outlive us
            proc.kill()
            proc.wait()
        if board is not None:
            board.stop()
        devices.close()
        if qemu is not None and cfg.input:
            _remove_socket(cfg.qmp)  # QEMU removes it when it exits normally, not when it is killed
        if summary:
            print(json.dumps(devices.summary()), flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _remove_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
