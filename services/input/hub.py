"""The input hub: subscribers (one per VM), the focus rule and bounded per-subscriber queues.

Runs on the service's event loop only (no locks). Sources call `deliver`; each subscriber's stream drains its
own queue. A slow subscriber never slows a source: pointer motion coalesces into the latest position, and when
the queue is still full the oldest queued motion goes first; a key, button or wheel event is dropped only if
no motion is left to drop, and every drop is counted and logged.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from rdv.input.v1 import input_pb2
from services.common import logs
from services.common.input_events import BUTTON_NAMES

log = logs.get("input")

FOCUS_RULE = (
    "events go to the focused VM: the VM chosen with SetFocus while it is subscribed, otherwise the most "
    "recently subscribed VM; SetFocus with an empty vm forgets the choice; keys and buttons still held in a VM "
    "are released there when it loses focus"
)
RELEASE_SOURCE = "rdv-input:focus"


class NoTarget(LookupError):
    """No subscribed VM can take the events."""


@dataclass(eq=False)
class Subscriber:
    session_id: str
    vm: str
    peer: str
    order: int  # subscription order; the highest is the most recent
    limit: int
    started: float = field(default_factory=time.monotonic)
    queue: deque[input_pb2.InputEvent] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str = ""  # why the hub ended this subscription (replaced); empty while it runs
    counters: Counter[str] = field(default_factory=Counter)
    held_keys: set[str] = field(default_factory=set)
    held_buttons: set[int] = field(default_factory=set)

    def offer(self, event: input_pb2.InputEvent) -> bool:
        """Queue one event; False if it had to be dropped."""
        q = self.queue
        kind = event.WhichOneof("kind")
        if kind == "pointer_move" and q and q[-1].WhichOneof("kind") == "pointer_move":
            q[-1] = event  # only the latest position matters; never merged across a button or key
            self.counters["coalesced"] += 1
            self.wake.set()
            return True
        if len(q) >= self.limit:
            oldest_motion = next((i for i, e in enumerate(q) if e.WhichOneof("kind") == "pointer_move"), None)
            if oldest_motion is None and kind == "pointer_move":
                self.counters["dropped_motion"] += 1
                return False
            if oldest_motion is None:
                self.counters["dropped"] += 1
                if self.counters["dropped"] in (1, 10, 100) or self.counters["dropped"] % 1000 == 0:
                    log.warning(
                        "subscriber queue full, dropping input",
                        extra={"vm": self.vm, "session": self.session_id, "dropped": self.counters["dropped"]},
                    )
                return False
            del q[oldest_motion]
            self.counters["dropped_motion"] += 1
        if kind == "key":
            (self.held_keys.add if event.key.pressed else self.held_keys.discard)(event.key.qcode)
        elif kind == "button":
            (self.held_buttons.add if event.button.pressed else self.held_buttons.discard)(event.button.button)
        q.append(event)
        self.counters["queued"] += 1
        self.wake.set()
        return True

    def take(self) -> list[input_pb2.InputEvent]:
        events = list(self.queue)
        self.queue.clear()
        self.wake.clear()
        self.counters["delivered"] += len(events)
        return events

    def end(self, reason: str) -> None:
        self.ended = reason
        self.wake.set()


@dataclass
class Delivery:
    vm: str = ""
    delivered: int = 0
    dropped: int = 0


class Hub:
    def __init__(self, queue_limit: int = 1024) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.queue_limit = queue_limit
        self.subscribers: dict[str, Subscriber] = {}
        self.chosen = ""
        self._focused = ""
        self._order = itertools.count(1)
        self._ids = itertools.count(1)
        self.watchers: set[asyncio.Event] = set()  # WatchFocus streams: set when the focus may have moved

    # ------------------------------------------------------------------ subscriptions
    def subscribe(self, vm: str, peer: str) -> Subscriber:
        sub = Subscriber(f"sub-{next(self._ids)}", vm, peer, next(self._order), self.queue_limit)
        old = self.subscribers.get(vm)
        if old is not None:
            old.end(f"replaced by a newer subscription for vm {vm!r} from {peer}")
            log.info("subscription replaced", extra={"vm": vm, "old": old.session_id, "new": sub.session_id})
        self.subscribers[vm] = sub
        log.info("subscribed", extra={"vm": vm, "session": sub.session_id, "peer": peer})
        self._refocus()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if self.subscribers.get(sub.vm) is sub:
            del self.subscribers[sub.vm]
            log.info("unsubscribed", extra={"vm": sub.vm, "session": sub.session_id, **dict(sub.counters)})
            self._refocus()

    # ------------------------------------------------------------------ focus
    def focused(self) -> str:
        if self.chosen in self.subscribers:
            return self.chosen
        latest = max(self.subscribers.values(), key=lambda s: s.order, default=None)
        return latest.vm if latest else ""

    def set_focus(self, vm: str) -> None:
        if vm and vm not in self.subscribers:
            raise NoTarget(f"vm {vm!r} is not subscribed; subscribed: {self.subscribed() or 'none'}")
        self.chosen = vm
        self._refocus()

    def request_focus(self, vm: str) -> bool:
        """A source's user chose `vm` (a click in its window). Moves the focus when `vm` is subscribed; either way
        the watchers hear where the focus is, so a window that asked in vain shows it is not focused."""
        moved = vm in self.subscribers
        if moved:
            self.set_focus(vm)
        self._notify()
        return moved

    def _notify(self) -> None:
        for wake in self.watchers:
            wake.set()

    def subscribed(self) -> list[str]:
        return [s.vm for s in sorted(self.subscribers.values(), key=lambda s: s.order)]

    def focus_state(self) -> input_pb2.FocusState:
        return input_pb2.FocusState(
            focused=self.focused(), chosen=self.chosen, subscribed=self.subscribed(), rule=FOCUS_RULE
        )

    def _refocus(self) -> None:
        now = self.focused()
        if now == self._focused:
            return
        before, self._focused = self._focused, now
        log.info("focus moved", extra={"from": before or "-", "to": now or "-", "chosen": self.chosen or "-"})
        self._notify()
        losing = self.subscribers.get(before)
        if losing is not None:
            self._release_all(losing)

    def _release_all(self, sub: Subscriber) -> None:
        """A VM that loses focus would otherwise keep a key or button pressed forever."""
        releases = [input_pb2.InputEvent(key=input_pb2.Key(qcode=q, pressed=False)) for q in sorted(sub.held_keys)] + [
            input_pb2.InputEvent(button=input_pb2.ButtonEvent(button=b, pressed=False))
            for b in sorted(sub.held_buttons)
        ]
        now = time.monotonic_ns()
        for ev in releases:
            ev.source, ev.timestamp_ns = RELEASE_SOURCE, now
            sub.offer(ev)
        if releases:
            sub.counters["released_on_focus_loss"] += len(releases)
            log.info(
                "released held input",
                extra={"vm": sub.vm, "keys": ",".join(sorted(sub.held_keys)) or "-",
                       "buttons": ",".join(BUTTON_NAMES.get(b, str(b)) for b in sorted(sub.held_buttons)) or "-"},
            )  # fmt: skip

    # ------------------------------------------------------------------ delivery
    def target(self, vm: str = "") -> Subscriber:
        """The subscriber that takes events addressed to `vm` (empty: the focused VM)."""
        if vm:
            sub = self.subscribers.get(vm)
            if sub is None:
                raise NoTarget(f"vm {vm!r} is not subscribed; subscribed: {self.subscribed() or 'none'}")
            return sub
        focused = self.focused()
        if not focused:
            raise NoTarget(
                "no VM is subscribed: start `python -m frontend_shim forward-input --input HOST:PORT --qmp SOCKET` "
                "beside the VM's QEMU"
            )
        return self.subscribers[focused]

    def deliver(self, events: Iterable[input_pb2.InputEvent], vm: str = "") -> Delivery:
        """Queue already validated events for `vm` (empty: the focused VM). Raises NoTarget."""
        sub = self.target(vm)
        result = Delivery(vm=sub.vm)
        for ev in events:
            if sub.offer(ev):
                result.delivered += 1
            else:
                result.dropped += 1
        return result

    def deliver_focused(self, event: input_pb2.InputEvent) -> Delivery:
        """A source's event: to the focused VM; one naming another VM (its window is not focused) goes nowhere
        (Delivery.vm empty). Raises NoTarget."""
        sub = self.target()
        if event.vm and event.vm != sub.vm:
            return Delivery()
        return Delivery(sub.vm, *((1, 0) if sub.offer(event) else (0, 1)))
