"""rdv[shim] installs without ALSA and SDL: no dependency of the shim's side needs them, and the shim's
commands run with alsaaudio, sdl2 and prometheus_client impossible to import (against real services)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from frontend_shim.guests.pcm import PcmFormat, melody, write_wav
from tests.helpers import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NODE_ONLY = {"pyalsaaudio", "pysdl2", "pysdl2-dll", "prometheus-client"}
BLOCKED = ("alsaaudio", "sdl2", "sdl2dll", "prometheus_client")


def names(texts: list[str]) -> set[str]:
    return {Requirement(t).name.lower() for t in texts}


def test_extras_split_the_two_sides() -> None:
    extras = PROJECT["optional-dependencies"]
    shim = names(PROJECT["dependencies"]) | names(extras["shim"])
    assert not shim & NODE_ONLY
    assert names(extras["node"]) >= NODE_ONLY
    assert "rdv[shim,node]" in extras["dev"]  # make setup installs everything the tests need


def run_without_node_packages(*argv: str) -> subprocess.CompletedProcess:
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in BLOCKED)  # import raises ImportError
    code = f"import sys; {block}; from frontend_shim.__main__ import main; sys.exit(main({list(argv)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_shim_commands_run_without_alsa_sdl_or_prometheus(services, tmp_path: Path) -> None:
    audio = services("audio", "--sink", "null", "--clock-scale", "4")
    display = services("display", "--presenter", "headless")
    fmt = PcmFormat(22050, 1, 16)
    write_wav(str(tmp_path / "in.wav"), fmt, melody(fmt, 0.3))
    played = run_without_node_packages("play", "--wav", str(tmp_path / "in.wav"), "--audio", audio.address,
                                       "--clock-scale", "4")  # fmt: skip
    assert played.returncode == 0, played.stderr
    drawn = run_without_node_packages("draw-demo", "--display", display.address, "--seconds", "0.3", "--json")
    assert drawn.returncode == 0, drawn.stderr
