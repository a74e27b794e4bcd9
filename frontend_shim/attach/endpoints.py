"""Where a device's service is: the one place a configured endpoint becomes a gRPC target.

Today an endpoint is `HOST:PORT` (`[v6]:PORT` for IPv6 literals). When nodes can be named (pairing and
discovery), `resolve` is where a name becomes an address; `check` validates what a config may contain.
"""

from __future__ import annotations

import re

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


def check(value: str) -> str:
    """`value` if it is a usable endpoint, else ValueError saying why."""
    host_part, sep, port = value.rpartition(":")
    if not sep or not host_part:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    if not _HOST.match(host_part):
        raise ValueError(f"{value!r}: {host_part!r} is not a host name or address")
    return value


def host(endpoint: str) -> str:
    """The host of a checked endpoint, without IPv6 brackets."""
    return endpoint.rpartition(":")[0].strip("[]")


def resolve(endpoint: str) -> str:
    """The gRPC target for a configured endpoint (a node name will be looked up here)."""
    return endpoint
