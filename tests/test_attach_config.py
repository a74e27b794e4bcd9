"""The VM config file: what it accepts, what it refuses (one clear error naming the key and the line, exit 2),
and the environment / flag overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from frontend_shim.attach import config as C
from tests.helpers import ROOT, run_shim

GOOD = """\
name = "vm1"
mode = "backend"
insecure = true
runtime_dir = "/tmp/rdv-test/vm1"

[qemu]
memory = "512M"

[audio]
endpoint = "127.0.0.1:50051"

[display]
endpoints = ["127.0.0.1:50052", "[::1]:50054"]
encoding = "lz4"

[input]
endpoint = "localhost:50053"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vm.toml"
    path.write_text(text)
    return str(path)


def test_a_good_config_is_read_whole(tmp_path: Path) -> None:
    cfg = C.load(write(tmp_path, GOOD), env={})
    assert (cfg.name, cfg.mode, cfg.insecure, cfg.tls_dir) == ("vm1", "backend", True, None)
    assert cfg.memory == 512 << 20
    assert cfg.audio == C.AudioConfig("127.0.0.1:50051", "/tmp/rdv-test/vm1/es1370.sock")
    assert cfg.display == C.DisplayConfig(
        ("127.0.0.1:50052", "[::1]:50054"), "lz4", False, "/tmp/rdv-test/vm1/svga.sock"
    )
    assert cfg.input == C.InputConfig("localhost:50053", None)
    assert cfg.qmp == "/tmp/rdv-test/vm1/qmp.sock"
    assert cfg.devices == ["audio", "display", "input"]


def test_a_left_out_device_is_not_attached(tmp_path: Path) -> None:
    text = GOOD.split("[audio]")[0] + '[input]\nendpoint = "127.0.0.1:50053"\n'
    cfg = C.load(write(tmp_path, text), env={})
    assert cfg.devices == ["input"] and cfg.audio is None and cfg.display is None


def test_the_shipped_example_is_valid() -> None:
    cfg = C.load(str(ROOT / "deploy" / "vm.example.toml"), env={})
    assert cfg.devices == ["audio", "display", "input"] and cfg.tls_dir == "/etc/rdv/vm1"


@pytest.mark.parametrize(
    ("change", "key", "line", "why"),
    [
        (("[display]", "[display]\nencodnig = 'raw'"), "display.encodnig", 13, "did you mean 'display.encoding'"),
        (('mode = "backend"', 'mode = "fast"'), "mode", 2, "'fast' is not one of backend, mirrored"),
        (('encoding = "lz4"', "video_quality = 101"), "display.video_quality", 14, "from 1 to 100"),
        (('encoding = "lz4"', "video_max_mbps = 0"), "display.video_max_mbps", 14, "must be positive"),
        (('encoding = "lz4"', 'video = "mpeg2"'), "display.video", 14, "'mpeg2' is not one of auto, off"),
        (('memory = "512M"', 'memory = "lots"'), "qemu.memory", 7, "is not a size"),
        (('memory = "512M"', "memory = 8"), "qemu.memory", 7, "at least 16M"),
        (('endpoint = "127.0.0.1:50051"', 'endpoint = "127.0.0.1"'), "audio.endpoint", 10, "is not HOST:PORT"),
        (('endpoint = "127.0.0.1:50051"', 'endpoint = "127.0.0.1:70000"'), "audio.endpoint", 10, "1 to 65535"),
        (('endpoints = ["127.0.0.1:50052", "[::1]:50054"]', "endpoints = []"), "display.endpoints", 13, "non-empty"),
        (('name = "vm1"', 'name = "my vm"'), "name", 1, "is not a VM name"),
        (("insecure = true", "insecure = 'yes please'"), "insecure", 3, "is not true or false"),
        (("insecure = true", "insecure = true\ncolour = 'blue'"), "colour", 4, "unknown key 'colour'"),
        (('endpoint = "localhost:50053"', 'endpoint = "tv.lan:50053"'), "input.endpoint", 17, "loopback"),
        (("[qemu]", "qemu = 3\n[qemux]"), "qemu", 6, "must be a table"),
    ],
)
def test_each_bad_value_is_one_error_naming_key_and_line(
    tmp_path: Path, change: tuple[str, str], key: str, line: int, why: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(C.ConfigError) as err:
        C.load(path, env={})
    assert f"{path}:{line}: " in str(err.value) and key in str(err.value) and why in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (GOOD.replace("insecure = true\n", ""), "tls_dir: missing"),
        (GOOD.replace("insecure = true\n", "insecure = true\ntls_dir = '/x'\n"), "not both"),
        ('name = "vm1"\ninsecure = true\n', "no device attached"),
        (GOOD.replace('endpoint = "127.0.0.1:50051"', 'socket = "/tmp/a.sock"'), "audio.endpoint: missing"),
        (GOOD.replace('endpoint = "127.0.0.1:50051"', ""), "[audio] is empty"),
        (GOOD.replace("[input]", "[input]\nendpoint = 'x:1'"), "not valid TOML"),
        (GOOD.replace('name = "vm1"\n', ""), "name: missing"),
        (GOOD.replace('runtime_dir = "/tmp/rdv-test/vm1"', f'runtime_dir = "/{"d" * 110}"'), "too long"),
        (GOOD + 'socket = "/tmp/rdv-test/vm1/es1370.sock"\n', "input.socket"),
    ],
)
def test_whole_file_rules(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(C.ConfigError, match=None) as err:
        C.load(write(tmp_path, text), env={})
    assert why in str(err.value), str(err.value)


def test_two_devices_on_one_socket_are_refused(tmp_path: Path) -> None:
    text = GOOD.replace('encoding = "lz4"', 'encoding = "lz4"\nsocket = "/tmp/rdv-test/vm1/es1370.sock"')
    with pytest.raises(C.ConfigError) as err:
        C.load(write(tmp_path, text), env={})
    assert "display.socket" in str(err.value) and "also audio.socket" in str(err.value)


def test_environment_then_flags_override_single_values(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {
        "RDV_MODE": "mirrored",
        "RDV_AUDIO_ENDPOINT": "127.0.0.1:6000",
        "RDV_DISPLAY_ENDPOINTS": "127.0.0.1:1,127.0.0.1:2",
    }
    cfg = C.load(path, env=env)
    assert cfg.mode == "mirrored" and cfg.audio.endpoint == "127.0.0.1:6000"
    assert cfg.display.endpoints == ("127.0.0.1:1", "127.0.0.1:2")
    cfg = C.load(path, env=env, overrides={"mode": ("backend", "--mode"), "qemu.memory": ("1G", "--set qemu.memory")})
    assert cfg.mode == "backend" and cfg.memory == 1 << 30
    with pytest.raises(C.ConfigError) as err:
        C.load(path, env={"RDV_MODE": "sideways"})
    assert str(err.value).startswith("$RDV_MODE: mode: 'sideways'")
    with pytest.raises(C.ConfigError) as err:
        C.load(path, env={}, overrides={"qemu.memroy": ("1G", "--set qemu.memroy")})
    assert "--set qemu.memroy: unknown key 'qemu.memroy'" in str(err.value)


# ----------------------------------------------------------------------------------------------- the CLI
def test_cli_unknown_key_exits_2_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[audio]", "[audio]\nvolume = 11"))
    for command in (["vm", "--config", path, "--print-qemu-args"], ["vm", "--config", path],
                    ["run", "--config", path, "--", "qemu-system-x86_64"], ["doctor", "--config", path]):  # fmt: skip
        res = run_shim(*command)
        assert res.returncode == 2, (command, res.stderr)
        assert "audio.volume" in res.stderr and f"{path}:10" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_cli_flag_errors_name_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    res = run_shim("vm", "--config", path, "--mode", "sideways", "--print-qemu-args")
    assert res.returncode == 2 and "--mode: mode: 'sideways'" in res.stderr
    res = run_shim("vm", "--config", path, "--set", "nonsense", "--print-qemu-args")
    assert res.returncode == 2 and "KEY=VALUE" in res.stderr
    res = run_shim("vm", "--config", str(tmp_path / "missing.toml"), "--print-qemu-args")
    assert res.returncode == 2 and "cannot read the config" in res.stderr and "Traceback" not in res.stderr
