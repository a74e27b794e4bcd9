"""Structured, quiet-by-default logging: one `key=value` line per event."""

from __future__ import annotations

import logging
import os
import sys

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in vars(record).items() if k not in _RESERVED and k != "message"]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup(level: str | None = None) -> None:
    """Configure the root logger once; `RDV_LOG_LEVEL` (default warning) sets the level."""
    level = (level or os.environ.get("RDV_LOG_LEVEL") or "warning").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"rdv.{name}")


class Bursts:
    """One warning per burst of a recurring event (an underrun every period while a host is starved, say): the
    first event logs, events within `quiet` seconds of the previous one belong to the same burst and stay silent."""

    def __init__(self, log: logging.Logger, message: str, quiet: float = 1.0) -> None:
        self.log = log
        self.message = message
        self.quiet = quiet
        self.bursts = 0
        self._last: float | None = None

    def seen(self, now: float, **extra: object) -> None:
        if self._last is None or now - self._last > self.quiet:
            self.bursts += 1
            self.log.warning(self.message, extra=extra)
        self._last = now
