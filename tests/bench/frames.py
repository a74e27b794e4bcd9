"""Lossless pixels on the wire: the issue-#18 updates replayed with `replay-frames`, bytes counted at the socket.

Each repetition, on an 800x600x32 desktop: a 640x480 text window appears (put + UPDATE), a 640x480 photo
replaces it, a 200x100 tooltip appears, and the text window's text area scrolls one line (RECT_COPY, then
UPDATE of the new bottom line). Every repetition uses new content (other seeds), so nothing is a repeat of
what the service already has. Per case and encoding: median bytes on the socket per update (B and B/px of the
updated area), p50/p99 SYNC -> presented, and the shim's encode CPU per megapixel; `verified` says the
service's picture equalled the guest's at the end of each run.

`python -m tests.bench.frames --write FILE.jsonl` writes the steps as a `replay-frames` input file.
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
from pathlib import Path

from frontend_shim.commands.processes import start_service
from frontend_shim.commands.replay_frames import parse_steps, replay
from tests.bench import screens
from tests.bench.netlinks import Link
from tests.bench.stats import record

W, H = 800, 600
WIN = (80, 60, 640, 480)
TIP = (300, 250, 200, 100)
LINE_H = 16  # screens.text_window's line spacing
TEXT_TOP = 42  # its first text line
CASES = ("text", "photo", "tooltip", "scroll")
ENCODINGS = ("auto", "image", "zstd", "lz4", "lzo")
# VNC's ZRLE on the same updates (issue #18, QEMU's VNC server through a counting relay): bytes per update.
ZRLE = {"text": 10_936, "photo": 707_048, "tooltip": 1_263, "scroll": 18_776}
GOAL_B_PER_PX = {"text": 0.036, "photo": 2.3}
GOAL_TOOLTIP_BYTES = 1300


def _op(op: str, x: int, y: int, w: int, h: int, **more: object) -> dict:
    return {"op": op, "x": x, "y": y, "w": w, "h": h, **more}


def _put(x: int, y: int, w: int, h: int, data: bytes) -> dict:
    return _op("put", x, y, w, h, bgrx=base64.b64encode(data).decode())


def steps_json(repetitions: int) -> list[tuple[str, dict]]:
    """(case, step) pairs; case names the update a record belongs to ("" for puts)."""
    x, y, w, h = WIN
    out: list[tuple[str, dict]] = []
    for i in range(repetitions):
        out += [("", _put(x, y, w, h, screens.text_window(w, h, seed=i))), ("text", _op("update", x, y, w, h))]
        out += [("", _put(x, y, w, h, screens.photo(w, h, seed=i))), ("photo", _op("update", x, y, w, h))]
        out += [("", _put(x, y, w, h, screens.text_window(w, h, seed=1000 + i))), ("", _op("update", x, y, w, h))]
        tx, ty, tw, th = TIP
        out += [("", _put(tx, ty, tw, th, screens.tooltip(tw, th, seed=i))), ("tooltip", _op("update", *TIP))]
        # scroll the text area (below the menu, left of the scrollbar) up one line; a new line comes in below
        ax, aw = x + 1, w - 20
        top, rows = y + TEXT_TOP, (h - TEXT_TOP) // LINE_H - 1
        area_h = rows * LINE_H
        out.append(("scroll", {"op": "copy", "sx": ax, "sy": top + LINE_H, "x": ax, "y": top, "w": aw,
                               "h": area_h - LINE_H}))  # fmt: skip
        line = screens.text_window(aw, 480, seed=2000 + i)
        row0 = TEXT_TOP * aw * 4
        new_line = line[row0 : row0 + LINE_H * aw * 4]
        out += [("", _put(ax, top + area_h - LINE_H, aw, LINE_H, new_line))]
        out += [("scroll", _op("update", ax, top + area_h - LINE_H, aw, LINE_H))]
    return out


def write(path: str, repetitions: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        for _, step in steps_json(repetitions):
            f.write(json.dumps(step) + "\n")


def measure(address: str, encoding: str, repetitions: int) -> dict:
    pairs = steps_json(repetitions)
    steps = parse_steps([json.dumps(s) for _, s in pairs], W, H)
    report = replay(steps, address, encoding=encoding, width=W, height=H)
    cases = [c for c, s in pairs if s["op"] != "put"]
    by_case: dict[str, list[dict]] = {c: [] for c in CASES}
    for case, rec in zip(cases, report["records"], strict=True):
        if case:
            by_case[case].append(rec)
    out = {"verified": report["verified"], "encode_ms": report["encode_ms"], "cases": {}}
    for case, recs in by_case.items():
        if case == "scroll":  # the copy and the new line's update make one scroll
            pairs_ = list(zip(recs[0::2], recs[1::2], strict=True))
            sizes = [a["bytes_to_service"] + b["bytes_to_service"] for a, b in pairs_]
            lat = [a["latency_ms"] + b["latency_ms"] for a, b in pairs_]
            area = recs[0]["w"] * recs[0]["h"] + recs[1]["w"] * recs[1]["h"]
            encs: dict[str, int] = {}
        else:
            sizes = [r["bytes_to_service"] for r in recs]
            lat = [r["latency_ms"] for r in recs]
            area = recs[0]["w"] * recs[0]["h"]
            encs = {}
        for r in recs:
            for e, n in r["encodings"].items():
                encs[e] = encs.get(e, 0) + n
        pixels = sum(r["pixel_bytes"] for r in recs) / 4
        out["cases"][case] = {
            "bytes": statistics.median(sizes),
            "b_per_px_samples": [n / area for n in sizes],
            "latency_ms": lat,
            "encodings": encs,
            "pixels": pixels,
        }
    return out


def run(quick: bool, workdir: Path, link: Link | None = None) -> list[dict]:
    link = link or Link("loopback", "127.0.0.1", None)
    reps = 5 if quick else 20
    encodings = ENCODINGS if link.name == "loopback" else ("auto", "image", "lzo")
    svc = start_service(  # SDL's dummy driver, as in the refresh benchmark
        "display", workdir / "logs", "--presenter", "sdl", "--headless",
        listen=f"{link.remote_host}:0", prefix=link.prefix, env=link.env,
    )  # fmt: skip
    results = []
    try:
        for enc in encodings:
            m = measure(svc.address, enc, reps)
            for case, c in m["cases"].items():
                common = {"link": link.name, "content": case, "encoding": enc, "verified": m["verified"],
                          "encodings": c["encodings"], "bytes_per_update": round(c["bytes"]),
                          "zrle_bytes": ZRLE[case], "vs_zrle": round(c["bytes"] / ZRLE[case], 3)}  # fmt: skip
                lat_ns = [v * 1e6 for v in c["latency_ms"]]
                results.append(record("lossless_sync_to_presented", enc, lat_ns, None, **common))
                results.append(record("lossless_bytes_per_px", enc, c["b_per_px_samples"], None, unit="B/px", **common))
            mpx = sum(c["pixels"] for c in m["cases"].values()) / 1e6
            results.append(record("lossless_encode_cpu_per_mpx", enc, [m["encode_ms"] / max(mpx, 1e-9)], None,
                                  link=link.name, unit="ms/Mpx", verified=m["verified"]))  # fmt: skip
    finally:
        svc.stop()
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write(sys.argv[2], 3)
    else:
        for r in run("--quick" in sys.argv, Path("build/bench")):
            print(json.dumps({k: v for k, v in r.items() if k != "samples"}))
