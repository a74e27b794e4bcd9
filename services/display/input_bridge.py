"""From the display windows to the guests' input and back: window events, already mapped to guest desktop
coordinates by the stage (through the viewport, so a screen showing the right half of the desktop clicks in the
right half), become rdv input events for the input service's InputPublisher, each naming the VM whose window
it happened in; a focus move made here (a click in another VM's window, the switcher key) goes on the same
stream, before the events that follow it. A second stream (WatchFocus) brings the focus moves made elsewhere
(SetFocus) back, so the windows' titles say where the keyboard is.

`publish` only queues (the publisher's thread owns the stream and reconnects), so the SDL thread never waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import input_events as events
from services.common import input_keys as keys
from services.common import logs, tls
from services.common.input_publisher import InputPublisher
from services.common.retry import Backoff
from services.display.stage import GuestInput

log = logs.get("display.input")


class InputBridge:
    def __init__(self, publisher: InputPublisher, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.publisher = publisher
        self.sent = 0
        self.refused = 0
        self._last_move: tuple[int, int, int, int, str] | None = None
        self._credentials = credentials
        self._closed = threading.Event()
        self._watch: grpc.Future | None = None

    def __call__(self, gi: GuestInput) -> None:
        ev = gi.event
        where = (gi.x, gi.y, gi.desktop_w, gi.desktop_h)
        if ev.kind == "motion":
            if (*where, gi.vm) == self._last_move:
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
            self._last_move = (*where, gi.vm)
        for event in out:
            event.vm = gi.vm
            self._publish(event)

    def focus(self, vm: str) -> None:
        """The user moved the focus to `vm` here: the input service moves it before the events that follow."""
        self._last_move = None
        self._publish(input_pb2.InputEvent(focus=input_pb2.Focus(vm=vm)))

    def _publish(self, event: input_pb2.InputEvent) -> None:
        try:
            self.publisher.publish(event)
            self.sent += 1
        except events.InvalidEvent as exc:
            self.refused += 1
            log.debug("window event refused", extra={"error": str(exc)})

    def watch_focus(self, follow: Callable[[str], None]) -> None:
        """Call `follow(vm)` with the input service's focus now and whenever it moves (a thread; reconnects)."""
        threading.Thread(target=self._watch_loop, args=(follow,), name="input-focus", daemon=True).start()

    def _watch_loop(self, follow: Callable[[str], None]) -> None:
        backoff = Backoff(0.05, 2.0)
        target = self.publisher.target
        while not self._closed.is_set():
            channel = (
                grpc.secure_channel(target, self._credentials) if self._credentials else grpc.insecure_channel(target)
            )
            try:
                stream = input_pb2_grpc.InputServiceStub(channel).WatchFocus(input_pb2.GetFocusRequest())
                self._watch = stream
                for state in stream:
                    backoff.reset()
                    follow(state.focused)
            except grpc.RpcError as exc:
                if not self._closed.is_set() and exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning("focus stream failed", extra={"target": target, "code": exc.code().name})
            finally:
                channel.close()
            self._closed.wait(backoff.next())

    def close(self) -> None:
        self._closed.set()
        if self._watch is not None:
            self._watch.cancel()
        self.publisher.close()


def make_bridge(target: str, tls_dir: str | None = None) -> InputBridge:
    """An InputBridge publishing to the input service at `target` (connects in the background)."""
    credentials = tls.channel_credentials(tls_dir) if tls_dir else None
    return InputBridge(InputPublisher(target, source="display", credentials=credentials).start(), credentials)
