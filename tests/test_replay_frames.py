"""`replay-frames` end to end (a real display service, the CLI as a user runs it) and `--headless` without SDL."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from frontend_shim.commands.processes import ROOT
from tests.bench import screens

W, H = 320, 240


def put(x: int, y: int, w: int, h: int, data: bytes) -> dict:
    return {"op": "put", "x": x, "y": y, "w": w, "h": h, "bgrx": base64.b64encode(data).decode()}


def update(x: int, y: int, w: int, h: int) -> dict:
    return {"op": "update", "x": x, "y": y, "w": w, "h": h}


def write_steps(path: Path, steps: list[dict | str]) -> Path:
    path.write_text("".join((s if isinstance(s, str) else json.dumps(s)) + "\n" for s in steps))
    return path


def replay_frames(path: Path, address: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "frontend_shim", "replay-frames", "--input", str(path), "--display", address,
           "--width", str(W), "--height", str(H), "--json", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def steps() -> list[dict | str]:
    return [
        put(10, 10, 200, 100, screens.tooltip(200, 100)),
        update(10, 10, 200, 100),
        "",  # blank lines are skipped
        {"op": "copy", "sx": 10, "sy": 10, "x": 100, "y": 120, "w": 200, "h": 100},
        put(0, 0, 160, 120, screens.photo(160, 120)),
        update(0, 0, 160, 120),
    ]


def test_one_record_per_update_and_copy_with_socket_bytes_and_a_verified_picture(services, tmp_path) -> None:
    svc = services("display", "--headless")
    path = write_steps(tmp_path / "steps.jsonl", steps())
    for encoding in ("raw", "auto"):
        done = replay_frames(path, svc.address, "--encoding", encoding)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["verified"] is True and report["encoding"] == encoding
        tip, copy, photo = report["records"]
        assert [r["op"] for r in report["records"]] == ["update", "copy", "update"]
        assert [r["line"] for r in report["records"]] == [2, 4, 6]
        for r in report["records"]:
            assert r["latency_ms"] > 0 and r["latency_clock"] == "service"
            # counted on the socket: the payload plus gRPC/HTTP2 framing and the frame's other fields
            assert r["bytes_to_service"] > r["payload_bytes"]
        assert copy["payload_bytes"] == 0 and copy["bytes_to_service"] < 300  # a copy is a command
        if encoding == "raw":
            assert tip["payload_bytes"] == 200 * 100 * 4 and photo["payload_bytes"] == 160 * 120 * 4
            assert tip["bytes_to_service"] < 200 * 100 * 4 + 1000
        else:
            assert tip["bytes_to_service"] < 1300  # the tooltip goal, on the socket


def test_a_picture_the_service_never_got_is_reported(services, tmp_path) -> None:
    svc = services("display", "--headless")
    path = write_steps(tmp_path / "steps.jsonl", [*steps(), put(200, 200, 20, 20, b"\xff" * 1600)])  # no update
    done = replay_frames(path, svc.address)
    assert done.returncode == 3
    report = json.loads(done.stdout)
    assert report["verified"] is False and report["differing_pixels"] == 400


def test_malformed_lines_are_named(services, tmp_path) -> None:
    svc = services("display", "--headless")
    bad = {
        "not JSON": "{nope",
        "op must be one of put, update, copy": {"op": "draw"},
        "update: w must be an integer": {"op": "update", "x": 0, "y": 0, "w": "8", "h": 8},
        "outside the 320x240 desktop": update(300, 0, 40, 8),
        "copy: source 8x8+316+0 is outside": {"op": "copy", "sx": 316, "sy": 0, "x": 0, "y": 0, "w": 8, "h": 8},
        "put: bgrx has 12 bytes, 2x2+0+0 needs 16": put(0, 0, 2, 2, b"\0" * 12),
        "put: bgrx is not valid base64": {"op": "put", "x": 0, "y": 0, "w": 1, "h": 1, "bgrx": "!!"},
    }
    for message, line in bad.items():
        path = write_steps(tmp_path / "bad.jsonl", [update(0, 0, 8, 8), line])
        done = replay_frames(path, svc.address)
        assert done.returncode == 2, (message, done.stdout)
        assert "line 2: " in done.stderr and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stdout == ""


def test_no_service_is_a_clear_error(tmp_path) -> None:
    path = write_steps(tmp_path / "steps.jsonl", steps())
    done = replay_frames(path, "127.0.0.1:1")
    assert done.returncode == 1 and "is `python -m services.display` running" in done.stderr
    assert "Traceback" not in done.stderr


def test_headless_service_does_not_load_sdl(services) -> None:
    def sdl_loaded(svc: object) -> bool:
        return "sdl2" in Path(f"/proc/{svc.proc.pid}/maps").read_text().lower()  # type: ignore[attr-defined]

    assert not sdl_loaded(services("display", "--headless"))
    assert sdl_loaded(services("display", "--presenter", "sdl", "--headless"))  # SDL's dummy driver, on request


def test_tile_diff_rests_when_everything_changes_and_the_picture_stays_exact(services, tmp_path) -> None:
    svc = services("display", "--headless")
    steps: list[dict | str] = []
    for i in range(12):  # a new photo each time: no tile is ever the same, comparing only costs time
        steps += [put(0, 0, 160, 120, screens.photo(160, 120, seed=i)), update(0, 0, 160, 120)]
    path = write_steps(tmp_path / "steps.jsonl", steps)
    done = replay_frames(path, svc.address, "--tile-diff", "--encoding", "lz4", "--gap-ms", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tile_diff"] is True and report["verified"] is True
    assert report["tile_diff_rests"] >= 1
