"""The command-line options several shim commands share, declared once: each command picks the ones it takes."""

from __future__ import annotations

import argparse
import os

from frontend_shim.links.audio import MODES
from frontend_shim.links.video_streams import VIDEO_MODES, VideoSettings

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


def log_level(p: argparse.ArgumentParser, *, top: bool = True) -> None:
    """On the top-level parser (`--log-level` before the command) and on each command (after it)."""
    p.add_argument(
        "--log-level",
        default=None if top else argparse.SUPPRESS,
        help="debug, info, warning (default $RDV_LOG_LEVEL or warning)",
    )


def video(p: argparse.ArgumentParser) -> None:
    """--video, --video-max-mbps, --video-quality (defaults from RDV_VIDEO, RDV_VIDEO_MAX_MBPS,
    RDV_VIDEO_QUALITY)."""
    p.add_argument(
        "--video",
        choices=VIDEO_MODES,
        default=os.environ.get("RDV_VIDEO", "auto"),
        help="lossy streams for regions playing video (auto: h264 if the service decodes it, else jpeg; "
        "off: everything lossless)",
    )
    p.add_argument(
        "--video-max-mbps",
        type=_positive,
        default=float(os.environ.get("RDV_VIDEO_MAX_MBPS", "20")),
        help="cap on all video streams' bitrate per display (default 20; lower when the link is slower)",
    )
    p.add_argument(
        "--video-quality",
        type=_quality,
        default=int(os.environ.get("RDV_VIDEO_QUALITY", "75")),
        help="1..100: JPEG quality, or the H.264 CRF it maps to (75 -> CRF 18)",
    )


def video_settings(args: argparse.Namespace) -> VideoSettings:
    return VideoSettings(mode=args.video, max_mbps=args.video_max_mbps, quality=args.video_quality)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1..100, not {text}")
    return value
