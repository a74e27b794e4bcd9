"""What every device link of the shim shares, written once: the coherence modes, sequence numbers and the
waiters of the replies a guest thread waits for (register reads in backend mode, barriers), the round trip,
background threads, and the supervisor that reopens lost sessions with one backoff policy.

A link has one or more *ends* (`ServiceEnd`: one remote service each, its current session stream replaced on
reconnect; the audio link has one, the display link one per screen). Requests that expect a reply go to the
first end's stream.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from frontend_shim.links.session_stream import FRAME_OVERHEAD, SessionStream, Waiter
from rdv.common.v1 import common_pb2
from services.common.retry import Backoff

CoherenceMode = Literal["backend", "mirrored"]
MODES: dict[str, int] = {"backend": common_pb2.COHERENCE_MODE_BACKEND, "mirrored": common_pb2.COHERENCE_MODE_MIRRORED}
BACKOFF_FIRST = 0.1  # seconds before the first reconnect attempt after a failed one
BACKOFF_MAX = 1.0  # seconds between reconnect attempts at most: a restarted service is back in use within ~1 s
RECONNECT_TIMEOUT = 2.0  # seconds one reconnect attempt may take to get `opened`


@dataclass
class LinkStats:
    """The counters every link keeps (a device's link adds its own); `as_dict` is what `--json` prints."""

    reads: int = 0
    writes: int = 0
    read_timeouts: int = 0
    reconnects: int = 0
    bytes_to_service: int = 0
    bytes_from_service: int = 0
    messages_to_service: int = 0
    messages_from_service: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class ServiceEnd:
    """One remote service of a link. Subclasses make the stream and send `open` (`open_stream`, called under the
    link's lock so no write slips between the state snapshot and the open) and take over an opened session
    (`opened`)."""

    def __init__(self, link: DeviceLink, target: str, carries_requests: bool) -> None:
        self.link = link
        self.target = target
        self.carries_requests = carries_requests  # reads and barriers go to this service
        self.conn: SessionStream | None = None
        self.offline_since: float | None = None
        self.last_error = ""

    def open_stream(self) -> SessionStream:
        raise NotImplementedError

    def opened(self, conn: SessionStream) -> None:
        """The service answered `open` on `conn` (called outside the link's lock)."""

    @property
    def connected(self) -> bool:
        """A session is open (not merely being opened) on a live stream."""
        conn = self.conn
        return conn is not None and conn.alive and conn.opened.is_set()

    def connect(self, timeout: float) -> bool:
        link = self.link
        with link.lock:
            conn = self.open_stream()
            self.conn = conn
        if conn.opened.wait(timeout) and conn.alive:
            self.opened(conn)
            self.offline_since = None
            link.log.info("session open", extra={"target": self.target, "session": conn.session_id, "mode": link.mode})
            return True
        conn.close()
        if self.conn is conn:
            self.conn = None
        return False

    def lost(self, conn: SessionStream, error: str) -> None:
        """(receiving thread) `conn` ended: readers waiting on it fail, and the supervisor reopens the session."""
        link = self.link
        if self.carries_requests:
            link._fail_waiters()
        self.stream_ended(conn)
        if link.stopping.is_set() or conn is not self.conn:
            return
        self.last_error = error
        if self.offline_since is None:
            link.log.warning(f"{link.device} session lost", extra={"target": self.target, "error": error})
            self.offline_since = time.monotonic()
        else:
            link.log.debug(f"{link.device} service still unreachable", extra={"target": self.target, "error": error})
        link.wake_supervisor.set()

    def stream_ended(self, conn: SessionStream) -> None:
        """(receiving thread) Whatever waited on `conn` besides register reads gives up (e.g. the frame window)."""

    def close(self, drain: bool, timeout: float) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            if drain:
                conn.finish(timeout)
            else:
                conn.close()


class DeviceLink:
    """The base of AudioLink and DisplayLink. Subclasses say which stream carries requests (`_request_stream`),
    which ends the supervisor keeps open (`_ends`) and what to do after a reconnect (`_reconnected`)."""

    stats: LinkStats
    device = "device"  # as log lines name it: "audio", "display"

    def __init__(
        self, mode: str, make_message: Callable[..., Any], access_timeout: float, log: logging.Logger
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        self.mode = mode
        self.access_timeout = access_timeout
        self.log = log
        self.lock = threading.RLock()  # the device state, and the order in which its changes enter the streams
        self.stopping = threading.Event()
        self.wake_supervisor = threading.Event()  # a session needs attention
        self.waiters: dict[int, Waiter] = {}
        self._make_message = make_message  # the service's FrontendMessage class
        self._seq = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._holding: list[SessionStream] = []  # the streams hold_writes() held
        self.reply_early: Callable[[int], None] | None = None  # guests.guest.RepliesEarly

    @property
    def answers_remotely(self) -> bool:
        """A register read waits for the service (guests.guest.RepliesEarly)."""
        return self.mode == "backend"

    # ------------------------------------------------------------------ what subclasses say
    def _request_stream(self) -> SessionStream | None:
        raise NotImplementedError

    def _ends(self) -> Sequence[ServiceEnd]:
        raise NotImplementedError

    def _reconnected(self, end: ServiceEnd) -> None:
        """Runs on the supervisor after `end` reopened its session."""

    # ------------------------------------------------------------------ threads
    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def _supervise(self) -> None:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while not self.stopping.is_set():
            self.wake_supervisor.wait(1.0)
            self.wake_supervisor.clear()
            for end in self._ends():
                if self.stopping.is_set() or end.connected:
                    continue
                if end.connect(timeout=RECONNECT_TIMEOUT):
                    self.stats.reconnects += 1
                    backoff.reset()
                    self._reconnected(end)
                else:
                    self.stopping.wait(backoff.next())
                    self.wake_supervisor.set()

    # ------------------------------------------------------------------ posted writes
    def hold_writes(self) -> None:
        """`frontend_shim.guests.guest.HoldsWrites`: posted writes wait until release_writes()
        (SessionStream.hold)."""
        self._holding = [end.conn for end in self._ends() if end.conn is not None]
        for conn in self._holding:
            conn.hold()

    def release_writes(self) -> None:
        held, self._holding = self._holding, []
        for conn in held:
            conn.release()

    # ------------------------------------------------------------------ requests and replies
    def _received(self, msg: Any) -> None:
        """(receiving thread) Count a message from a service."""
        self.stats.bytes_from_service += msg.ByteSize() + FRAME_OVERHEAD
        self.stats.messages_from_service += 1

    def _read_remote(self, offset: int, size: int) -> int:
        """Backend mode's register read: a round trip to the service; no answer reads as all ones (a device that
        is gone)."""
        mask = (1 << (8 * size)) - 1
        early = self.reply_early
        seq, waiter = self._post(
            "value",
            common_pb2.RegisterAccess(offset=offset, size=size),
            None if early is None else lambda value: early(int(value) & mask),  # type: ignore[call-overload]
        )
        value = self._wait(seq, waiter, self.access_timeout)
        if value is None:
            self.stats.read_timeouts += 1
            return mask
        return int(value) & mask  # type: ignore[call-overload]

    def _round_trip(self, kind: str, payload: Any, timeout: float) -> Any:
        seq, waiter = self._post(kind, payload)
        return self._wait(seq, waiter, timeout)

    def _post(
        self, kind: str, payload: Any, early: Callable[[Any], None] | None = None
    ) -> tuple[int, Waiter | None]:
        """Send a message that expects an answer (`early`: Waiter.early); the waiter is None when there is no
        session."""
        conn = self._request_stream()
        if conn is None or not conn.alive:
            return 0, None
        seq = next(self._seq)
        payload.seq = seq
        waiter = Waiter(early)
        self.waiters[seq] = waiter
        msg = self._make_message(**{"access" if kind == "value" else kind: payload})
        with self.lock:  # behind what the device sent before now under it (the audio link's DMA data, say)
            conn.send(msg)
        return seq, waiter

    def _wait(self, seq: int, waiter: Waiter | None, timeout: float) -> Any:
        if waiter is None:
            return None
        if not waiter.wait(timeout):
            if self.waiters.pop(seq, None) is not None or waiter.early is None:
                return None
            waiter.wait(None)  # the answer came as the wait ran out and its early reply is on its way: take it
        return waiter.value

    def _reply(self, kind: str, body: Any) -> None:
        """A `value` or `barrier_ack` arrived (receiving thread): release whoever waits for it."""
        waiter = self.waiters.pop(body.seq, None)
        if waiter is not None:
            value = body.value if kind == "value" else body
            if waiter.early is not None:
                try:
                    waiter.early(value)
                except Exception:  # the receiving thread must go on; the waiting thread answers instead
                    self.log.exception("early reply failed")
            waiter.set(value)

    def _fail_waiters(self) -> None:
        """The request stream is gone: every waiting reader sees a failed access (its value stays None)."""
        for seq in list(self.waiters):
            waiter = self.waiters.pop(seq, None)
            if waiter is not None:
                waiter.set()
