"""The command-line options several shim commands share, declared once: each command picks the ones it takes."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from frontend_shim.links.base import MODES
from frontend_shim.links.video_streams import VIDEO_MODES, VideoSettings
from services.common import settings
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


def tls_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-dir", default=os.environ.get("RDV_TLS_DIR") or None, help="mTLS folder from `certs shim`")


LOG_LEVEL = Setting("--log-level", "warning", "RDV_LOG_LEVEL", settings.log_level, help="default warning")


def log_level(p: settings.SettingsParser, *, top: bool = True) -> None:
    """On the top-level parser (`--log-level` before the command) and on each command (after it)."""
    p.add_settings([LOG_LEVEL if top else replace(LOG_LEVEL, env=None, default=argparse.SUPPRESS)])


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

