"""Settings of a command: each one a flag with an optional environment default, parsed and checked in one table.

A service declares its settings as a list of `Setting`s; the bootstrap (services/common/server.py) adds the ones
every service shares. A value that does not parse is a usage error naming the flag or the environment variable
it came from, e.g. `rdv-audio: error: RDV_TARGET_LATENCY_MS='abc': not a number`, never a traceback. An empty
environment variable counts as unset (compose passes `${NAME:-}` through as empty).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Parse = Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    flag: str  # "--target-latency-ms"
    default: Any = None  # already parsed: what the setting is when neither flag nor variable gives it
    env: str | None = None  # "RDV_TARGET_LATENCY_MS"
    parse: Parse = str  # text -> value; raises ValueError with a message for the user
    help: str = ""
    metavar: str | None = None
    switch: bool = False  # a flag without a value (--insecure); its variable is parsed with `boolean`
    negatable: bool = False  # a switch that also has --no-...
    repeat: bool = False  # the flag may be given several times (the variable: comma-separated); a list
    hidden: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class _FromEnvironment:
    """Placeholder default: the raw text of an environment variable, parsed after the command line."""

    def __init__(self, env: str, raw: str, parse: Parse) -> None:
        self.env, self.raw, self.parse = env, raw, parse


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser that takes `Setting` tables and reports bad environment values as usage errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings_table: list[Setting] = []  # every Setting added, in order

    def add_settings(self, settings: Iterable[Setting]) -> None:
        for s in settings:
            self.settings_table.append(s)
            raw = os.environ.get(s.env, "") if s.env else ""
            parse = boolean if s.switch and s.parse is str else s.parse
            if s.repeat:  # the variable holds the values comma-separated
                parse = _each(parse)
            default = _FromEnvironment(s.env, raw, parse) if raw else s.default
            help_text = s.help
            if s.env and not s.hidden:
                help_text += f" (${s.env})" if help_text else f"${s.env}"
            kw: dict[str, Any] = {"dest": s.dest, "default": default}
            kw["help"] = argparse.SUPPRESS if s.hidden else help_text
            if s.switch:
                kw["action"] = argparse.BooleanOptionalAction if s.negatable else "store_true"
            else:
                kw["type"] = _for_flag(s.parse)
                options = getattr(parse, "options", None)
                kw["metavar"] = s.metavar or ("{" + ",".join(options) + "}" if options else None)
                if s.repeat:
                    kw["action"] = "append"
            self.add_argument(s.flag, **kw)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        for name, value in vars(ns).items():
            if isinstance(value, _FromEnvironment):
                try:
                    setattr(ns, name, value.parse(value.raw))
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    self.error(f"{value.env}={value.raw!r}: {exc}")
        return ns, rest


def _each(parse: Parse) -> Parse:
    def parsed(text: str) -> list[Any]:
        return [parse(item.strip()) for item in text.split(",") if item.strip()]

    return parsed


def _for_flag(parse: Parse) -> Parse:
    """argparse shows ArgumentTypeError's text as it is (its ValueError text would be a generic one)."""

    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            message = str(exc) if repr(text) in str(exc) else f"{text!r}: {exc}"
            raise argparse.ArgumentTypeError(message) from exc

    parsed.__name__ = getattr(parse, "__name__", "value")
    return parsed


# ---------------------------------------------------------------------------------------------- value parsers
def number(low: float | None = None, high: float | None = None, integer: bool = False) -> Parse:
    """A float (or an integer) within [low, high]."""

    def parse(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            raise ValueError(f"not {'an integer' if integer else 'a number'}") from None
        if not integer and not math.isfinite(value):
            raise ValueError("not a finite number")
        if low is not None and value < low:
            raise ValueError(f"{text} is below {low:g}")
        if high is not None and value > high:
            raise ValueError(f"{text} is above {high:g}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    return number(1, 65535, integer=True)(text)


def choice(*options: str) -> Parse:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"not one of {', '.join(options)}")
        return text

    parse.__name__ = "choice"
    parse.options = options  # type: ignore[attr-defined]
    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("not a yes/no value (1/0, true/false, yes/no, on/off)")


def auto_boolean(text: str) -> bool | None:
    """auto (None: decided at run time) or a yes/no value."""
    if text.lower() == "auto":
        return None
    try:
        return boolean(text)
    except ValueError:
        raise ValueError("not auto or a yes/no value (1/0, true/false, yes/no, on/off)") from None


def host_port(text: str) -> str:
    """HOST:PORT (an IPv6 host in brackets); port 0 picks a free one when listening."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("not HOST:PORT")
    return text


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_level(text: str) -> str:
    return choice(*LOG_LEVELS)(text.lower())


log_level.options = LOG_LEVELS  # type: ignore[attr-defined]
