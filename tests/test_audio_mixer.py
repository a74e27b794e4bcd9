"""The service's mixer (`--mix service`): several VMs summed into one ALSA `file:` PCM, per-VM volume and mute,
isolation between VMs. In process first (the mixer with its inputs fed like players feed them), then end to end
(four scripted guests through the shim and the audio service)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from frontend_shim.guests.pcm import melody
from services.audio.mixer import Mixer, MixerInput
from services.audio.sinks.alsa import AlsaSink
from services.common.clock import Clock
from services.devices.es1370 import PcmFormat
from tests.mix_helpers import assert_mix, check_coverage, read_log, stream

RATE = 44100


def square(fmt: PcmFormat, seconds: float, level: float, hz: float = 200.0) -> bytes:
    """A loud square wave: two of them in phase saturate the sum."""
    n = int(fmt.rate * seconds)
    wave = np.where((np.arange(n) * hz / fmt.rate) % 1 < 0.5, level, -level)
    if fmt.bits == 8:
        s = np.clip(np.rint(wave * 127 + 128), 0, 255).astype(np.uint8)
    else:
        s = np.rint(wave * 32767).astype("<i2")
    return np.repeat(s, fmt.channels).tobytes()


def feed(inp: MixerInput, fmt: PcmFormat, data: bytes, chunk_seconds: float = 0.01, stall: float = 0.0) -> None:
    """What a player does: open, write 10 ms chunks (each blocks while the mixer is full), close."""
    inp.open(fmt)
    step = max(1, int(fmt.rate * chunk_seconds)) * fmt.frame_bytes
    for i in range(0, len(data), step):
        if stall and i == (len(data) // 2) // step * step:
            time.sleep(stall)  # the VM stalls half way
        inp.write(data[i : i + step])
    inp.close()


def test_mixer_sums_four_formats_with_volume_and_saturation(tmp_path: Path) -> None:
    out, log = tmp_path / "mix.raw", tmp_path / "mix.jsonl"
    clock = Clock(4.0)
    mixer = Mixer(AlsaSink(f"file:FILE={out},FORMAT=raw"), RATE, clock, str(log))
    mixer.set_volume("b", volume=0.5)
    mixer.set_volume("e", mute=True)
    inputs = {
        "a": (PcmFormat(44100, 2, 16), square(PcmFormat(44100, 2, 16), 1.0, 0.9)),
        "b": (PcmFormat(44100, 1, 8), square(PcmFormat(44100, 1, 8), 1.0, 0.9)),  # at 0.5
        "c": (PcmFormat(22050, 1, 8), melody(PcmFormat(22050, 1, 8), 1.0)),  # resampled
        "d": (PcmFormat(48662, 1, 16), melody(PcmFormat(48662, 1, 16), 1.0)),  # resampled
        "e": (PcmFormat(44100, 2, 16), np.random.default_rng(7).bytes(44100 * 4)),  # garbage, muted
    }
    threads = []
    for vm, (fmt, data) in inputs.items():
        inp = mixer.input(f"s-{vm}", vm, "DAC2")
        stall = 0.3 if vm == "e" else 0.0  # ~1.2 s of device time: the others must not notice
        threads.append(threading.Thread(target=feed, args=(inp, fmt, data), kwargs={"stall": stall}))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 30
    while len(read_log(log)[1]) < len(inputs):
        assert time.monotonic() < deadline, "the mixer did not play every input out"
        time.sleep(0.05)
    mixer.stop()
    runs, ends = read_log(log)
    streams = {}
    for vm, (fmt, data) in inputs.items():
        s = stream(data, fmt, RATE)
        check_coverage(runs, (vm, f"s-{vm}", 0), len(s.frames), slack=2 if s.resampled else 0)
        if vm != "e":
            streams[(vm, f"s-{vm}", 0)] = s
    figures = assert_mix(out.read_bytes(), runs, streams)
    assert figures["clipped_samples"] > 1000  # a and b in phase: the saturation was exercised
    assert figures["exact_frames"] > RATE // 4  # a and b alone after c and d (1 s each, same length) ended?
    assert all(r["gain"] == 0.5 for r in runs if r["vm"] == "b")
    print("\nFIGURES mixer-in-process:", figures, {e["vm"]: e["underruns"] for e in ends})
