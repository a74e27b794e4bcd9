from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import ServiceProcess, start_service


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: start a real service process; all are stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def start(name: str, *args: str, **kw: object) -> ServiceProcess:
        svc = start_service(name, tmp_path, *args, **kw)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live tests boot a real guest under QEMU: they run only when selected with `-m live` (make test-live)."""
    if "live" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="boots a real guest: run with `make test-live` (pytest -m live)")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)
