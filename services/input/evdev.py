"""Evdev source: Linux /dev/input/event* devices of the remote node, read without extra dependencies.

Each device is read by a thread (blocking reads work for character devices, FIFOs and files alike) that parses
`struct input_event` records and hands finished rdv events to the service's loop. Relative motion accumulates
into an absolute position on a desktop of the configured size (it only sets how far a mouse moves per count:
the shim scales positions to whatever the guest's screen is); absolute axes are scaled from the device's range.
A device that disappears (unplugged, EOF) is reopened every second.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from rdv.input.v1 import input_pb2
from services.common import input_events as ev
from services.common import logs
from services.common.input_keys import EVDEV_TO_QCODE

log = logs.get("input.evdev")

# struct input_event on 64-bit Linux: struct timeval {long sec; long usec}; __u16 type; __u16 code; __s32 value.
EVENT = struct.Struct("@llHHi")
EV_SYN, EV_KEY, EV_REL, EV_ABS = 0, 1, 2, 3
SYN_REPORT, SYN_DROPPED = 0, 3
REL_X, REL_Y, REL_HWHEEL, REL_WHEEL = 0, 1, 6, 8
ABS_X, ABS_Y = 0, 1
BTN_TO_BUTTON = {
    0x110: input_pb2.BUTTON_LEFT, 0x111: input_pb2.BUTTON_RIGHT, 0x112: input_pb2.BUTTON_MIDDLE,
    0x113: input_pb2.BUTTON_SIDE, 0x114: input_pb2.BUTTON_EXTRA, 0x14A: input_pb2.BUTTON_LEFT,  # BTN_TOUCH
}  # fmt: skip
ABSINFO = struct.Struct("@6i")  # value, minimum, maximum, fuzz, flat, resolution
_POLL = 0.25  # seconds between checks for stop() while a device is idle


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("E") << 8) | nr


def eviocgabs(axis: int) -> int:
    return _ioc(2, 0x40 + axis, ABSINFO.size)  # _IOR('E', 0x40 + axis, struct input_absinfo)


EVIOCGRAB = _ioc(1, 0x90, 4)  # _IOW('E', 0x90, int)


@dataclass
class Desktop:
    width: int = 1920
    height: int = 1080

    @classmethod
    def parse(cls, text: str) -> Desktop:
        try:
            w, h = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"desktop size must look like 1920x1080, not {text!r}") from None
        if not (1 <= w <= ev.MAX_DESKTOP and 1 <= h <= ev.MAX_DESKTOP):
            raise ValueError(f"desktop size must be 1..{ev.MAX_DESKTOP} pixels per side")
        return cls(w, h)


class EvdevTranslator:
    """Turns raw evdev records of one device into rdv events (pure: no files, no threads)."""

    def __init__(self, desktop: Desktop, abs_ranges: dict[int, tuple[int, int]] | None = None) -> None:
        self.desktop = desktop
        self.abs_ranges = abs_ranges or {}
        self.x = desktop.width // 2
        self.y = desktop.height // 2
        self._moved = False
        self._wheel = [0, 0]  # dx, dy
        self.ignored = 0

    def feed(self, type_: int, code: int, value: int) -> list[input_pb2.InputEvent]:
        out: list[input_pb2.InputEvent] = []
        if type_ == EV_KEY:
            out += self._flush()  # a click lands where the pointer is at that moment
            if code in BTN_TO_BUTTON:
                if value in (0, 1):
                    out.append(
                        input_pb2.InputEvent(
                            button=input_pb2.ButtonEvent(button=BTN_TO_BUTTON[code], pressed=value == 1)
                        )
                    )
            elif code in EVDEV_TO_QCODE:
                # value 2 is the host's autorepeat: QEMU's keyboards repeat only what they are sent
                out.append(ev.key(EVDEV_TO_QCODE[code], value != 0))
            else:
                self.ignored += 1
        elif type_ == EV_REL:
            if code == REL_X:
                self.x = min(max(self.x + value, 0), self.desktop.width - 1)
                self._moved = True
            elif code == REL_Y:
                self.y = min(max(self.y + value, 0), self.desktop.height - 1)
                self._moved = True
            elif code == REL_WHEEL:
                self._wheel[1] += value
            elif code == REL_HWHEEL:
                self._wheel[0] += value
            # the high-resolution wheel codes repeat REL_WHEEL/REL_HWHEEL: counting both would scroll twice
        elif type_ == EV_ABS and code in (ABS_X, ABS_Y):
            lo, hi = self.abs_ranges.get(code, (0, (self.desktop.width if code == ABS_X else self.desktop.height) - 1))
            size = self.desktop.width if code == ABS_X else self.desktop.height
            pos = round((min(max(value, lo), hi) - lo) * (size - 1) / max(hi - lo, 1))
            if code == ABS_X:
                self.x = pos
            else:
                self.y = pos
            self._moved = True
        elif type_ == EV_SYN:
            if code == SYN_REPORT:
                out += self._flush()
            elif code == SYN_DROPPED:  # the kernel's buffer overflowed: this frame is incomplete
                self._moved, self._wheel = False, [0, 0]
        return out

    def _flush(self) -> list[input_pb2.InputEvent]:
        out = []
        if self._moved:
            out.append(ev.move(self.x, self.y, self.desktop.width, self.desktop.height))
            self._moved = False
        dx, dy = self._wheel
        while dx or dy:  # split into events the validator accepts
            sx = max(-ev.MAX_WHEEL, min(ev.MAX_WHEEL, dx))
            sy = max(-ev.MAX_WHEEL, min(ev.MAX_WHEEL, dy))
            out.append(ev.wheel(sx, sy))
            dx, dy = dx - sx, dy - sy
        self._wheel = [0, 0]
        return out


class EvdevReader:
    """Reads one device path in a thread until `stop()`; `emit` is called from that thread."""

    def __init__(
        self,
        path: str,
        desktop: Desktop,
        emit: Callable[[input_pb2.InputEvent], None],
        *,
        grab: bool = False,
        reopen_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.desktop = desktop
        self.emit = emit
        self.grab = grab
        self.reopen_interval = reopen_interval
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"evdev-{os.path.basename(path)}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)  # a FIFO without a writer keeps open() blocked: the thread is a daemon

    def _run(self) -> None:
        warned = False
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if not warned:
                    log.warning("cannot open input device, retrying", extra={"path": self.path, "error": exc.strerror})
                    warned = True
                self._stop.wait(self.reopen_interval)
                continue
            warned = False
            log.info("reading input device", extra={"path": self.path})
            try:
                self._read(fd)
            finally:
                os.close(fd)
            if not self._stop.is_set():
                log.warning("input device went away, reopening", extra={"path": self.path})
                self._stop.wait(self.reopen_interval)

    def _read(self, fd: int) -> None:
        ranges = {}
        for axis in (ABS_X, ABS_Y):
            try:
                info = ABSINFO.unpack(fcntl.ioctl(fd, eviocgabs(axis), bytes(ABSINFO.size)))
                if info[2] > info[1]:
                    ranges[axis] = (info[1], info[2])
            except OSError:
                pass  # no such axis, or not an evdev node (a FIFO in tests)
        if self.grab:
            try:
                fcntl.ioctl(fd, EVIOCGRAB, 1)  # the remote node's own desktop stops seeing this device
            except OSError as exc:
                log.warning("cannot grab input device", extra={"path": self.path, "error": exc.strerror})
        translator = EvdevTranslator(self.desktop, ranges)
        pending = b""
        while not self._stop.is_set():
            try:
                if not select.select([fd], [], [], _POLL)[0]:
                    continue
                chunk = os.read(fd, EVENT.size * 64)
            except OSError as exc:
                if exc.errno != errno.ENODEV:  # ENODEV: unplugged
                    log.warning("input device read failed", extra={"path": self.path, "error": exc.strerror})
                return
            if not chunk:
                return
            pending += chunk
            usable = len(pending) - len(pending) % EVENT.size
            for _sec, _usec, type_, code, value in EVENT.iter_unpack(pending[:usable]):
                self.records += 1
                for event in translator.feed(type_, code, value):
                    self.emit(event)
            pending = pending[usable:]
