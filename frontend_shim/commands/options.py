"""The command-line options several shim commands share, declared once: each command picks the ones it takes."""

from __future__ import annotations

import argparse
import os

from frontend_shim.links.audio import MODES

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
