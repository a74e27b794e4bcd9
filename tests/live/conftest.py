"""Fixtures the live tests share: the QEMU and the guest image tests/tools builds once (cached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live.guest import tool


@pytest.fixture(scope="module")
def qemu() -> str:
    """QEMU 10.2.2 with the vfio-user client (built once, ~3 min on 2 cores; cached)."""
    return tool("build_qemu_vfio_user.sh", timeout=3600)


@pytest.fixture(scope="module")
def qemu_unaligned() -> str:
    """QEMU 10.2.2 with the test-only unaligned vfio region ops (see test_vfio_user_display.py; cached)."""
    return tool("build_qemu_vfio_user.sh", "--unaligned-io", timeout=3600)


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    """Debian's kernel + a busybox initramfs with snd-ens1370, vmwgfx, evdev and alsa-utils (built once; cached)."""
    return Path(tool("build_guest.sh", timeout=3600))
