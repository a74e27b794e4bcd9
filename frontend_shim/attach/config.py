"""One VM's rdv configuration: a TOML file (stdlib tomllib), validated strictly, with single values overridden
by environment variables and flags.

    name = "vm1"
    mode = "mirrored"
    tls_dir = "/etc/rdv/vm1"            # or: insecure = true (services on this machine only)
    [audio]
    endpoint = "tv.lan:50051"
    [display]
    endpoints = ["tv.lan:50052"]
    [input]
    endpoint = "tv.lan:50053"

A device table left out is a device not attached. Every key is in `SCHEMA` below; anything else, and any bad
value, is one `ConfigError` naming the key and the line (or the variable / flag it came from) before anything
starts. Precedence: flag > environment (`RDV_` + the key in capitals, dots as underscores, e.g.
`RDV_AUDIO_ENDPOINT`; `name` is `RDV_VM`) > file > default. See deploy/vm.example.toml.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from frontend_shim.attach import endpoints
from frontend_shim.links.audio import MODES
from frontend_shim.links.display import ENCODINGS
from frontend_shim.links.video_streams import VIDEO_MODES

LOG_LEVELS = ("debug", "info", "warning", "error")
DEVICES = ("audio", "display", "input")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # no unit: MiB, as QEMU's -m


class ConfigError(Exception):
    """A bad configuration: `str()` is the whole message for the user (where, which key, what is wrong)."""


# ----------------------------------------------------------------------------------------------- value checks
def _str(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _name(value: object) -> str:
    text = _str(value)
    if not _NAME.match(text):
        raise ValueError(f"{text!r} is not a VM name (letters, digits, '.', '_', '-'; at most 64)")
    return text


def _choice(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return check


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ValueError(f"{value!r} is not true or false")


def _path(value: object) -> str:
    text = _str(value)
    if "\0" in text:
        raise ValueError("contains a NUL byte")
    return os.path.expanduser(text)


def _socket_path(value: object) -> str:
    text = _path(value)
    if len(os.fsencode(text)) > 107:  # sun_path holds 108 bytes with the terminating NUL
        raise ValueError(f"{text!r} is too long for a UNIX socket path (at most 107 bytes)")
    return text


def _endpoint(value: object) -> str:
    return endpoints.check(_str(value))


def _endpoints(value: object) -> list[str]:
    if isinstance(value, str):  # from the environment or a flag: comma-separated
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of HOST:PORT")
    return [_endpoint(v) for v in value]


def _positive(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not number > 0:
        raise ValueError(f"{value!r} must be positive")
    return number


def _quality(value: object) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValueError(f"{value!r} is not a whole number from 1 to 100")
    return value


def _size(value: object) -> int:
    """Guest RAM in bytes, from "2G", "512M", "512MiB" or an integer (MiB, as QEMU's -m)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        value = str(value)
    m = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not a size like 2G or 512M")
    size = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if size < 16 << 20 or size % (1 << 20):
        raise ValueError(f"{value!r}: guest RAM must be a whole number of MiB, at least 16M")
    return size


@dataclass(frozen=True)
class Key:
    check: Callable[[object], Any]
    default: object = None  # None: no default (optional unless required)
    required: bool = False


SCHEMA: dict[str, Key] = {
    "name": Key(_name, required=True),
    "mode": Key(_choice(*sorted(MODES)), "mirrored"),
    "log_level": Key(_choice(*LOG_LEVELS), "warning"),
    "runtime_dir": Key(_path),  # default /run/rdv/NAME
    "tls_dir": Key(_path),
    "insecure": Key(_bool, False),
    "qemu.memory": Key(_size, "1G"),
    "qemu.qmp": Key(_socket_path),  # default RUNTIME_DIR/qmp.sock
    "qemu.binary": Key(_str, "qemu-system-x86_64"),
    "audio.endpoint": Key(_endpoint, required=True),
    "audio.socket": Key(_socket_path),  # default RUNTIME_DIR/es1370.sock
    "display.endpoints": Key(_endpoints, required=True),
    "display.encoding": Key(_choice(*ENCODINGS), "auto"),
    "display.tile_diff": Key(_bool, False),
    "display.video": Key(_choice(*VIDEO_MODES), "auto"),
    "display.video_max_mbps": Key(_positive, 20),
    "display.video_quality": Key(_quality, 75),
    "display.socket": Key(_socket_path),  # default RUNTIME_DIR/svga.sock
    "input.endpoint": Key(_endpoint, required=True),
    "input.qmp_device": Key(_str),
}
TABLES = ("qemu", *DEVICES)


def env_name(key: str) -> str:
    return "RDV_VM" if key == "name" else "RDV_" + key.upper().replace(".", "_")


# ----------------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class AudioConfig:
    endpoint: str
    socket: str


@dataclass(frozen=True)
class DisplayConfig:
    endpoints: tuple[str, ...]
    encoding: str
    tile_diff: bool
    socket: str
    video: str = "auto"
    video_max_mbps: float = 20.0
    video_quality: int = 75


@dataclass(frozen=True)
class InputConfig:
    endpoint: str
    qmp_device: str | None


@dataclass(frozen=True)
class VmConfig:
    name: str
    mode: str
    log_level: str
    runtime_dir: str
    tls_dir: str | None
    insecure: bool
    memory: int  # bytes
    qmp: str
    qemu_binary: str
    audio: AudioConfig | None = None
    display: DisplayConfig | None = None
    input: InputConfig | None = None
    source: str = ""  # the file it came from
    origins: dict[str, str] = field(default_factory=dict, compare=False)  # key -> where its value came from

    @property
    def devices(self) -> list[str]:
        return [d for d in DEVICES if getattr(self, d) is not None]

    def endpoint_list(self) -> list[tuple[str, str, str]]:
        """(config key, device, endpoint) for every remote service this VM uses."""
        out: list[tuple[str, str, str]] = []
        if self.audio:
            out.append(("audio.endpoint", "audio", self.audio.endpoint))
        if self.display:
            out += [("display.endpoints", "display", e) for e in self.display.endpoints]
        if self.input:
            out.append(("input.endpoint", "input", self.input.endpoint))
        return out

    def sockets(self) -> list[str]:
        """Every socket this VM's rdv side listens on or QEMU opens for it."""
        paths = [c.socket for c in (self.audio, self.display) if c is not None]
        return paths + ([self.qmp] if self.input else [])


# ----------------------------------------------------------------------------------------------- loading
def load(
    path: str,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[object, str]] | None = None,
) -> VmConfig:
    """Read, override and validate; raises ConfigError. `overrides`: key -> (value, the flag that gave it)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
    values: dict[str, object] = {}
    origins: dict[str, str] = {}

    def where(key: str) -> str:
        line = lines.get(key) or lines.get(key.split(".")[0])
        return f"{path}:{line}" if line else path

    for top, value in data.items():
        if top in TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{where(top)}: {top}: must be a table ([{top}])")
            if not value and top in DEVICES:
                raise ConfigError(f"{where(top)}: [{top}] is empty: give its endpoint, or leave the table out")
            for sub, v in value.items():
                key = f"{top}.{sub}"
                if key not in SCHEMA:
                    raise ConfigError(f"{where(key)}: unknown key {key!r}{_suggest(key)}")
                values[key], origins[key] = v, where(key)
        elif top in SCHEMA:
            values[top], origins[top] = value, where(top)
        else:
            raise ConfigError(f"{where(top)}: unknown key {top!r}{_suggest(top)}")

    env = os.environ if env is None else env
    for key in SCHEMA:
        name = env_name(key)
        if env.get(name):
            values[key], origins[key] = env[name], f"${name}"
    for key, (value, flag) in (overrides or {}).items():
        if key not in SCHEMA:
            raise ConfigError(f"{flag}: unknown key {key!r}{_suggest(key)}")
        values[key], origins[key] = value, flag
    return _build(values, origins, path)


def _build(values: dict[str, object], origins: dict[str, str], path: str) -> VmConfig:
    checked: dict[str, Any] = {}
    for key, spec in SCHEMA.items():
        table = key.split(".")[0] if "." in key else None
        attached = table is None or table == "qemu" or any(k.startswith(f"{table}.") for k in values)
        if key in values:
            try:
                checked[key] = spec.check(values[key])
            except ValueError as exc:
                raise ConfigError(f"{origins[key]}: {key}: {exc}") from None
        elif spec.required and attached:
            where = origins.get(next((k for k in values if table and k.startswith(f"{table}.")), ""), path)
            raise ConfigError(f"{where}: {key}: missing (required{f' in [{table}]' if table else ''})")
        else:
            checked[key] = None if spec.default is None else spec.check(spec.default)
    name = checked["name"]
    runtime = checked["runtime_dir"] or f"/run/rdv/{name}"

    def sock(key: str, default: str) -> str:
        return checked[key] or _socket_path(os.path.join(runtime, default))

    try:
        audio = AudioConfig(checked["audio.endpoint"], sock("audio.socket", "es1370.sock")) if "audio.endpoint" in \
            values else None  # fmt: skip
        display = (
            DisplayConfig(
                tuple(checked["display.endpoints"]),
                checked["display.encoding"],
                checked["display.tile_diff"],
                sock("display.socket", "svga.sock"),
                checked["display.video"],
                checked["display.video_max_mbps"],
                checked["display.video_quality"],
            )
            if "display.endpoints" in values
            else None
        )
        inputs = InputConfig(checked["input.endpoint"], checked["input.qmp_device"]) if "input.endpoint" in \
            values else None  # fmt: skip
        qmp = sock("qemu.qmp", "qmp.sock")
    except ValueError as exc:
        raise ConfigError(f"{origins.get('runtime_dir', path)}: runtime_dir: {exc}") from None
    cfg = VmConfig(
        name=name,
        mode=checked["mode"],
        log_level=checked["log_level"],
        runtime_dir=runtime,
        tls_dir=checked["tls_dir"],
        insecure=checked["insecure"],
        memory=checked["qemu.memory"],
        qmp=qmp,
        qemu_binary=checked["qemu.binary"],
        audio=audio,
        display=display,
        input=inputs,
        source=path,
        origins=origins,
    )
    _check_whole(cfg, origins, path)
    return cfg


def _check_whole(cfg: VmConfig, origins: dict[str, str], path: str) -> None:
    """Rules between keys."""
    if not cfg.devices:
        raise ConfigError(f"{path}: no device attached: add an [audio], [display] or [input] table")
    if cfg.tls_dir and cfg.insecure:
        raise ConfigError(f"{origins['insecure']}: insecure: set either tls_dir or insecure = true, not both")
    if not cfg.tls_dir and not cfg.insecure:
        raise ConfigError(
            f"{path}: tls_dir: missing: give the folder from `python -m services.common.certs shim`, "
            "or insecure = true for services on this machine"
        )
    if cfg.insecure:
        for key, _device, target in cfg.endpoint_list():
            if not _loopback(endpoints.host(target)):
                raise ConfigError(
                    f"{origins.get(key, path)}: {key}: {target} is not on this machine: insecure = true is for "
                    "loopback services only; set tls_dir (mutual TLS) instead"
                )
    seen: dict[str, str] = {}
    for key, sock in (("audio.socket", cfg.audio and cfg.audio.socket), ("display.socket",
                      cfg.display and cfg.display.socket), ("qemu.qmp", cfg.input and cfg.qmp)):  # fmt: skip
        if not sock:
            continue
        if sock in seen:
            raise ConfigError(f"{origins.get(key, path)}: {key}: {sock} is also {seen[sock]}")
        seen[sock] = key


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, [*SCHEMA, *TABLES], n=1)
    known = ", ".join(k for k in SCHEMA if "." not in k) + "; tables " + ", ".join(f"[{t}]" for t in TABLES)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {known})"


_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> the line (1-based) it is set on, and table name -> its header line. tomllib does not say
    where a value was; the file already parsed, so a line scan of headers and `key =` is enough (a multi-line
    string's lines that look like keys could only add entries nobody asks for)."""
    lines: dict[str, int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := _TABLE_LINE.match(line):
            table = m.group(1)
            lines.setdefault(table, n)
        elif m := _KEY_LINE.match(line):
            key = ".".join(p.strip() for p in m.group(1).split("."))
            lines.setdefault(f"{table}.{key}" if table else key, n)
    return lines
