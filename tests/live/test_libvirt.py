"""Live: libvirt runs the VM, rdv's devices come from `rdv-shim vm --config` and its `--libvirt-xml`.

Debian 12's libvirt 9.0 (libvirt-daemon-system; its libvirtd and virtlogd are started here when none runs)
defines and starts a domain made of the generated XML plus what any domain has (kernel, console, a name),
with `<emulator>` pointing at the QEMU 10.2.2 build. libvirt gives QEMU the memfd guest RAM (`<memoryBacking>`
with `<access mode='shared'/>`) and passes rdv's `<qemu:commandline>` on; the guest's snd-ens1370 plays a WAV
and the audio service's ALSA `file:` output holds its PCM byte for byte.

QEMU runs as root for this test domain (a static DAC `<seclabel>`): the kernel, initrd and sockets live under
/root and pytest's temporary folder, which Debian's libvirt-qemu user cannot reach.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from frontend_shim.guests.pcm import melody, write_wav
from services.devices.es1370 import PcmFormat
from tests.helpers import ROOT
from tests.live.guest import RUN_SH, build_initrd, played_as_the_card_took, start_audio, wait_sessions_closed

pytestmark = [
    pytest.mark.live,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        shutil.which("virsh") is None or shutil.which("libvirtd") is None,
        reason="libvirt is not installed (make setup installs libvirt-daemon-system)",
    ),  # fmt: skip
]
FMT = PcmFormat(44100, 2, 16)
URI = "qemu:///system"
DOMAIN = f"rdv-live-{os.getpid()}"


def virsh(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} failed: {res.stderr}")
    return res


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The system libvirtd; started here (with virtlogd) when none answers, and stopped afterwards."""
    if virsh("version", check=False, timeout=30).returncode == 0:
        yield
        return
    logs = tmp_path_factory.mktemp("libvirtd")
    daemons = [
        subprocess.Popen([name], stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
        for name in ("virtlogd", "libvirtd")
    ]
    try:
        deadline = time.monotonic() + 60
        while virsh("version", check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                pytest.fail("libvirtd did not start:\n" + (logs / "libvirtd.log").read_text())
            time.sleep(0.2)
        yield
    finally:
        for d in reversed(daemons):
            d.terminate()
            try:
                d.wait(30)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait(10)


def test_libvirt_domain_from_libvirt_xml_plays_audio_byte_exact(
    libvirtd: None, qemu: str, guest_dir: Path, tmp_path: Path
) -> None:
    pcm = melody(FMT, 1.0)
    write_wav(str(tmp_path / "tone.wav"), FMT, pcm)
    (tmp_path / "run.sh").write_text(RUN_SH)
    initrd = build_initrd(guest_dir, tmp_path, [tmp_path / "run.sh", tmp_path / "tone.wav"])
    out, console = tmp_path / "out.raw", tmp_path / "console.log"
    cfg_path = tmp_path / "vm.toml"
    cfg_path.write_text(
        f'name = "{DOMAIN}"\nmode = "mirrored"\ninsecure = true\nruntime_dir = "{tmp_path}/run"\n'
        '[qemu]\nmemory = "512M"\n[audio]\nendpoint = "127.0.0.1:50051"\n'
    )
    xml = subprocess.run(
        [sys.executable, "-m", "frontend_shim", "vm", "--config", str(cfg_path), "--libvirt-xml"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    (tmp_path / "rdv.xml").write_text(xml)
    validated = subprocess.run(["virt-xml-validate", str(tmp_path / "rdv.xml"), "domain"], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    assert validated.returncode == 0, validated.stderr

    dom = ET.fromstring(xml)  # rdv's part as generated; what follows is what every domain has
    dom.set("type", "qemu")  # TCG: the live tests' guest runs the same everywhere
    os_ = dom.find("os")
    for tag, text in (("kernel", str(guest_dir / "vmlinuz")), ("initrd", str(initrd)),
                      ("cmdline", "console=ttyS0 quiet panic=-1")):  # fmt: skip
        ET.SubElement(os_, tag).text = text
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    devices = dom.find("devices")
    ET.SubElement(devices, "emulator").text = qemu
    serial = ET.SubElement(devices, "serial", {"type": "file"})
    ET.SubElement(serial, "source", {"path": str(console)})
    ET.SubElement(devices, "memballoon", {"model": "none"})
    label = ET.SubElement(dom, "seclabel", {"type": "static", "model": "dac", "relabel": "no"})
    ET.SubElement(label, "label").text = "+0:+0"
    (tmp_path / "domain.xml").write_text(ET.tostring(dom, encoding="unicode"))

    audio = start_audio(tmp_path, out)  # started last: nothing above leaves it running when it fails
    shim = subprocess.Popen(
        [sys.executable, "-m", "frontend_shim", "--log-level", "info", "vm", "--config", str(cfg_path), "--json",
         "--no-status", "--audio", audio.address, "--dma-log", str(tmp_path / "dma.log")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=(tmp_path / "shim.log").open("w"), text=True,
    )  # fmt: skip
    defined = False
    try:
        sock = tmp_path / "run" / "es1370.sock"
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert shim.poll() is None and time.monotonic() < deadline, (tmp_path / "shim.log").read_text()
            time.sleep(0.05)
        virsh("define", str(tmp_path / "domain.xml"))
        defined = True
        argv = virsh("domxml-to-native", "qemu-argv", str(tmp_path / "domain.xml")).stdout
        assert "memory-backend-memfd" in argv and '"share":true' in argv and "vfio-user-pci" in argv, argv
        started = time.monotonic()
        virsh("start", DOMAIN)
        deadline = started + 300
        while "RDV-DONE" not in (console.read_text(errors="replace") if console.exists() else ""):
            assert time.monotonic() < deadline, console.read_text(errors="replace") if console.exists() else ""
            time.sleep(0.2)
        while virsh("domstate", DOMAIN).stdout.strip() != "shut off":
            assert time.monotonic() < deadline + 60
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        if defined:
            virsh("destroy", DOMAIN, check=False)
            virsh("undefine", DOMAIN, check=False)
        if shim.poll() is None:
            shim.send_signal(signal.SIGTERM)
        stdout, _ = shim.communicate(timeout=60)
        try:
            wait_sessions_closed(audio.address)
        finally:
            audio.stop()
    text = console.read_text(errors="replace").replace("\r", "")
    assert "snd_ens1370 bound to 0000:" in text and "RDV-APLAY rc=0" in text and "RDV-DONE rc=0" in text, text
    played = out.read_bytes()
    summary = json.loads(stdout.strip().splitlines()[-1])["es1370"]
    if played_as_the_card_took(played, tmp_path / "dma.log", text, summary["link"], backend=False, name="libvirt"):
        assert played[: len(pcm)] == pcm, "the PCM the guest played under libvirt differs from the WAV"
    assert summary["memory"]["fd_maps"] > 0 and summary["memory"]["message_reads"] == 0  # libvirt's shared memfd
    assert not summary["errors"] and shim.returncode == 0
    assert not (tmp_path / "run" / "es1370.sock").exists()
    print(f"\n[live] libvirt: {json.dumps({'start_to_poweroff_s': round(seconds, 1), 'pcm_bytes': len(pcm)})}")
