"""A stand-in for qemu-system-x86_64 in `rdv-shim run` tests (argv[1:] are QEMU's arguments).

It connects to each vfio-user socket it is given (proving the sockets listen before QEMU starts), writes a
JSON report (its pid, its arguments, which sockets answered) to $FAKE_QEMU_REPORT, then either exits with
$FAKE_QEMU_EXIT at once or waits for a signal: SIGINT/SIGTERM/SIGHUP end it with 100 + the signal number, so
a test can tell the status came from here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time


def main() -> int:
    args = sys.argv[1:]
    sockets = [json.loads(args[i + 1])["socket"]["path"] for i, a in enumerate(args[:-1])
               if a == "-device" and "vfio-user-pci" in args[i + 1]]  # fmt: skip
    answered = []
    for path in sockets:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            answered.append(path)
        except OSError:
            pass
        finally:
            s.close()
    got: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: got.append(n))
    report = os.environ["FAKE_QEMU_REPORT"]
    with open(report + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "args": args, "sockets": sockets, "answered": answered}, f)
    os.replace(report + ".tmp", report)
    if "FAKE_QEMU_EXIT" in os.environ:
        return int(os.environ["FAKE_QEMU_EXIT"])
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    return 100 + got[0] if got else 99


if __name__ == "__main__":
    sys.exit(main())
