"""Links for the benchmarks: loopback, and a veth pair into a network namespace shaped with `tc tbf`.

The remote services run inside a namespace we create ("the remote node"); the benchmark process stays in the
root namespace ("the local node") and reaches them over the veth pair. Addresses come from 198.18.0.0/15, the
range set aside for benchmarking; traffic never leaves the pair. Every namespace and link is removed on exit,
also on failure, and leftovers of a crashed run are removed before a new one starts.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_PREFIX = "rdvb"  # namespaces and interfaces of ours start with this (interface names max 15 chars)


@dataclass(frozen=True)
class Link:
    name: str  # "loopback", "100mbit", "1gbit"
    remote_host: str  # where the services listen
    rate_bps: float | None  # shaped rate, None = unshaped
    prefix: list[str] = field(default_factory=list)  # command prefix that runs a process on the remote node
    # Plaintext like the paper (no TLS in its figures); allowed on a non-loopback address only because the pair
    # lives in namespaces this run made and removes.
    env: dict[str, str] = field(default_factory=dict)

    def wire_ns_per_px(self, bytes_per_px: int = 4) -> float | None:
        """The physical limit of the paper's Table 3: time to carry one pixel's bytes at the link rate."""
        return None if self.rate_bps is None else bytes_per_px * 8 / self.rate_bps * 1e9


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def can_shape() -> str | None:
    """None when shaped links can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root, so only loopback is measured"
    if subprocess.run(["which", "tc"], capture_output=True).returncode != 0:
        return "tc (iproute2) is missing"
    return None


def remove_leftovers() -> None:
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(_PREFIX):
            _ip("netns", "del", ns, check=False)


@contextmanager
def loopback() -> Iterator[Link]:
    yield Link("loopback", "127.0.0.1", None)


@contextmanager
def shaped(name: str, rate: str, rate_bps: float, index: int) -> Iterator[Link]:
    """A veth pair shaped to `rate` in both directions (tbf on each end's egress)."""
    ns = f"{_PREFIX}{os.getpid() % 100000}n{index}"
    outer, inner = f"{_PREFIX}{index}a{os.getpid() % 1000}", f"{_PREFIX}{index}b{os.getpid() % 1000}"
    local, remote = f"198.18.{index}.1", f"198.18.{index}.2"
    in_ns = ["ip", "netns", "exec", ns]
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("addr", "add", f"{local}/30", "dev", outer)
        _ip("link", "set", outer, "up")
        for cmd in (
            ["addr", "add", f"{remote}/30", "dev", inner],
            ["link", "set", inner, "up"],
            ["link", "set", "lo", "up"],
        ):
            subprocess.run([*in_ns, "ip", *cmd], check=True, capture_output=True)
        # burst must hold at least one full-size TSO segment or tbf drops it; 64 KiB covers that.
        tbf = ["root", "tbf", "rate", rate, "burst", "64kb", "latency", "50ms"]
        subprocess.run(["tc", "qdisc", "add", "dev", outer, *tbf], check=True, capture_output=True)
        subprocess.run([*in_ns, "tc", "qdisc", "add", "dev", inner, *tbf], check=True, capture_output=True)
        yield Link(name, remote, rate_bps, in_ns, {"RDV_INSECURE": "1"})
    finally:
        _ip("netns", "del", ns, check=False)  # takes the veth pair with it
        _ip("link", "del", outer, check=False)


def all_links(quick: bool) -> list:
    """Context managers for the links to measure on this machine."""
    links = [loopback]
    if can_shape() is None:
        remove_leftovers()
        links.append(lambda: shaped("100mbit", "100mbit", 100e6, 1))
        links.append(lambda: shaped("1gbit", "1gbit", 1e9, 2))
    return links
