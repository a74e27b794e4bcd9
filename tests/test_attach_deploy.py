"""What rdv ships for QEMU and libvirt users beside the commands: the systemd unit (checked by
`systemd-analyze verify`) and the libvirt domain XML (checked against libvirt's own schema by
`virt-xml-validate`; tests/live/test_libvirt.py defines and starts it in a real libvirtd)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.helpers import ROOT

UNIT = ROOT / "deploy" / "systemd" / "rdv-vm@.service"
EXAMPLE = ROOT / "deploy" / "vm.example.toml"
Q = "{http://libvirt.org/schemas/domain/qemu/1.0}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """An instance of the template, with ExecStart pointing at this checkout's rdv-shim (verify checks that the
    program exists): no error and no warning. A typo in the unit would be reported as a warning."""
    shim = Path(sys.executable).parent / "rdv-shim"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/rdv-shim vm --config /etc/rdv/%i.toml" in text
    assert "RuntimeDirectory=rdv/%i" in text  # /run/rdv/NAME: the config's default runtime_dir
    unit = tmp_path / "rdv-vm@vm1.service"
    unit.write_text(text.replace("/usr/local/bin/rdv-shim", str(shim)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and str(unit.name) not in res.stderr + res.stdout, res.stderr
    broken = tmp_path / "rdv-vm@vm2.service"
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    res = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=120)
    assert f"{broken.name}:" in res.stderr and "restart" in res.stderr  # the check above would see a mistake


def libvirt_xml(config: Path) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "frontend_shim", "vm", "--config", str(config), "--libvirt-xml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_libvirt_xml_holds_rdvs_part_of_the_domain() -> None:
    dom = ET.fromstring(libvirt_xml(EXAMPLE))
    assert dom.tag == "domain" and dom.findtext("name") == "vm1" and dom.find("memory").text == "2048"
    backing = dom.find("memoryBacking")
    assert backing.find("source").get("type") == "memfd" and backing.find("access").get("mode") == "shared"
    assert dom.find("devices/video/model").get("type") == "none"  # rdv's SVGA is the display
    assert dom.find("devices/input").attrib == {"type": "tablet", "bus": "usb"}
    args = [a.get("value") for a in dom.find(f"{Q}commandline").findall(f"{Q}arg")]
    assert args[0::2] == ["-device", "-device", "-qmp"]
    assert [json.loads(a)["socket"]["path"] for a in args[1:4:2]] == [
        "/run/rdv/vm1/es1370.sock",
        "/run/rdv/vm1/svga.sock",
    ]
    assert args[5] == "unix:/run/rdv/vm1/qmp.sock,server=on,wait=off"  # rdv's own QMP: libvirtd owns the monitor


def test_libvirt_xml_without_the_svga_keeps_the_domains_video() -> None:
    dom = ET.fromstring(libvirt_xml(ROOT / "tests" / "data" / "attach" / "audio_only.toml"))
    assert dom.find("devices/video") is None and dom.find("devices/input") is None
    args = [a.get("value") for a in dom.find(f"{Q}commandline").findall(f"{Q}arg")]
    assert len(args) == 2 and "vfio-user-pci" in args[1]


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="libvirt-clients is not installed")
@pytest.mark.parametrize("config", ["example", "audio_only", "two_screens", "input_only"])
def test_libvirt_xml_validates_against_libvirts_schema(tmp_path: Path, config: str) -> None:
    path = EXAMPLE if config == "example" else ROOT / "tests" / "data" / "attach" / f"{config}.toml"
    xml = tmp_path / "domain.xml"
    xml.write_text(libvirt_xml(path))
    res = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
