"""Finding rdv nodes on the home network: every service announces itself with mDNS/DNS-SD (the `zeroconf`
library) as `_rdv-<device>._tcp`, TXT `node`, `device`, `tls`, `api`, `pairing`; shims browse for them.

A service announces itself only when it listens beyond loopback (or `--advertise`), never with
`--no-advertise`. It announces the address it listens on, or every non-loopback IPv4 address of the host
for 0.0.0.0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import ifaddr
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from services.common import logs

API_VERSION = "1"
DEVICES = ("audio", "display", "input")
_log = logs.get("discovery")


def service_type(device: str) -> str:
    return f"_rdv-{device}._tcp.local."


def addresses(host: str) -> list[str]:
    """`host`, or every non-loopback address of this machine for a wildcard listen address."""
    if host not in ("", "0.0.0.0", "::"):
        return [host]
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                out.append(ip.ip)
    return out


class Advertiser:
    def __init__(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        self._zc = zc
        self._info = info

    async def close(self) -> None:
        try:
            await self._zc.async_unregister_service(self._info)
        finally:
            await self._zc.async_close()


async def advertise(
    device: str, listen: str, node: str = "", tls_on: bool = True, pairing: bool = False
) -> Advertiser | None:
    """Announce `device` served at `listen`; None (and a warning) when the network will not have it."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    node = node or socket.gethostname()
    announced = addresses(host)
    if not announced:
        _log.warning("nothing to advertise on: no network address", extra={"listen": listen})
        return None
    interfaces = announced if host not in ("", "0.0.0.0", "::") else None
    info = AsyncServiceInfo(
        service_type(device),
        f"{node} {device}.{service_type(device)}",
        addresses=[socket.inet_aton(a) if ":" not in a else socket.inet_pton(socket.AF_INET6, a) for a in announced],
        port=int(port),
        properties={
            "node": node,
            "device": device,
            "tls": "on" if tls_on else "off",
            "api": API_VERSION,
            "pairing": "yes" if pairing else "no",
        },
        server=f"{node.replace(' ', '-')}.local.",
    )
    zc = AsyncZeroconf(interfaces=interfaces or _all_interfaces(), ip_version=IPVersion.V4Only)
    try:
        await zc.async_register_service(info, allow_name_change=True)
    except Exception as exc:  # no multicast route, a name clash nobody resolves: discovery is a convenience
        await zc.async_close()
        _log.warning("cannot advertise", extra={"device": device, "error": str(exc)})
        return None
    _log.info("advertised", extra={"device": device, "node": node, "addresses": ",".join(announced), "port": port})
    return Advertiser(zc, info)


def _all_interfaces() -> list[str]:
    return [a for a in addresses("0.0.0.0") if ":" not in a]


@dataclass
class Found:
    node: str
    device: str
    address: str  # HOST:PORT
    tls: bool
    api: str
    pairing: bool
    txt: dict[str, str] = field(default_factory=dict)


async def browse(seconds: float = 3.0, interfaces: list[str] | None = None) -> list[Found]:
    """Every rdv service that answers within `seconds`, sorted by node and device."""
    zc = AsyncZeroconf(interfaces=interfaces or _all_interfaces(), ip_version=IPVersion.V4Only)
    names: set[tuple[str, str]] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is not ServiceStateChange.Removed:
            names.add((service_type, name))

    browser = AsyncServiceBrowser(zc.zeroconf, [service_type(d) for d in DEVICES], handlers=[on_change])
    found: dict[str, Found] = {}
    try:
        await asyncio.sleep(seconds)
        for stype, name in sorted(names):
            info = AsyncServiceInfo(stype, name)
            if not await info.async_request(zc.zeroconf, 1500):
                continue
            txt = {k.decode(): (v or b"").decode(errors="replace") for k, v in info.properties.items()}
            at = info.parsed_addresses(IPVersion.V4Only)
            if not at or info.port is None:
                continue
            found[name] = Found(
                node=txt.get("node", ""),
                device=txt.get("device", ""),
                address=f"{at[0]}:{info.port}",
                tls=txt.get("tls") == "on",
                api=txt.get("api", ""),
                pairing=txt.get("pairing") == "yes",
                txt=txt,
            )
    finally:
        await browser.async_cancel()
        await zc.async_close()
    return sorted(found.values(), key=lambda f: (f.node, f.device))


def resolve(node: str, device: str, seconds: float = 3.0, interfaces: list[str] | None = None) -> str:
    """HOST:PORT of `device` on the node named `node` (a VM config may name a node instead of an address);
    LookupError when no such node answers."""
    for f in asyncio.run(browse(seconds, interfaces)):
        if f.node == node and f.device == device:
            return f.address
    raise LookupError(f"no rdv node named {node!r} with a {device} service answered on the local network")
