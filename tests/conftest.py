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


# Markers whose tests run only when selected with -m: they need minutes and more than the machine has by default.
SELECTED_ONLY = {
    "live": "boots a real guest: run with `make test-live` (pytest -m live)",
    "deploy": "builds and runs the Docker node: run with `make test-deploy` (pytest -m deploy)",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live tests boot a real guest under QEMU (make test-live); deploy tests build and start the Docker node
    (make test-deploy). Each runs only when its marker is selected with `-m`."""
    selected = config.getoption("markexpr") or ""
    for marker, reason in SELECTED_ONLY.items():
        if marker in selected:
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
