"""Real Linux driver traffic (QEMU traces in tests/data/traces) replayed through the shim to the audio service.

Every committed trace is replayed in both coherence modes through the real CLI (`python -m frontend_shim
replay`) against a real service: no read may differ from what QEMU returned beyond the documented tolerance
(frontend_shim/guests/trace_replay.py), and mirrored mode must put only a fraction of backend mode's register
traffic on the wire (the paper's remote card 2 against card 1).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend_shim.commands.processes import ServiceProcess, start_service
from frontend_shim.guests.trace_replay import TraceError, load_trace, parse_trace, register_name
from services.devices import es1370_regs as R
from tests.helpers import ROOT, run_shim

TRACES = ROOT / "tests" / "data" / "traces"
MANIFEST = json.loads((TRACES / "manifest.json").read_text())["cases"]
CASES = sorted(MANIFEST)
SPEED = "2"  # replay twice as fast as recorded; the service's clock runs at the same scale
REAL_LINE = (
    "11671@1795690083.640044:memory_region_ops_write cpu 0 mr 0x5574b3c1d2e0 addr 0xc020 value 0x10000c "
    "size 4 name 'es1370'\n"
)


def register_bytes(wire: dict[str, int]) -> int:
    """Port I/O and interrupts: what the paper's card 2 keeps off the wire (PCM and control are not)."""
    return wire.get("io", 0) + wire.get("interrupt", 0)


# ----------------------------------------------------------------------------------------- parsing
def test_committed_traces_match_their_manifest() -> None:
    assert len(CASES) >= 5
    total = 0
    for name in CASES:
        info = MANIFEST[name]
        path = TRACES / info["file"]
        total += path.stat().st_size
        trace = load_trace(path)
        assert trace.base == 0xC000  # where SeaBIOS put BAR0
        assert len(trace.accesses) == info["accesses"]
        assert sum(not a.write for a in trace.accesses) == info["reads"]
        isr = [a for a in trace.accesses if not a.write and a.offset == R.STATUS and a.value & R.STAT_INTR]
        assert len(isr) == info["interrupts"] > 10
        assert abs(trace.duration - info["seconds"]) < 1e-3
        assert all(0 <= a.offset < R.IO_BAR_SIZE for a in trace.accesses)
        assert [a.t for a in trace.accesses] == sorted(a.t for a in trace.accesses)
    assert total < 300_000  # small test data


def test_parses_qemu_lines_exactly() -> None:
    trace = parse_trace(
        [
            "11671@1795690083.000000:memory_region_ops_read cpu 0 mr 0x1 addr 0xc100 value 0x0 size 4 name 'vga'\n",
            REAL_LINE,
            "11671@1795690083.640100:memory_region_ops_read cpu 0 mr 0x5574 addr 0xc004 value 0x80000062 size 4 "
            "name 'es1370'\n",
            "11671@1795690083.640200:memory_region_ops_write cpu 0 mr 0x5574 addr 0xc009 value 0x0 size 4 "
            "name 'es1370'\n",
            "11671@1795690083.640300:vmware_value_read index 0 value 0\n",  # other events are skipped
        ]
    )
    assert trace.base == 0xC000
    first, second, third = trace.accesses
    assert (first.t, first.write, first.offset, first.size, first.value) == (0.0, True, 0x20, 4, 0x10000C)
    assert (second.write, second.offset, second.value) == (False, R.STATUS, 0x80000062)
    assert second.t == 56e-6
    assert (third.offset, third.size) == (0x09, 1)  # a UART byte access, logged by QEMU as size 4
    assert register_name(0x3C, 0xC) == "DAC2_FRAMECNT" and register_name(0x34, 0xD) == "ADC_FRAMECNT"


MALFORMED = {
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "broken-gzip": gzip.compress(REAL_LINE.encode())[:-9] + b"\x00" * 9,
    "no-es1370": b"123@1.5:memory_region_ops_read cpu 0 mr 0x1 addr 0x60 value 0x0 size 1 name 'i8042-data'\n",
    "mangled-line": REAL_LINE.replace("value 0x10000c", "value banana").encode(),
    "no-timestamps": REAL_LINE.split(":", 1)[1].encode(),
    "bar-moved": (
        REAL_LINE + REAL_LINE.replace("@1795690083.640044", "@1795690084.0").replace("0xc020", "0xd020")
    ).encode(),
    "time-goes-back": (REAL_LINE + REAL_LINE.replace("083.640044", "082.0")).encode(),
    "huge-line": b"x" * 100_000 + b" name 'es1370'\n",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_trace_is_refused_clearly(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.log"
    bad.write_bytes(MALFORMED[kind])
    with pytest.raises(TraceError) as err:
        load_trace(bad)
    assert str(bad) in str(err.value)
    # The CLI says the same and exits non-zero before it talks to any service.
    res = run_shim("replay", "--qemu-trace", str(bad), "--audio", "127.0.0.1:9", "--json")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith("error: ") and str(bad) in res.stderr


def test_missing_trace_file(tmp_path: Path) -> None:
    res = run_shim("replay", "--qemu-trace", str(tmp_path / "nope.log.gz"), "--audio", "127.0.0.1:9")
    assert res.returncode == 1 and "No such file" in res.stderr


# ----------------------------------------------------------------------------------------- replay
@pytest.fixture(scope="module")
def audio_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = start_service("audio", tmp_path_factory.mktemp("replay"), "--sink", "null", "--clock-scale", SPEED)
    yield svc
    svc.stop()


def replay(service: ServiceProcess, case: str, mode: str) -> dict:
    path = TRACES / MANIFEST[case]["file"]
    res = run_shim(
        "replay", "--qemu-trace", str(path), "--audio", service.address, "--mode", mode, "--json", "--speed", SPEED
    )
    assert res.returncode in (0, 3), res.stderr
    report = json.loads(res.stdout)
    assert res.returncode == (3 if report["unexpected_mismatches"] else 0)
    return report


@pytest.mark.parametrize("case", CASES)
def test_replay_in_both_modes(audio_service: ServiceProcess, case: str) -> None:
    info = MANIFEST[case]
    reports = {mode: replay(audio_service, case, mode) for mode in ("mirrored", "backend")}
    for mode, r in reports.items():
        assert (r["accesses"], r["reads"], r["writes"]) == (info["accesses"], info["reads"], info["writes"]), mode
        assert r["unexpected_mismatches"] == 0, json.dumps([mode, r["max_slip_ms"], r["mismatch_examples"][:4]])
        assert r["trace_interrupts"] == info["interrupts"]
        # Our card interrupted for every period the guest handled (and maybe once more before it was stopped).
        assert info["interrupts"] <= r["interrupts"] <= info["interrupts"] + 2, mode
        assert r["isr_timeouts"] == 0 and r["read_timeouts"] == 0, mode
        assert r["pcm_bytes"] > 0 and r["bytes_to_service"] > r["pcm_bytes"]
        assert sum(c.get("reads", 0) + c.get("writes", 0) for c in r["by_register"].values()) == info["accesses"]
        # The meter's split covers every byte the link sent, each message once (a batch of writes as one).
        assert sum(r["wire_to_service"].values()) == r["bytes_to_service"], mode
    backend, mirrored = reports["backend"], reports["mirrored"]
    # Mirrored mode answers every read locally and raises interrupts locally: nothing of it comes back ...
    assert register_bytes(mirrored["wire_from_service"]) == 0
    assert register_bytes(backend["wire_from_service"]) > 0
    # ... and only the writes go out, so its register traffic is a fraction of backend mode's.
    ours, theirs = (
        register_bytes(r["wire_to_service"]) + register_bytes(r["wire_from_service"]) for r in (mirrored, backend)
    )
    assert 0 < ours < 0.45 * theirs, (ours, theirs)
    assert mirrored["wire_to_service"]["io"] < backend["wire_to_service"]["io"]
