"""`make test-deploy`: the remote node exactly as deploy/README.md tells a user to run it, on a real Docker engine.

Every ```sh block of the README runs in order (the ```sh air-gapped block only where the pinned base cannot be
pulled), from a copy of the repository's files, with HOME in a temporary folder. The only changes: the default
ports become free ones and the published ports are bound to 127.0.0.1. Then, from the host: what the README's
commands produced is checked (grpcurl list and health over mTLS on all three services, the WAV the scripted
guest played byte for byte, the Screenshot equal to the guest's screen, the Inject reply), the one-line errors
of the entrypoint, and that `docker compose down` leaves nothing of the node behind.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from frontend_shim.guests.pcm import PcmFormat, melody, write_wav
from services.common.png import decode
from tests.helpers import ROOT

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(2400)]  # a first build on a busy machine

README = ROOT / "deploy" / "README.md"
DEFAULT_PORTS = {"50051": "audio", "50052": "display", "50053": "input"}
SONG = PcmFormat(44100, 2, 16)  # rate, channels, bits
BLOCK = re.compile(r"^```sh(?: ([\w-]+))?\n(.*?)^```$", re.S | re.M)
STEP_TIMEOUT = 1200.0  # a first build from scratch on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_blocks() -> list[tuple[str, str]]:
    """(tag, script) for each ```sh block, in order: tag "" runs always, "air-gapped" where the pinned base cannot
    be pulled, "x11" with an X screen."""
    return [(m.group(1) or "", m.group(2)) for m in BLOCK.finditer(README.read_text())]


@dataclass
class Node:
    deploy: Path  # the copy's deploy/ folder, where the README's commands run
    env: dict[str, str]
    ports: dict[str, int]  # service -> published host port
    project: str
    outputs: list[tuple[str, subprocess.CompletedProcess]] = field(default_factory=list)

    def sh(
        self, script: str, timeout: float = STEP_TIMEOUT, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        for default, service in DEFAULT_PORTS.items():
            script = re.sub(rf"\b{default}\b(?!/)", str(self.ports[service]), script)
        env = {**self.env, **(env or {})}
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.deploy, env=env,
                             capture_output=True, text=True, timeout=timeout)  # fmt: skip
        self.outputs.append((script, res))
        return res

    def compose(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "compose", *args], cwd=self.deploy, env=self.env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def leftovers(self) -> str:
        label = f"label=com.docker.compose.project={self.project}"
        found = [
            subprocess.run(
                ["docker", kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", label],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()  # fmt: skip
            for kind in ("container", "network")
        ]
        return " ".join(x for x in found if x)


def base_pullable() -> bool:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    base = re.search(r"^ARG RDV_BASE_IMAGE=(\S+)$", text, re.M).group(1)
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True, timeout=60).returncode == 0:
        return True
    return subprocess.run(["docker", "pull", "-q", base], capture_output=True, timeout=120).returncode == 0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers: run `make test-deploy` (it installs and starts one)")
    tmp = tmp_path_factory.mktemp("node")
    tree = tmp / "rdv"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    home = tmp / "home"
    home.mkdir()
    ports = {service: free_port() for service in DEFAULT_PORTS.values()}
    project = f"rdv-test-{os.getpid()}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RDV_", "COMPOSE_")) and k != "DISPLAY"}
    env = {
        **clean,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}",
        "DOCKER_CONFIG": str(Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker"))),  # the compose plugin
        "COMPOSE_PROJECT_NAME": project,
        "RDV_BIND": "127.0.0.1",
        **{f"RDV_{service.upper()}_PORT": str(port) for service, port in ports.items()},
    }
    n = Node(tree / "deploy", env, ports, project)
    write_wav(str(n.deploy / "song.wav"), SONG, melody(SONG, 1.5))
    yield n
    n.compose("down", "-v", "--remove-orphans", timeout=120)


def run_block(node: Node, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = node.sh(script, env=env)
    if res.returncode != 0:
        logs = node.compose("logs", "--no-color", "--tail", "40").stdout
        pytest.fail(f"README block failed ({res.returncode}):\n{script}\n--- stdout\n{res.stdout}\n"
                    f"--- stderr\n{res.stderr[-4000:]}\n--- compose logs\n{logs}")  # fmt: skip
    return res


def run_readme(node: Node) -> None:
    pullable = base_pullable()
    for tag, script in readme_blocks():
        if tag == "" or (tag == "air-gapped" and not pullable):
            run_block(node, script)


def output_of(node: Node, needle: str) -> subprocess.CompletedProcess:
    return next(res for script, res in node.outputs if needle in script)


def test_the_node_as_the_readme_says(node: Node) -> None:
    run_readme(node)
    assert not node.leftovers(), "docker compose down left containers or networks behind"

    # grpcurl over mTLS on all three services: the service list, and SERVING.
    checks = output_of(node, "grpc.health.v1.Health/Check").stdout
    for name in ("rdv.audio.v1.AudioService", "rdv.display.v1.DisplayService", "rdv.input.v1.InputService"):
        assert name in checks
    assert checks.count("grpc.health.v1.Health\n") == 3
    assert checks.count('"status": "SERVING"') == 3

    # The WAV the scripted guest played, recorded by the containerized audio service, byte for byte.
    played = sorted((node.deploy / "played").rglob("*.wav"))
    assert len(played) == 1, played
    with wave.open(str(node.deploy / "song.wav")) as w:
        song = w.readframes(w.getnframes())
    with wave.open(str(played[0])) as w:
        assert (w.getframerate(), w.getsampwidth() * 8, w.getnchannels()) == (SONG.rate, SONG.bits, SONG.channels)
        out = w.readframes(w.getnframes())
    assert out[: len(song)] == song
    assert out[len(song) :] == bytes(len(out) - len(song))  # only the silence the guest padded its last period with

    # The display's Screenshot is the guest's screen.
    shot = json.loads((node.deploy / "screenshot.json").read_text())
    width, height, rgb = decode(base64.b64decode(shot["png"]))
    guest = decode((node.deploy / "guest.png").read_bytes())
    assert (width, height) == guest[:2] == (1024, 768)
    assert rgb == guest[2]

    # Inject reached the input service and went to the subscribed VM: both key events, in order.
    injected = json.loads(output_of(node, "InputService/Inject").stdout)
    assert (injected.get("vm"), injected.get("delivered")) == ("vm1", 2), output_of(node, "InputService/Inject")
    events = [json.loads(e) for e in re.findall(r"^\{.*?^\}", (node.deploy / "events.json").read_text(), re.S | re.M)]
    assert [(e["key"]["qcode"], e["key"].get("pressed", False)) for e in events] == [("a", True), ("a", False)]


def test_unreadable_files_are_named_in_one_line(node: Node, tmp_path: Path) -> None:
    """The entrypoint names the file it cannot read; the service never starts half-configured."""
    empty = tmp_path / "no-tls"
    empty.mkdir()
    res = node.compose("run", "--rm", "--no-deps", "-e", "RDV_TLS_HOST_DIR=", "-v", f"{empty}:/etc/rdv/tls:ro",
                       "input", timeout=120)  # fmt: skip
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("rdv")]
    assert lines == ["rdv: cannot read /etc/rdv/tls/ca.pem (mounted from RDV_TLS_HOST_DIR; make it with "
                     "services.common.certs): No such file or directory"], res.stderr  # fmt: skip


@pytest.fixture
def x_screen(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An Xvfb screen with access control on, and the user's cookie for it (as a desktop session has)."""
    number = next(n for n in range(140, 400) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())  # fmt: skip
    display, cookie = f":{number}", tmp_path / "user-xauthority"
    subprocess.run(["xauth", "-f", str(cookie), "add", display, "MIT-MAGIC-COOKIE-1", secrets.token_hex(16)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    xvfb = subprocess.Popen(["Xvfb", display, "-auth", str(cookie), "-nolisten", "tcp", "-screen", "0", "1024x768x24"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert xvfb.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.1)
    yield display, cookie
    xvfb.terminate()
    xvfb.wait(10)


def x_windows(display: str, cookie: Path) -> list[str]:
    res = subprocess.run(["xwininfo", "-root", "-children", "-display", display], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "XAUTHORITY": str(cookie)})  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.startswith("     0x")]


def test_a_window_on_the_nodes_x_screen(node: Node, x_screen: tuple[str, Path]) -> None:
    """x11.yml with the README's cookie: the display service's window appears on the X screen. Without the
    cookie the X server refuses it, and the display service says so in one line."""
    display, cookie = x_screen
    [script] = [s for tag, s in readme_blocks() if tag == "x11"]
    env = {"DISPLAY": display, "XAUTHORITY": str(cookie)}
    try:
        run_block(node, script, env)
        draw = "python -m frontend_shim draw-demo --display localhost:50052 --tls-dir ~/.rdv/vm1 --seconds 1"
        run_block(node, draw)
        assert len(x_windows(display, cookie)) == 1  # the service's window, alone on this fresh screen

        refused = {**env, "COMPOSE_FILE": "docker-compose.yml:x11.yml", "XAUTHORITY": "/dev/null"}
        res = subprocess.run(["docker", "compose", "up", "-d", "--wait", "--force-recreate", "--no-deps", "display"],
                             cwd=node.deploy, env={**node.env, **refused}, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr
        logs = node.compose("logs", "--no-color", "display").stdout
        lines = [line for line in logs.splitlines() if "no window" in line]
        assert len(lines) == 1 and f"display={display}" in lines[0] and "uid=10001" in lines[0], logs
    finally:
        node.compose("down", timeout=120)


def test_alsa_has_the_pulse_device_and_its_plugin_loads(node: Node) -> None:
    """pulse.yml plays to ALSA's "pulse" device: ALSA reads its definition (opening it fails for want of a sound
    server here, not as an unknown device) and the plugin's libraries all resolve (without libasound2-plugins'
    codec dependencies)."""
    script = """
import alsaaudio, glob, subprocess
for name in ("pulse", "no-such-device"):
    try:
        alsaaudio.PCM(device=name)
        print("opened")
    except alsaaudio.ALSAAudioError as exc:
        print(exc)
for plugin in glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so"):
    print(subprocess.run(["ldd", plugin], capture_output=True, text=True).stdout)
"""
    res = node.compose("run", "--rm", "--no-deps", "--entrypoint", "python", "audio", "-c", script, timeout=120)
    assert res.returncode == 0, res.stderr
    pulse, unknown, *libraries = res.stdout.splitlines()
    assert "no-such-device" in unknown and pulse != unknown.replace("no-such-device", "pulse"), res.stdout
    assert any("libpulse.so" in line for line in libraries), res.stdout
    assert not any("not found" in line for line in libraries), res.stdout
