"""Every setting of every command: a bad value, from the command line or from its environment variable, is a
usage error naming it (exit 2, one `error:` line), never a traceback. And every command answers --version."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from services.audio.__main__ import build_parser as audio_parser
from services.common import settings
from services.common.settings import Setting, SettingsParser
from services.display.__main__ import build_parser as display_parser
from services.input.__main__ import build_parser as input_parser
from tests.helpers import ROOT

PARSERS = {"audio": audio_parser, "display": display_parser, "input": input_parser}
BIN = Path(sys.executable).parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def table(parser: SettingsParser) -> list[Setting]:
    return parser.settings_table


def checked(parser: SettingsParser) -> list[Setting]:
    """The settings whose text is parsed (a free-form string or a path has nothing to refuse)."""
    return [s for s in table(parser) if s.switch or s.parse is not str]


def usage_error(parser: SettingsParser, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("service", PARSERS)
def test_every_checked_variable_is_named_when_bad(service: str, monkeypatch, capsys) -> None:
    settings_with_env = [s for s in checked(PARSERS[service]()) if s.env]
    assert len(settings_with_env) >= 8  # the common ones and the service's own
    for s in settings_with_env:
        monkeypatch.setenv(s.env, "@bad@")
        err = usage_error(PARSERS[service](), [], capsys)
        monkeypatch.delenv(s.env)
        assert f"rdv-{service}: error: {s.env}='@bad@': " in err, (s.env, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("service", PARSERS)
def test_every_checked_flag_is_named_when_bad(service: str, capsys) -> None:
    for s in checked(PARSERS[service]()):
        if s.switch:
            continue  # a switch takes no value
        err = usage_error(PARSERS[service](), [s.flag, "@bad@"], capsys)
        assert f"error: argument {s.flag}: " in err and "@bad@" in err, (s.flag, err)


def test_values_parse_and_flags_win_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RDV_TARGET_LATENCY_MS", "80")
    monkeypatch.setenv("RDV_INSECURE", "yes")
    monkeypatch.setenv("RDV_METRICS_PORT", "")  # empty = unset
    args = audio_parser().parse_args(["--sink", "wav"])
    assert (args.target_latency_ms, args.insecure, args.metrics_port, args.sink) == (80.0, True, None, "wav")
    assert audio_parser().parse_args(["--target-latency-ms", "20"]).target_latency_ms == 20.0
    monkeypatch.setenv("RDV_EVDEV_GRAB", "1")
    assert input_parser().parse_args(["--no-evdev-grab"]).evdev_grab is False
    assert input_parser().parse_args([]).evdev_grab is True


def test_ranges_are_checked(capsys) -> None:
    assert "0 is below 1" in usage_error(audio_parser(), ["--max-sessions", "0"], capsys)
    assert "70000 is above 65535" in usage_error(input_parser(), ["--metrics-port", "70000"], capsys)
    assert "not a finite number" in usage_error(display_parser(), ["--refresh-hz", "nan"], capsys)
    assert settings.number(0, 1)("0.5") == 0.5 and settings.port("80") == 80
    assert settings.boolean("Off") is False and settings.host_port("[::1]:0") == "[::1]:0"


def test_a_bad_variable_stops_the_real_command_with_one_line() -> None:
    env = {**os.environ, "RDV_TARGET_LATENCY_MS": "abc"}
    res = subprocess.run([str(BIN / "rdv-audio")], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == "rdv-audio: error: RDV_TARGET_LATENCY_MS='abc': not a number"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["rdv-audio", "rdv-display", "rdv-input", "rdv-shim"])
def test_every_command_has_its_name_and_version(command: str) -> None:
    version = subprocess.run([str(BIN / command), "--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, f"{command} {VERSION}")
    usage = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert usage.stdout.startswith(f"usage: {command} ")


@pytest.mark.parametrize("module", ["services.common.certs", "services.common.healthcheck"])
def test_the_tools_have_a_version(module: str) -> None:
    res = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, f"python -m {module} {VERSION}")
