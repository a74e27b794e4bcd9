"""A person with the real grpcurl can list, describe and call every service (reflection + health)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
SERVICES = {"audio": "rdv.audio.v1.AudioService", "display": "rdv.display.v1.DisplayService",
            "input": "rdv.input.v1.InputService"}  # fmt: skip


def grpcurl(*args: str) -> str:
    res = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_list_describe_call_health(services, name: str) -> None:
    svc = services(name, *(["--sink", "null"] if name == "audio" else []))
    listed = grpcurl(svc.address, "list").split()
    assert SERVICES[name] in listed
    assert "grpc.health.v1.Health" in listed
    described = grpcurl(svc.address, "describe", SERVICES[name])
    assert "rpc GetServiceInfo" in described
    info = json.loads(grpcurl("-d", "{}", svc.address, f"{SERVICES[name]}/GetServiceInfo"))
    assert info["service"] == name
    assert info["listen"] == svc.address
    health = json.loads(grpcurl("-d", "{}", svc.address, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
    named = json.loads(
        grpcurl("-d", json.dumps({"service": SERVICES[name]}), svc.address, "grpc.health.v1.Health/Check")
    )
    assert named["status"] == "SERVING"


def test_audio_debug_rpcs_from_grpcurl(services) -> None:
    svc = services("audio", "--sink", "null")
    described = grpcurl(svc.address, "describe", "rdv.audio.v1.DeviceState")
    assert "channels" in described
    sessions = json.loads(grpcurl("-d", "{}", svc.address, "rdv.audio.v1.AudioService/ListSessions"))
    assert sessions == {}  # proto3 JSON leaves the empty list out
    res = subprocess.run(
        [GRPCURL, "-plaintext", "-d", '{"session_id": "s9"}', svc.address, "rdv.audio.v1.AudioService/GetDeviceState"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode != 0 and "NotFound" in res.stderr
