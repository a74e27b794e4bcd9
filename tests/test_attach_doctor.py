"""`rdv-shim doctor`: each check against real services (mTLS, pairing) and real QEMU binaries, and the words it
says for each failure."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from services.common import certs
from tests.helpers import run_shim

QEMU_102 = Path.home() / ".cache" / "rdv" / "qemu-10.2.2" / "build" / "qemu-system-x86_64"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_ca(root / "ca")
    certs.issue(root / "ca", root / "node", "remote", ["localhost", "127.0.0.1"], ["*"])
    certs.issue(root / "ca", root / "vm1", "vm1", [], ["audio", "input"])  # not paired for the display
    return root


def write_config(tmp_path: Path, pki: Path, audio: str, display: str, qemu: str) -> Path:
    path = tmp_path / "vm1.toml"
    path.write_text(
        f'name = "vm1"\ntls_dir = "{pki / "vm1"}"\nruntime_dir = "{tmp_path / "run"}"\n[qemu]\nbinary = "{qemu}"\n'
        f'[audio]\nendpoint = "{audio}"\n[display]\nendpoints = ["{display}"]\n[input]\nendpoint = "127.0.0.1:9"\n'
    )
    return path


def lines(out: str) -> dict[str, str]:
    """check name -> its line and the advice under it."""
    result: dict[str, str] = {}
    name = ""
    for line in out.splitlines():
        if line.startswith(("ok ", "FAIL ")):
            name = line.split(None, 1)[1].split(": ", 1)[0]
            result[name] = line
        elif line.startswith("      -> ") and name:
            result[name] += "\n" + line
    return result


def test_doctor_reports_each_check_and_what_to_do(services, pki: Path, tmp_path: Path) -> None:
    node = str(pki / "node")
    audio = services("audio", "--sink", "null", "--tls-dir", node)
    display = services("display", "--presenter", "headless", "--tls-dir", node)
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    cfg = write_config(tmp_path, pki, audio.address, display.address, qemu)
    (tmp_path / "run").mkdir()
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # another process serves the SVGA's socket
    busy.bind(str(tmp_path / "run" / "svga.sock"))
    busy.listen(1)
    try:
        res = run_shim("doctor", "--config", str(cfg))
    finally:
        busy.close()
    assert res.returncode == 1, res.stdout + res.stderr
    got = lines(res.stdout)
    assert got["tls"].startswith("ok")
    assert got[f"audio {audio.address} health"].startswith("ok") and "SERVING" in got[f"audio {audio.address} health"]
    assert got[f"audio {audio.address} pairing"].startswith("ok")
    assert got[f"display {display.address} health"].startswith("ok")  # health needs only a valid certificate
    pairing = got[f"display {display.address} pairing"]
    assert pairing.startswith("FAIL") and "PERMISSION_DENIED" in pairing and "--devices display" in pairing
    down = got["input 127.0.0.1:9 health"]
    assert down.startswith("FAIL") and "UNAVAILABLE" in down and "python -m services.input" in down
    assert got["runtime_dir"].startswith("ok") and got["audio socket"].startswith("ok")
    assert got["display socket"].startswith("FAIL") and "something listens there" in got["display socket"]
    if shutil.which("qemu-system-x86_64"):  # Debian 12's QEMU 7.2 has no vfio-user-pci
        assert got["qemu"].startswith("FAIL") and "older than 10.1" in got["qemu"]
        assert "build_qemu_vfio_user.sh" in got["qemu"] and "qemu.binary" in got["qemu"]
    assert res.stdout.strip().endswith("failed") and "Traceback" not in res.stderr


def test_doctor_on_a_missing_tls_folder_and_qemu(pki: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, pki, "127.0.0.1:9", "127.0.0.1:9", str(tmp_path / "no-qemu"))
    res = run_shim("doctor", "--config", str(cfg), "--tls-dir", str(tmp_path / "nothing"))
    got = lines(res.stdout)
    assert res.returncode == 1
    assert got["qemu"].startswith("FAIL") and "not found" in got["qemu"]
    assert got["tls"].startswith("FAIL") and "certs" in got["tls"]
    assert not any(name.endswith("health") for name in got)  # no endpoint checks without usable certificates


@pytest.mark.skipif(not QEMU_102.exists(), reason="QEMU 10.2.2 is not built (tests/tools/build_qemu_vfio_user.sh)")
def test_doctor_accepts_a_qemu_with_vfio_user(pki: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, pki, "127.0.0.1:9", "127.0.0.1:9", str(QEMU_102))
    res = run_shim("doctor", "--config", str(cfg))
    qemu = lines(res.stdout)["qemu"]
    assert qemu.startswith("ok") and "QEMU 10.2.2 with vfio-user-pci" in qemu, res.stdout
