"""The QEMU arguments that belong to rdv for one VM, and the user arguments that would fight them.

rdv adds: guest RAM as a shared memfd (the shim maps it for DMA) with `-m` of the same size, and one
`vfio-user-pci` per attached PCI device, `-vga none` when rdv's SVGA is the display, and for input its own QMP
socket plus a USB tablet for absolute pointing.
"""

from __future__ import annotations

import json
import re
import shlex

from frontend_shim.attach.config import VmConfig

RAM_ID = "rdv-ram"
USB_ID = "rdv-usb"
DEVICE_IDS = {"audio": "rdv-audio", "display": "rdv-display"}
# -device drivers that are a primary VGA of their own: with rdv's SVGA they would be a second display card.
_VGA_DRIVERS = frozenset(
    ("VGA", "cirrus-vga", "vmware-svga", "qxl-vga", "virtio-vga", "virtio-vga-gl", "ati-vga", "bochs-display")
)


def size_arg(size: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    raise ValueError(f"{size} is not a whole number of MiB")


def vfio_user_device(device: str, socket_path: str) -> str:
    return json.dumps(
        {"driver": "vfio-user-pci", "id": DEVICE_IDS[device], "socket": {"type": "unix", "path": socket_path}},
        separators=(",", ":"),
    )


def rdv_args(cfg: VmConfig) -> list[str]:
    """rdv's part of the QEMU command line for `cfg`, one argv element per item."""
    args: list[str] = []
    if cfg.audio or cfg.display:  # vfio-user devices reach guest RAM through a memfd QEMU shares with them
        size = size_arg(cfg.memory)
        args += [
            "-m", size,
            "-object", f"memory-backend-memfd,id={RAM_ID},size={size},share=on",
            "-machine", f"memory-backend={RAM_ID}",
        ]  # fmt: skip
    if cfg.audio:
        args += ["-device", vfio_user_device("audio", cfg.audio.socket)]
    if cfg.display:
        args += ["-device", vfio_user_device("display", cfg.display.socket), "-vga", "none"]
    if cfg.input:
        args += [
            "-qmp", f"unix:{cfg.qmp},server=on,wait=off",
            "-device", f"usb-ehci,id={USB_ID}",
            "-device", f"usb-tablet,bus={USB_ID}.0",
        ]  # fmt: skip
    return args


def format_args(args: list[str], style: str) -> str:
    """`lines`: one argv element per line (for `mapfile -t`); `shell`: a fragment to paste into a command line,
    one option with its value per line."""
    if style == "lines":
        return "".join(f"{a}\n" for a in args)
    pairs: list[str] = []
    i = 0
    while i < len(args):
        if i + 1 < len(args) and not args[i + 1].startswith("-"):
            pairs.append(f"{args[i]} {shlex.quote(args[i + 1])}")
            i += 2
        else:
            pairs.append(args[i])
            i += 1
    return " \\\n".join(pairs) + "\n"


# ----------------------------------------------------------------------------------------------- conflicts
def _options(args: list[str]) -> list[tuple[str, str | None]]:
    """(option name without dashes, its value or None) for each option in a QEMU argument list. QEMU options
    take at most one value; a following argument that is not an option is its value."""
    out: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and len(a) > 1:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
            out.append((a.lstrip("-"), value))
            i += 2 if value is not None else 1
        else:
            i += 1
    return out


def _props(value: str) -> tuple[str | None, dict[str, str]]:
    """A QEMU option value: JSON (`{"driver": ...}`) or `first,key=value,...` -> (first/driver, properties)."""
    if value.lstrip().startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return None, {}
        if not isinstance(obj, dict):
            return None, {}
        flat = {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in obj.items()}
        return flat.get("driver") or flat.get("qom-type"), flat
    first: str | None = None
    props: dict[str, str] = {}
    for i, part in enumerate(re.split(r"(?<!,),(?!,)", value)):
        if "=" in part:
            k, _, v = part.partition("=")
            props[k] = v
        elif i == 0:
            first = part
    return first, props


def _mem_size(value: str) -> int | None:
    """-m's size in bytes (`2G`, `2048`, `size=2G,maxmem=...`), None when it has none."""
    first, props = _props(value)
    text = props.get("size", first)
    m = re.fullmatch(r"(\d+)([KMGT]?)[Bb]?", text or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)]


def conflicts(user_args: list[str], cfg: VmConfig) -> list[str]:
    """Why the user's QEMU arguments cannot run with rdv's, one sentence each (empty: they can)."""
    problems: list[str] = []
    for opt, value in _options(user_args):
        v = value or ""
        first, props = _props(v)
        if opt == "vga" and cfg.display and v != "none":
            problems.append(f"-vga {v}: rdv's SVGA is this VM's display (it adds -vga none); drop -vga {v}")
        elif opt == "device" and cfg.display and first in _VGA_DRIVERS:
            problems.append(f"-device {first}: rdv's SVGA is this VM's display; drop that display card")
        elif opt == "device" and first == "vfio-user-pci" and any(s in v for s in cfg.sockets()):
            problems.append(f"-device {v}: rdv adds its own vfio-user-pci devices; drop this one")
        elif opt in ("machine", "M") and "memory-backend" in props and (cfg.audio or cfg.display):
            problems.append(
                f"-{opt} {v}: rdv gives the guest its RAM as a shared memfd (memory-backend={RAM_ID}); "
                f"drop memory-backend={props['memory-backend']} and its -object"
            )
        elif opt == "m" and (cfg.audio or cfg.display):
            size = _mem_size(v)
            if size is not None and size != cfg.memory:
                problems.append(
                    f"-m {v}: the config's qemu.memory is {size_arg(cfg.memory)}; make them equal or drop -m"
                )
        elif opt == "mem-path" and (cfg.audio or cfg.display):
            problems.append(f"-mem-path {v}: guest RAM must be rdv's shared memfd; drop -mem-path")
        elif opt == "numa" and ("memdev" in props or "mem" in props) and (cfg.audio or cfg.display):
            problems.append(f"-numa {v}: NUMA memory nodes replace rdv's shared guest RAM; not supported with rdv")
        elif opt == "object" and props.get("id") == RAM_ID:
            problems.append(f"-object {v}: the id {RAM_ID} is rdv's")
        elif opt == "daemonize":
            problems.append("-daemonize: `rdv-shim run` must see QEMU exit; drop -daemonize")
        elif opt in ("qmp", "chardev", "monitor") and cfg.input and cfg.qmp in v:
            problems.append(f"-{opt} {v}: {cfg.qmp} is rdv's QMP socket (QEMU serves one client per socket)")
    return problems
