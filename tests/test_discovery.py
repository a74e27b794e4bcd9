"""Discovery over real multicast DNS: the node's services run in a network namespace of their own, joined to this
one by a veth pair (nothing else carries the multicast); the shim's `discover` browses on that link only."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend_shim.attach import endpoints
from services.common import discovery
from tests.helpers import run_shim, start_service

NS = f"rdvd{os.getpid() % 100000}"
OUTER, INNER = f"rdvd{os.getpid() % 1000}a", f"rdvd{os.getpid() % 1000}b"
LOCAL, REMOTE = "198.18.77.1", "198.18.77.2"  # the benchmarking range: never routed anywhere


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def link() -> Iterator[list[str]]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        _run("ip", "netns", "add", NS)
        _run("ip", "link", "add", OUTER, "type", "veth", "peer", "name", INNER)
        _run("ip", "link", "set", INNER, "netns", NS)
        _run("ip", "addr", "add", f"{LOCAL}/30", "dev", OUTER)
        _run("ip", "link", "set", OUTER, "up", "multicast", "on")
        in_ns = ["ip", "netns", "exec", NS]
        _run(*in_ns, "ip", "addr", "add", f"{REMOTE}/30", "dev", INNER)
        _run(*in_ns, "ip", "link", "set", INNER, "up", "multicast", "on")
        _run(*in_ns, "ip", "link", "set", "lo", "up")
        _run(*in_ns, "ip", "route", "add", "224.0.0.0/4", "dev", INNER)
        yield in_ns
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        subprocess.run(["ip", "link", "del", OUTER], capture_output=True)


def _discover() -> list[dict]:
    res = run_shim("discover", "--json", "--seconds", "3", "--interface", LOCAL, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["services"]


def test_the_shim_finds_the_nodes_three_services_and_their_txt(link: list[str], tmp_path: Path) -> None:
    env = {"RDV_INSECURE": "1", "RDV_NODE_NAME": "livingroom"}  # plaintext: the pair lives in our namespace
    started = [
        start_service("audio", tmp_path, "--sink", "null", listen=f"{REMOTE}:0", env=env, prefix=link),
        start_service("display", tmp_path, "--presenter", "headless", listen=f"{REMOTE}:0", env=env, prefix=link),
        start_service("input", tmp_path, listen=f"{REMOTE}:0", env=env, prefix=link),
    ]
    try:
        found = _discover()
        # A VM config may name the node instead of an address: `audio = "node:livingroom"`.
        assert discovery.resolve("livingroom", "audio", 3, [LOCAL]) == started[0].address
        with pytest.raises(LookupError):
            discovery.resolve("kitchen", "audio", 1, [LOCAL])
    finally:
        for svc in started:
            svc.stop()
    by_device = {f["device"]: f for f in found if f["node"] == "livingroom"}
    assert sorted(by_device) == ["audio", "display", "input"], found
    for svc in started:
        f = by_device[svc.name]
        assert f["address"] == svc.address
        assert f["txt"] == {"node": "livingroom", "device": svc.name, "tls": "off", "api": "1", "pairing": "no"}


def test_no_advertise_announces_nothing(link: list[str], tmp_path: Path) -> None:
    env = {"RDV_INSECURE": "1", "RDV_NODE_NAME": "quiet"}
    svc = start_service("input", tmp_path, "--no-advertise", listen=f"{REMOTE}:0", env=env, prefix=link)
    try:
        found = _discover()
    finally:
        svc.stop()
    assert [f for f in found if f["node"] == "quiet"] == []


def test_a_vm_config_names_a_node_by_name() -> None:
    assert endpoints.check("node:livingroom") == "node:livingroom"
    assert endpoints.resolve("127.0.0.1:50051", "audio") == "127.0.0.1:50051"  # an address stays as it is
    with pytest.raises(ValueError, match="node:NAME"):
        endpoints.check("node:")
