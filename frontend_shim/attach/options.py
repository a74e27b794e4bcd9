"""The config options `vm`, `run` and `doctor` share: the file and the flags that override single values."""

from __future__ import annotations

import argparse
import os
import sys

from frontend_shim.attach.config import SCHEMA, ConfigError, VmConfig, env_name, load

# flag -> config key; the other keys are reached with --set KEY=VALUE
_FLAGS = {
    "mode": "mode",
    "tls_dir": "tls_dir",
    "audio": "audio.endpoint",
    "display": "display.endpoints",
    "input": "input.endpoint",
}


def add_config_options(p: argparse.ArgumentParser) -> None:
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


def load_config(args: argparse.Namespace) -> VmConfig | None:
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
    try:
        return load(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def keys_help() -> str:
    return "config keys: " + ", ".join(f"{k} (${env_name(k)})" for k in SCHEMA)
