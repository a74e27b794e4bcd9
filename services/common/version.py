"""rdv's version, as installed (pyproject.toml's `version`): what every command's --version and ServiceInfo say."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("rdv")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
