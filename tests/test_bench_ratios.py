"""`make bench` divides each hot-path figure by the floors measured in the same run (tests/bench/__main__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.bench.__main__ import add_ratios, table
from tests.bench.stats import interleaved_record, record
from tests.bench.vfio import can_place, placed


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


def test_the_mirrored_read_is_held_to_its_goal_only_against_a_floor_placed_alike() -> None:
    """tests/bench/vfio.py: the CPUs pinned (path and floor placed alike), the goal applies; left to the kernel,
    the ratio is reported only (the floor may have sat beside the client while the shim sat across)."""
    floors = {"floor_socket_echo": [[6_000, 6_000], [5_000, 5_000]]}
    pinned = interleaved_record("vfio_user_read", "mirrored", [[9_000], [11_000]], floors, None, placement="same-cpu")
    kernel = interleaved_record("vfio_user_read", "mirrored", [[40_000], [9_000]], floors, None, placement="kernel")
    assert (pinned["ratio_to_floor"], pinned["ratio_rounds"], pinned["ratio_goal"]) == (1.85, [1.5, 2.2], 2.0)
    assert kernel["ratio_to_floor"] == 4.23 and kernel["ratio_goal"] is None
    assert table([pinned, kernel]).splitlines()[2].split(" | ")[3] == "same-cpu"


@pytest.mark.skipif(not can_place(), reason="needs CPUs 0 and 1")
def test_placed_pins_the_client_thread_and_every_server_thread_then_puts_them_back() -> None:
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); print(1, flush=True)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "1"
        tasks = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        mine, theirs = os.sched_getaffinity(0), {t: os.sched_getaffinity(t) for t in tasks}
        assert len(tasks) == 2 and all(len(cpus) > 1 for cpus in theirs.values())
        with placed(1, [child.pid]):
            assert os.sched_getaffinity(0) == {0}
            assert {t: os.sched_getaffinity(t) for t in tasks} == {t: {1} for t in tasks}
        assert os.sched_getaffinity(0) == mine and {t: os.sched_getaffinity(t) for t in tasks} == theirs
    finally:
        child.kill()
        child.wait(10)
