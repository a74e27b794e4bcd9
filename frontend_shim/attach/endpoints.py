"""Where a device's service is: the one place a configured endpoint becomes a gRPC target.

An endpoint is `HOST:PORT` (`[v6]:PORT` for IPv6 literals), or `node:NAME`: the node that announces itself
as NAME on the local network (mDNS/DNS-SD, `rdv-shim discover` lists them), looked up when the VM starts.
`check` validates what a config may contain; `resolve` turns it into a gRPC target.
"""

from __future__ import annotations

import re

from services.common import discovery

NODE_PREFIX = "node:"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
_NODE = re.compile(r"^[^\x00-\x1f]{1,63}$")
_DEVICE = {"es1370": "audio", "svga": "display"}  # the vfio-user device each service serves


class NodeNotFound(LookupError):
    pass


def check(value: str) -> str:
    """`value` if it is a usable endpoint, else ValueError saying why."""
    if value.startswith(NODE_PREFIX):
        if not _NODE.match(value[len(NODE_PREFIX) :]):
            raise ValueError(f"{value!r}: node:NAME takes the name `rdv-shim discover` shows (1-63 characters)")
        return value
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


def resolve(endpoint: str, device: str, seconds: float = 3.0) -> str:
    """The gRPC target for a configured endpoint of `device` (audio/display/input, or es1370/svga): itself, or
    the address the named node announces for that device (NodeNotFound when none answers)."""
    if not endpoint.startswith(NODE_PREFIX):
        return endpoint
    try:
        return discovery.resolve(endpoint[len(NODE_PREFIX) :], _DEVICE.get(device, device), seconds)
    except LookupError as exc:
        raise NodeNotFound(f"{exc}; check `rdv-shim discover` on this machine") from None
