"""`make bench` divides each hot-path figure by the floors measured in the same run (tests/bench/__main__.py)."""

from __future__ import annotations

from tests.bench.__main__ import add_ratios, table
from tests.bench.stats import record


def test_hot_path_records_get_their_ratio_to_the_floors_of_the_same_run() -> None:
    results = [
        record("floor_socket_echo", "floor", [6_000], None),
        record("floor_vfio_user_echo", "floor", [10_000], None),
        record("floor_grpc_echo", "floor", [190_000], None),
        record("vfio_user_read", "mirrored", [18_000], 1_000, content="es1370"),
        record("vfio_user_read", "backend", [300_000], 209_000, content="es1370"),
        record("interrupt", "backend", [171_000], 17_000, path="vfio-user cause_to_eventfd"),
        record("interrupt", "backend", [250_000], 17_000, path="vfio-user cause_to_client"),
        record("register_read", "mirrored", [200], 1_000),  # answered in-process: no floor under it
    ]
    add_ratios(results)
    mirrored, backend, to_eventfd, to_client, local = results[3:]
    assert (mirrored["ratio_to_floor"], mirrored["floor"], mirrored["ratio_goal"]) == (3.0, "floor_socket_echo", 2.0)
    assert backend["ratio_to_floor"] == 1.5 and backend["floor"] == "floor_vfio_user_echo+floor_grpc_echo"
    assert (to_eventfd["ratio_to_floor"], to_eventfd["ratio_goal"]) == (0.9, 1.2)
    assert to_client["ratio_to_floor"] == 1.32 and to_client["ratio_goal"] is None  # reported, no goal
    assert "ratio_to_floor" not in local
    rows = table(results).splitlines()
    assert rows[5].endswith("| 3.00 | 2 | NO |") and rows[7].endswith("| 0.90 | 1.2 | yes |")
