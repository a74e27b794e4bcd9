"""From the display window to the guest's input: window events, already mapped to guest desktop coordinates by
the stage (through the viewport, so a screen showing the right half of the desktop clicks in the right half),
become rdv input events handed to the input service's InputPublisher.

`publish` only queues (the publisher's thread owns the stream and reconnects), so the SDL thread never waits.
"""

from __future__ import annotations

from services.common import input_events as events
from services.common import input_keys as keys
from services.common import logs, tls
from services.common.input_publisher import InputPublisher
from services.display.stage import GuestInput

log = logs.get("display.input")


class InputBridge:
    def __init__(self, publisher: InputPublisher) -> None:
        self.publisher = publisher
        self.sent = 0
        self.refused = 0
        self._last_move: tuple[int, int, int, int] | None = None

    def __call__(self, gi: GuestInput) -> None:
        ev = gi.event
        where = (gi.x, gi.y, gi.desktop_w, gi.desktop_h)
        if ev.kind == "motion":
            if where == self._last_move:
                return
            out = [events.move(*where)]
        elif ev.kind == "button":
            # A click carries its position: it must land where the pointer is in this window.
            out = [events.move(*where), events.button(ev.button, ev.pressed)]
        elif ev.kind == "wheel":
            out = [events.wheel(max(-64, min(64, ev.dx)), max(-64, min(64, ev.dy)))]
        elif ev.kind == "key":
            qcode = keys.HID_TO_QCODE.get(ev.scancode)
            if qcode is None:
                log.debug("key without a qcode ignored", extra={"scancode": ev.scancode})
                return
            out = [events.key(qcode, ev.pressed)]
        else:
            return
        if ev.kind in ("motion", "button"):
            self._last_move = where
        for event in out:
            try:
                self.publisher.publish(event)
                self.sent += 1
            except events.InvalidEvent as exc:
                self.refused += 1
                log.debug("window event refused", extra={"error": str(exc)})

    def close(self) -> None:
        self.publisher.close()


def make_bridge(target: str, tls_dir: str | None = None) -> InputBridge:
    """An InputBridge publishing to the input service at `target` (connects in the background)."""
    credentials = tls.channel_credentials(tls_dir) if tls_dir else None
    return InputBridge(InputPublisher(target, source="display", credentials=credentials).start())
