"""`demo`: the whole system on loopback. Starts the remote node's services, then a scripted guest plays a
generated song through the shim in both coherence modes, with live status and a side-by-side summary, records
a few seconds from the audio service's capture source (a WAV of the song) in both modes, and then draws an
animated desktop on the display service (a window when DISPLAY is set, offscreen otherwise)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from frontend_shim.commands import draw_demo as cmd_draw_demo
from frontend_shim.commands import record as cmd_record
from frontend_shim.commands.play import PlayError, describe, play
from frontend_shim.commands.processes import ROOT, ServiceProcess, start_service
from frontend_shim.guests.pcm import melody, write_wav
from services.devices.es1370 import PcmFormat

DEMO_FORMAT = PcmFormat(44100, 2, 16)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the remote node and a scripted guest on loopback (what `make run` does)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the generated song")
    p.add_argument("--out", default=str(ROOT / "build" / "demo"), help="folder for logs and recordings")
    p.add_argument(
        "--sink",
        choices=["auto", "alsa", "wav"],
        default="auto",
        help="auto: the default ALSA device when this machine has a sound card, else WAV files in --out",
    )
    p.add_argument("--record-seconds", type=float, default=2.0, help="how long the guest records after playing")
    p.add_argument("--display-seconds", type=float, default=3.0, help="how long the guest draws on the display")
    p.set_defaults(run=run)


def has_sound_card() -> bool:
    cards = Path("/proc/asound/cards")
    return cards.exists() and "no soundcards" not in cards.read_text()


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sink = args.sink if args.sink != "auto" else ("alsa" if has_sound_card() else "wav")
    audio_args = ["--sink", "alsa", "--alsa-device", "default"] if sink == "alsa" else [
        "--sink", "wav", "--wav-path", str(out / "played-{session}-{channel}.wav")
    ]  # fmt: skip
    song = out / "song.wav"
    write_wav(str(song), DEMO_FORMAT, melody(DEMO_FORMAT, args.seconds))
    print(f"rdv demo: a {args.seconds:.0f} s song ({DEMO_FORMAT}) generated at {song}")
    audio_args += ["--source", "wav", "--source-path", str(song)]  # the remote node's "microphone"

    started: list[ServiceProcess] = []
    try:
        for name, extra in (("audio", audio_args), ("display", []), ("input", [])):
            svc = start_service(name, out / "logs", *extra)
            started.append(svc)
            print(f"  remote node: {name:7} service on {svc.address}")
        audio = started[0].address
        where = "the default ALSA device" if sink == "alsa" else f"WAV files in {out}"
        print(f"  the scripted guest plays through the shim to the audio service, out of {where}\n")
        summaries = []
        for mode in ("mirrored", "backend"):
            summary = play(melody(DEMO_FORMAT, args.seconds), DEMO_FORMAT, audio=audio, mode=mode, status=True)
            print(describe(summary))
            summaries.append(summary)
        print(f"\n  the scripted guest records {args.record_seconds:.0f} s from the audio service's source (the song)")
        for mode in ("mirrored", "backend"):
            rec_out = out / f"recorded-{mode}.wav"
            captured, rec = cmd_record.record(DEMO_FORMAT, args.record_seconds, audio=audio, mode=mode)
            write_wav(str(rec_out), DEMO_FORMAT, captured)
            exact = captured == melody(DEMO_FORMAT, args.seconds)[: len(captured)]
            print(cmd_record.describe(rec, str(rec_out)) + f"; equal to the source: {'yes' if exact else 'NO'}")
        screen = "a window on $DISPLAY" if os.environ.get("DISPLAY") else "SDL's offscreen driver (no DISPLAY)"
        print(f"\n  the scripted guest now draws a desktop for {args.display_seconds:.0f} s on the display service, "
              f"shown in {screen}")  # fmt: skip
        drawn = cmd_draw_demo.draw([started[1].address], seconds=args.display_seconds, encoding="auto")
        print(cmd_draw_demo.describe(drawn))
    except (PlayError, cmd_draw_demo.DrawError, RuntimeError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for svc in started:
            svc.stop()

    print("\nper second of audio        mirrored (card 2)   backend (card 1)")
    rows = (("register reads on the wire", "reads"), ("bytes shim -> service", "bytes_to_service"),
            ("bytes service -> shim", "bytes_from_service"))  # fmt: skip
    for label, key in rows:
        m, b = (s[key] / args.seconds for s in summaries)
        shown_m = "0 (answered locally)" if key == "reads" else f"{m:,.0f}"
        print(f"{label:27}{shown_m:>20}{b:>19,.0f}")
    per_s = drawn["seconds"] or 1.0
    pixels, wire = (drawn[k] / per_s / 2**20 for k in ("pixel_bytes", "payload_bytes"))
    print(f"{'display frames per second':27}{drawn['frames'] / per_s:>20,.1f}   pixels {pixels:,.1f} MiB/s, wire "
          f"{wire:,.2f} MiB/s, median latency {drawn['latency_p50_ms']} ms")  # fmt: skip
    print(f"\nlogs in {out / 'logs'}")
    return 0
