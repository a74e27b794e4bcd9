"""A person with the real grpcurl can list, describe and call every service (reflection + health)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_input_service import Subscription

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


def test_input_inject_from_grpcurl(services) -> None:
    svc = services("input")
    sub = Subscription(svc.address, "vm1")
    try:
        events = [{"key": {"qcode": "a", "pressed": True}}, {"key": {"qcode": "a"}},
                  {"pointer_move": {"x": 10, "y": 20, "width": 640, "height": 480}},
                  {"button": {"button": "BUTTON_RIGHT", "pressed": True}}, {"wheel": {"dy": -3}}]  # fmt: skip
        reply = json.loads(grpcurl("-d", json.dumps({"events": events}), svc.address,
                                   "rdv.input.v1.InputService/Inject"))  # fmt: skip
        assert reply == {"vm": "vm1", "delivered": 5}
        got = sub.get(5)
        assert [(e.WhichOneof("kind"), e.source) for e in got][:2] == [("key", "inject"), ("key", "inject")]
        assert (got[0].key.pressed, got[1].key.pressed, got[2].pointer_move.y, got[4].wheel.dy) == (True, False, 20, -3)
        focus = json.loads(grpcurl("-d", "{}", svc.address, "rdv.input.v1.InputService/GetFocus"))
        assert focus["focused"] == "vm1" and "rule" in focus
    finally:
        sub.close()
    res = subprocess.run(
        [GRPCURL, "-plaintext", "-d", '{"events": [{"key": {"qcode": "Enter"}}]}', svc.address,
         "rdv.input.v1.InputService/Inject"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode != 0 and "InvalidArgument" in res.stderr and "did you mean 'ret'" in res.stderr


def test_display_screenshot_from_grpcurl(services) -> None:
    """A person can fetch what a display service shows: the PNG arrives base64 in the JSON `png` field."""
    from services.common.png import decode
    from services.common.raster import Rect
    from tests.display_helpers import guest_rgb, start_guest

    svc = services("display", "--headless", "--viewport", "100,50,200,120")
    driver, link = start_guest([svc.address], "mirrored", "lz4")
    try:
        assert link.flush(10)
        reply = json.loads(grpcurl("-d", "{}", svc.address, "rdv.display.v1.DisplayService/Screenshot"))
        width, height, rgb = decode(base64.b64decode(reply["png"]))
        assert (width, height) == (reply["width"], reply["height"]) == (200, 120)
        assert rgb == guest_rgb(driver, Rect(100, 50, 200, 120))
        state = json.loads(grpcurl("-d", "{}", svc.address, "rdv.display.v1.DisplayService/GetDisplayState"))
        assert state["mode"]["width"] == driver.width and state["presenter"] == "headless"
        assert int(state["stats"]["frames_presented"]) >= 1, state
    finally:
        link.close()
