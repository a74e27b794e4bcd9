"""QEMU's own device models as judges of ours (differential tests over qtest)."""

from __future__ import annotations

import pytest

from tests.qtest import QemuUnavailable, module_dir


def require_qemu() -> None:
    """Skip the calling test when QEMU's qtest accelerator cannot be built here (e.g. no Debian mirror)."""
    try:
        module_dir()
    except QemuUnavailable as exc:
        pytest.skip(f"QEMU qtest module unavailable: {exc}")
