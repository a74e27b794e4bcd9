"""The command-line options several shim commands share, declared once: each command picks the ones it takes."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from frontend_shim.attach.config import ConfigError, VmConfig, load
from frontend_shim.links.base import MODES
from frontend_shim.links.video_streams import VIDEO_MODES, VideoSettings
from services.common import settings, tls
from services.common.settings import Setting

DEFAULT_AUDIO = "127.0.0.1:50051"
DEFAULT_DISPLAY = "127.0.0.1:50052"


def audio(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio",
        default=os.environ.get("RDV_AUDIO", DEFAULT_AUDIO),
        help=f"audio service HOST:PORT (default $RDV_AUDIO or {DEFAULT_AUDIO})",
    )


def display(p: argparse.ArgumentParser, what: str = "display service") -> None:
    p.add_argument(
        "--display",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help=f"{what} (repeat for several screens, each shows its own viewport; "
        f"default $RDV_DISPLAY or {DEFAULT_DISPLAY})",
    )


def displays(args: argparse.Namespace) -> list[str]:
    """The --display addresses given, else the one from $RDV_DISPLAY or the default."""
    return list(args.display) or [os.environ.get("RDV_DISPLAY", DEFAULT_DISPLAY)]


def mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=sorted(MODES), default="mirrored", help="coherence mode (default mirrored)")


def vm(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--vm", default=None,
                   help=f"the VM's name in the services' session lists (default: the VM the --tls-dir certificate is "
                        f"made for, else {default})")  # fmt: skip
    p.set_defaults(vm_default=default)


def vm_name(args: argparse.Namespace) -> str:
    """--vm, else the VM the certificate is made for (a VM's certificate opens that VM's sessions only), else the
    command's default."""
    return args.vm or tls.certificate_vm(args.tls_dir) or args.vm_default


def tls_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-dir", default=os.environ.get("RDV_TLS_DIR") or None, help="mTLS folder from `certs shim`")


GRPC_DIRECT = Setting(
    "--grpc-direct", True, "RDV_GRPC_DIRECT", switch=True, negatable=True,
    help="session streams send and receive without grpcio's helper threads (default; --no-grpc-direct: with them)",
)  # fmt: skip
LOG_LEVEL = Setting("--log-level", "warning", "RDV_LOG_LEVEL", settings.log_level, help="default warning")


def log_level(p: settings.SettingsParser, *, top: bool = True) -> None:
    """On the top-level parser (`--log-level` before the command) and on each command (after it)."""
    p.add_settings([LOG_LEVEL if top else replace(LOG_LEVEL, env=None, default=argparse.SUPPRESS)])


# flag -> config key; the other keys are reached with --set KEY=VALUE
_FLAGS = {
    "mode": "mode",
    "tls_dir": "tls_dir",
    "audio": "audio.endpoint",
    "display": "display.endpoints",
    "input": "input.endpoint",
}


def vm_config(p: argparse.ArgumentParser) -> None:
    """`vm`, `run`, `doctor`: the VM's config file and the flags that override single values of it."""
    p.add_argument(
        "--config",
        default=os.environ.get("RDV_CONFIG") or None,
        metavar="VM.toml",
        help="the VM's config (see deploy/vm.example.toml; default $RDV_CONFIG)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set qemu.memory=2G (environment: RDV_ + KEY in capitals, dots as "
        "underscores, e.g. RDV_AUDIO_ENDPOINT)",
    )
    p.add_argument("--mode", default=None, help="override mode (mirrored, backend)")
    p.add_argument("--tls-dir", default=None, help="override tls_dir")
    p.add_argument("--audio", default=None, metavar="HOST:PORT", help="override audio.endpoint")
    p.add_argument("--display", action="append", default=None, metavar="HOST:PORT", help="override display.endpoints")
    p.add_argument("--input", default=None, metavar="HOST:PORT", help="override input.endpoint")
    p.add_argument("--dma-log", default=None, help=argparse.SUPPRESS)  # tests: the ES1370's DMA reads, saved on exit


def load_vm_config(args: argparse.Namespace) -> VmConfig | None:
    """The config the flags name, or None after printing why it is unusable (the caller exits 2)."""
    if not args.config:
        print("error: --config VM.toml is required (or set RDV_CONFIG)", file=sys.stderr)
        return None
    overrides: dict[str, tuple[object, str]] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set {item}: expected KEY=VALUE", file=sys.stderr)
            return None
        overrides[key.strip()] = (value, f"--set {key.strip()}")
    for attr, key in _FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = (value, "--" + attr.replace("_", "-"))
    # --log-level always has a value (flag, $RDV_LOG_LEVEL or its default): it overrides the file only when given
    level = getattr(args, "log_level", None)
    if level and level != (os.environ.get(LOG_LEVEL.env or "") or LOG_LEVEL.default).lower():
        overrides["log_level"] = (level, "--log-level")
    try:
        return load(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


VIDEO = [
    Setting("--video", "auto", "RDV_VIDEO", settings.choice(*VIDEO_MODES),
            help="lossy streams for regions playing video (auto: h264 if the service decodes it, else jpeg; "
            "off: everything lossless)"),
    Setting("--video-max-mbps", 20.0, "RDV_VIDEO_MAX_MBPS", settings.number(0.01, 100_000), metavar="MBPS",
            help="cap on all video streams' bitrate per display (default 20; lower when the link is slower)"),
    Setting("--video-quality", 75, "RDV_VIDEO_QUALITY", settings.number(1, 100, integer=True), metavar="1..100",
            help="JPEG quality, or the H.264 CRF it maps to (75 -> CRF 18)"),
]  # fmt: skip


def video(p: settings.SettingsParser) -> None:
    """--video, --video-max-mbps, --video-quality (defaults from RDV_VIDEO, RDV_VIDEO_MAX_MBPS,
    RDV_VIDEO_QUALITY)."""
    p.add_settings(VIDEO)


def video_settings(args: argparse.Namespace) -> VideoSettings:
    return VideoSettings(mode=args.video, max_mbps=args.video_max_mbps, quality=args.video_quality)

