#!/usr/bin/env python3
"""Record the real Linux snd-ens1370 driver's ES1370 register traffic under QEMU 7.2 (TCG).

For each case: generate a WAV, boot Debian's kernel + the busybox initramfs (tests/tools/build_guest.sh) with
an overlay whose /rdv/run.sh plays it with aplay, under

    qemu-system-x86_64 -accel tcg ... -device ES1370,audiodev=a
        -audiodev wav,...            (what the DAC played, checked against the WAV)
        -trace enable=memory_region_ops_* -msg timestamp=on -D trace.log

and keep only the ES1370's lines (QEMU names its I/O region 'es1370'), raw as QEMU printed them, gzip-
compressed, in tests/data/traces/CASE.log.gz. A run is retried (up to --retries) when the guest did not
finish cleanly, aplay reported an underrun or QEMU's wav does not hold the PCM: TCG runs in real time and a
busy host can starve the guest. tests/data/traces/manifest.json lists the cases with their counts.

    .venv/bin/python tests/tools/record_traces.py [--out DIR] [--only NAME ...] [--retries N]

Needs: qemu-system-x86 (Debian 7.2), the guest from build_guest.sh (built on first use).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from frontend_shim.guests.pcm import melody, write_wav  # noqa: E402
from services.devices import es1370_regs as R  # noqa: E402
from services.devices.es1370 import PcmFormat  # noqa: E402

TOOLS = ROOT / "tests" / "tools"
DEFAULT_OUT = ROOT / "tests" / "data" / "traces"
REGION = "name 'es1370'"
QEMU_WAV_BUFFER_FRAMES = 1024  # QEMU drops at most this much at the end when the driver stops the DAC


@dataclass(frozen=True)
class Case:
    name: str
    rate: int  # of the WAV
    channels: int
    bits: int
    seconds: float
    device: str  # ALSA device: hw:0,0 is DAC2, hw:0,1 is DAC1
    aplay_args: str = ""
    dac_rate: int = 0  # what the ES1370 plays (DAC2 cannot make every rate); 0 = the WAV's rate

    @property
    def fmt(self) -> PcmFormat:
        return PcmFormat(self.rate, self.channels, self.bits)

    @property
    def played_rate(self) -> int:
        return self.dac_rate or self.rate


CASES = [
    Case("p4096_44k_s16_stereo", 44100, 2, 16, 3.0, "hw:0,0", "--period-size=4096 --buffer-size=16384"),
    Case("p512_44k_s16_stereo", 44100, 2, 16, 2.0, "hw:0,0", "--period-size=512 --buffer-size=2048"),
    Case("r22050_s16_stereo", 22050, 2, 16, 1.5, "hw:0,0", "--period-size=1024"),
    Case("r48k_s16_mono", 48000, 1, 16, 1.0, "hw:0,0", "--period-size=1024", dac_rate=R.dac2_rate(27)),
    Case("r11025_u8_stereo", 11025, 2, 8, 1.0, "hw:0,0", "--period-size=256"),
    Case("dac1_22050_u8_mono", 22050, 1, 8, 1.0, "hw:0,1", "--period-size=512"),
]


class RunFailed(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[record-traces] {msg}", file=sys.stderr, flush=True)


def guest_dir() -> Path:
    res = subprocess.run(["bash", str(TOOLS / "build_guest.sh")], capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"build_guest.sh failed:\n{res.stderr[-3000:]}")
    return Path(res.stdout.strip().splitlines()[-1])


def qemu_version() -> str:
    return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def record(case: Case, guest: Path, work: Path) -> tuple[list[str], dict]:
    """One boot; returns the ES1370 trace lines and facts about the run. Raises RunFailed."""
    pcm = melody(case.fmt, case.seconds)
    wav = work / f"{case.name}.wav"
    write_wav(str(wav), case.fmt, pcm)
    script = work / "run.sh"
    script.write_text(f"#!/bin/sh\naplay -D {case.device} {case.aplay_args} /rdv/{wav.name} 2>&1\n")
    script.chmod(0o755)
    overlay = work / "overlay.cpio.gz"
    subprocess.run(["bash", str(TOOLS / "make_overlay.sh"), str(overlay), str(script), str(wav)], check=True,
                   capture_output=True)  # fmt: skip
    initrd = work / "initrd.cpio.gz"
    initrd.write_bytes((guest / "initramfs.cpio.gz").read_bytes() + overlay.read_bytes())
    out_wav, trace, console = work / "out.wav", work / "trace.log", work / "console.log"
    for f in (out_wav, trace, console):
        f.unlink(missing_ok=True)
    sample_format = "s16" if case.bits == 16 else "u8"
    cmd = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-nodefaults", "-vga", "none",
        "-display", "none", "-serial", f"file:{console}", "-no-reboot",
        "-kernel", str(guest / "vmlinuz"), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdv.modules=snd-ens1370",
        "-audiodev", f"wav,id=a,path={out_wav},out.frequency={case.played_rate},out.channels=2,"
                     f"out.format={sample_format}",
        "-device", "ES1370,audiodev=a",
        "-trace", "enable=memory_region_ops_*", "-msg", "timestamp=on", "-D", str(trace),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=180, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RunFailed("QEMU did not finish in 180 s") from exc
    wall = time.monotonic() - started
    text = console.read_text(errors="replace") if console.exists() else ""
    if "RDV-DONE rc=0" not in text:
        raise RunFailed(f"guest did not finish cleanly:\n{text[-1500:]}")
    if "underrun" in text.lower():
        raise RunFailed("aplay reported an underrun (host too busy for real-time TCG)")
    lines = []
    with trace.open(errors="replace") as f:
        lines = [line for line in f if REGION in line]
    if not lines:
        raise RunFailed("no ES1370 accesses in the trace")
    glitches = check_wav(case, pcm, out_wav)
    return lines, {"wall_seconds": round(wall, 1), "console": text, "qemu_wav_glitches": glitches}


def check_wav(case: Case, pcm: bytes, out_wav: Path) -> int:
    """QEMU's DAC output must be the WAV's PCM (one side of it for mono), give or take the last mixing buffer
    and a few bytes at each wrap of a DMA buffer that is not whole periods (QEMU's leftover arithmetic: see
    tests/test_oracle_es1370.py, deviation 2). Returns the number of such glitches."""
    with wave.open(str(out_wav), "rb") as w:
        data = w.readframes(w.getnframes())
    width = case.bits // 8
    if case.channels == 1:
        data = b"".join(data[i : i + width] for i in range(0, len(data), 2 * width))
    matched, glitches, in_sync = align(data, pcm)
    frame = case.channels * width
    if not in_sync or glitches > MAX_GLITCHES or matched < len(pcm) - QEMU_WAV_BUFFER_FRAMES * frame - 64:
        raise RunFailed(
            f"QEMU's wav matches {matched} of {len(pcm)} PCM bytes with {glitches} glitches"
            f"{'' if in_sync else ', then loses the PCM altogether'}"
        )
    return glitches


MAX_GLITCHES = 32
_WINDOW, _PROBE = 16, 64


def align(data: bytes, pcm: bytes) -> tuple[int, int, bool]:
    """Walk QEMU's output along the PCM: (PCM bytes matched, places where a few bytes were lost or garbled,
    whether the two were still in step at the end)."""
    i = j = glitches = 0
    while i < len(data) and j < len(pcm):
        step = 4096
        while step:  # skip the equal run quickly
            if data[i : i + step] == pcm[j : j + step] and i + step <= len(data) and j + step <= len(pcm):
                i, j = i + step, j + step
            else:
                step //= 2
        if i >= len(data) or j >= len(pcm):
            break
        probe = min(_PROBE, len(pcm) - j - _WINDOW)
        if probe < 8:
            break  # too close to the end to tell a glitch from the lost tail
        glitches += 1
        candidates = ((di, dj) for d in range(1, 2 * _WINDOW) for di in range(d + 1) for dj in (d - di,))
        found = next(
            (
                c
                for c in candidates
                if probe > 0 and data[i + c[0] : i + c[0] + probe] == pcm[j + c[1] : j + c[1] + probe]
            ),
            None,
        )
        if found is None:
            return j, glitches, False
        i, j = i + found[0], j + found[1]
    return j, glitches, True


_LINE = re.compile(r"memory_region_ops_(read|write) .* addr (0x[0-9a-f]+) value (0x[0-9a-f]+) size (\d+)")


def summarize(lines: list[str]) -> dict:
    reads = sum("memory_region_ops_read" in line for line in lines)
    base = min(int(m.group(2), 16) for line in lines if (m := _LINE.search(line))) & ~0xFF
    isr = 0
    for line in lines:
        m = _LINE.search(line)
        if m and m.group(1) == "read" and int(m.group(2), 16) - base == R.STATUS and int(m.group(3), 16) & R.STAT_INTR:
            isr += 1
    stamps = [float(line.split("@", 1)[1].split(":", 1)[0]) for line in (lines[0], lines[-1])]
    return {
        "accesses": len(lines),
        "reads": reads,
        "writes": len(lines) - reads,
        "interrupts": isr,
        "seconds": round(stamps[1] - stamps[0], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args()
    if args.list:
        for c in CASES:
            print(c.name, c.fmt, c.device, c.aplay_args)
        return 0
    cases = [c for c in CASES if args.only is None or c.name in args.only]
    if args.only and len(cases) != len(args.only):
        sys.exit(f"unknown case in {args.only}; have {[c.name for c in CASES]}")
    guest = guest_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"cases": {}}
    manifest["qemu"] = qemu_version()
    manifest["guest"] = dict(
        line.split(maxsplit=1) for line in (guest / "manifest.txt").read_text().splitlines() if line
    )
    for case in cases:
        with tempfile.TemporaryDirectory(prefix=f"rdv-trace-{case.name}-") as tmp:
            for attempt in range(1, args.retries + 1):
                try:
                    lines, facts = record(case, guest, Path(tmp))
                    break
                except RunFailed as exc:
                    log(f"{case.name}: attempt {attempt} failed: {exc}")
            else:
                log(f"{case.name}: giving up after {args.retries} attempts")
                return 1
        path = args.out / f"{case.name}.log.gz"
        with gzip.GzipFile(path, "wb", mtime=0) as gz:  # mtime 0: the same trace makes the same file
            gz.write("".join(lines).encode())
        counts = summarize(lines)
        aplay_line = next((x for x in facts["console"].splitlines() if x.startswith("Playing")), "")
        manifest["cases"][case.name] = {
            **asdict(case),
            "file": path.name,
            "bytes": path.stat().st_size,
            "attempts": attempt,
            "qemu_wav_glitches": facts["qemu_wav_glitches"],
            "aplay": aplay_line.strip(),
            **counts,
        }
        log(f"{case.name}: {counts} -> {path} ({path.stat().st_size} B, attempt {attempt}, {facts['wall_seconds']} s)")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
