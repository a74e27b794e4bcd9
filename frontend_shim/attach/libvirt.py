"""The libvirt domain XML for one VM's rdv devices.

A complete, minimal `<domain>` that holds only what rdv needs, to merge into the VM's own domain (`virsh edit`):
guest RAM in a shared memfd (libvirt then gives QEMU `memory-backend-memfd,share=on`), no emulated display
card when rdv's SVGA is attached, a USB tablet, and in `<qemu:commandline>` the `vfio-user-pci` devices and a
QMP socket of rdv's own: libvirtd owns the VM's monitor and QEMU serves one client per QMP socket.

libvirt starts QEMU as its own user (libvirt-qemu on Debian): that user must be able to open the sockets in
`runtime_dir` (see the README).
"""

from __future__ import annotations

import re
from xml.etree import ElementTree as ET

from frontend_shim.attach.config import VmConfig
from frontend_shim.attach.qemu_args import vfio_user_device

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def commandline_args(cfg: VmConfig) -> list[str]:
    """What goes into <qemu:commandline>: what libvirt has no element for."""
    args: list[str] = []
    if cfg.audio:
        args += ["-device", vfio_user_device("audio", cfg.audio.socket)]
    if cfg.display:
        args += ["-device", vfio_user_device("display", cfg.display.socket)]
    if cfg.input:
        args += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    return args


def domain_xml(cfg: VmConfig) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    dom = ET.Element("domain", {"type": "kvm"})
    ET.SubElement(dom, "name").text = cfg.name
    ET.SubElement(dom, "memory", {"unit": "MiB"}).text = str(cfg.memory >> 20)
    backing = ET.SubElement(dom, "memoryBacking")
    ET.SubElement(backing, "source", {"type": "memfd"})
    ET.SubElement(backing, "access", {"mode": "shared"})
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")  # without it libvirt 9 passes -no-acpi, gone in QEMU 10
    devices = ET.SubElement(dom, "devices")
    if cfg.input:
        ET.SubElement(devices, "input", {"type": "tablet", "bus": "usb"})
    if cfg.display:
        video = ET.SubElement(devices, "video")
        ET.SubElement(video, "model", {"type": "none"})
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    for arg in commandline_args(cfg):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})
    ET.indent(dom)
    head = (
        f"<!-- rdv for VM {cfg.name} ({', '.join(cfg.devices)}), from {cfg.source}: merge into the VM's domain "
        "(virsh edit); keep the xmlns:qemu namespace on <domain>. -->\n"
    )
    return head + _single_quoted(ET.tostring(dom, encoding="unicode")) + "\n"


def _single_quoted(xml: str) -> str:
    """JSON arguments read better in single-quoted attributes than with every quote escaped."""
    return re.sub(
        r'value="([^"]*&quot;[^"]*)"',
        lambda m: "value='" + m.group(1).replace("&quot;", '"') + "'" if "'" not in m.group(1) else m.group(0),
        xml,
    )
