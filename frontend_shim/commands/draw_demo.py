"""`draw-demo`: the scripted SVGA guest draws an animated desktop through the shim onto remote display services."""

from __future__ import annotations

import argparse
import json
import sys
import time

from frontend_shim.commands import options
from frontend_shim.guests.scripted_svga import GuestError, ScriptedSvgaDriver, new_memory
from frontend_shim.guests.scripted_video import Clip
from frontend_shim.links.display import ENCODINGS, DisplayLink
from frontend_shim.links.video_streams import VideoSettings
from services.common import tls
from services.common.png import bgrx_to_rgb, encode_rgb
from services.common.raster import Rect


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("draw-demo", help="draw an animated desktop from a scripted guest on remote display services")
    options.display(p)
    p.add_argument("--seconds", type=float, default=5.0, help="how long to animate")
    p.add_argument("--encoding", choices=ENCODINGS, default="auto", help="pixel encoding (auto: per rectangle)")
    p.add_argument("--tile-diff", action="store_true", help="send only tiles that differ from what the service has")
    options.mode(p)
    options.video(p)
    p.add_argument("--clip", action="store_true", help="also play the synthetic video clip in the lower right corner")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--fps", type=float, default=30.0, help="animation steps per second (0: as fast as possible)")
    p.add_argument("--partial-every", type=int, default=0, help=argparse.SUPPRESS)  # tests: split commands
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--save-guest-png", metavar="FILE", help="write the guest's visible framebuffer as PNG at the end")
    options.vm(p, "scripted-guest")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    options.tls_dir(p)
    p.set_defaults(run=run)


class DrawError(RuntimeError):
    pass


def draw(
    displays: list[str],
    *,
    seconds: float,
    encoding: str = "auto",
    tile_diff: bool = False,
    mode: str = "mirrored",
    width: int = 1024,
    height: int = 768,
    fps: float = 30.0,
    partial_every: int = 0,
    seed: int = 1,
    vm: str = "scripted-guest",
    save_png: str | None = None,
    tls_dir: str | None = None,
    video: VideoSettings | None = None,
    clip: bool = False,
) -> dict:
    """The scripted guest draws for `seconds`; returns the summary once every service has presented it all."""
    vram, fifo = new_memory()
    credentials = tls.channel_credentials(tls_dir) if tls_dir else None
    link = DisplayLink(
        displays,
        mode,  # type: ignore[arg-type]
        vram,
        fifo,
        vm=vm,
        encoding=encoding,  # type: ignore[arg-type]
        tile_diff=tile_diff,
        credentials=credentials,
        video=video,
    )
    try:
        link.start()
    except ConnectionError as exc:
        raise DrawError(f"{exc} (is `python -m services.display` running there?)") from exc
    driver = ScriptedSvgaDriver(link, vram, fifo, seed=seed, partial_every=partial_every)
    started = time.monotonic()
    try:
        driver.probe()
        driver.set_mode(width, height)
        driver.init_fifo()
        driver.desktop()
        if clip:
            cw = width // 2 & ~1
            ch = cw * 9 // 16 & ~1
            movie = Clip(cw, ch)
            driver.video = (Rect(width - cw - 16, height - 28 - ch - 16, cw, ch), movie.frame)
        ticks = driver.run(seconds, fps)
        driver.sync()
    except GuestError as exc:
        link.close(drain=False)
        raise DrawError(str(exc)) from exc
    flushed = link.flush(timeout=30)
    elapsed = time.monotonic() - started
    if save_png:
        with open(save_png, "wb") as f:
            f.write(encode_rgb(width, height, bgrx_to_rgb(driver.framebuffer()), level=1))
    link.close(drain=True)
    s = link.stats.as_dict()
    lat = sorted(link.latencies())
    return {
        "mode": mode,
        "encoding": encoding,
        "tile_diff": tile_diff,
        "video": link.video_state(),
        "displays": len(displays),
        "desktop": f"{width}x{height}",
        "seconds": round(elapsed, 3),
        "ticks": ticks,
        "guest_commands": driver.commands,
        "guest_updates": driver.updates,
        "syncs": driver.syncs,
        "fifo_full_waits": driver.full_waits,
        "accesses": driver.accesses,
        "flushed": flushed,
        "latency_p50_ms": round(lat[len(lat) // 2] / 1e6, 3) if lat else None,
        **s,
    }


def run(args: argparse.Namespace) -> int:
    displays = options.displays(args)
    try:
        summary = draw(
            displays,
            seconds=args.seconds,
            encoding=args.encoding,
            tile_diff=args.tile_diff,
            mode=args.mode,
            width=args.width,
            height=args.height,
            fps=args.fps,
            partial_every=args.partial_every,
            seed=args.seed,
            vm=options.vm_name(args),
            save_png=args.save_guest_png,
            tls_dir=args.tls_dir,
            video=options.video_settings(args),
            clip=args.clip,
        )
    except (OSError, ValueError, DrawError, tls.TlsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else describe(summary))
    return 0 if summary["flushed"] else 1


def describe(s: dict) -> str:
    mib = s["payload_bytes"] / 2**20
    return (
        f"drew {s['ticks']} ticks of a {s['desktop']} desktop in {s['mode']} mode on {s['displays']} display(s) in "
        f"{s['seconds']:.2f} s: {s['frames']} frames, {s['pixel_rects']} pixel rects ({s['fills']} fills, "
        f"{s['copies']} copies as commands), {mib:.2f} MiB of pixels sent ({s['encoding']}"
        f"{' + tiles' if s['tile_diff'] else ''}, ratio {s['compression_ratio']:.1f}), "
        f"median latency {s['latency_p50_ms']} ms"
    )
