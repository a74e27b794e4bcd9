"""Video on the TV (#17): the synthetic clip (frontend_shim/guests/scripted_video.py) played by the scripted guest
through the real SVGA model and FIFO, inside a desktop with text, to a headless display service; per link, resolution
and `--video` codec, with `--video off` (today's lossless path) in the same run as the ratio to beat.

The guest draws each clip frame into VRAM, UPDATEs the video rectangle and SYNCs, at 30 frames a second (or as
fast as it can, when generating a frame is slower); a line of text under the video changes between segments.
Playback runs in measured segments; between two, the clip plays on (not measured) while a screenshot is taken
and later compared with the source, so the instrument's own cost (the service PNG-encodes a whole desktop, the
benchmark decodes it) stays out of the fps, latency and CPU figures:

- video_fps: pictures the service presented per second of playback (each picture is all the damage one frame
  of the shim carried: a video picture, or the lossless rectangles with --video off);
- video_mbps: everything the shim sent on the stream (Mbit/s), and bytes per picture;
- video_psnr_db: PSNR of the video rectangle of the screenshot against the source frame (only samples taken
  while the stream was still live count; lossless gives identical pictures, recorded as 100 dB); every
  screenshot also checks that the desktop around the video is pixel-exact (`text_exact`);
- video_ssim: SSIM of the same pictures (FFmpeg's filter on the R, G, B planes, ~20 ms a 1080p pair, so every
  sample gets it), beside `ssim_without_grain`: the source frame without its film grain against the source,
  what a codec that lost only the grain would score;
- video_added_latency: FIFO pass (the guest's SYNC) to presented, per frame (ms, same host clock);
- after the last segment: seconds until the whole screen equals the guest's framebuffer (`exact_after_s`: the
  service's present of the last picture, checked exact by a screenshot taken after it; None if it was not);
- CPU per picture of the shim (less the guest's own drawing) and of the display service.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from frontend_shim.commands.processes import start_service
from frontend_shim.guests.scripted_svga import FIFO_SIZE
from frontend_shim.guests.scripted_video import Clip, psnr, ssim
from frontend_shim.links.video_streams import VideoSettings
from services.common.raster import Rect
from tests.bench.netlinks import Link
from tests.bench.stats import _cpu_seconds, percentile
from tests.display_helpers import guest_rgb, screenshot, start_guest

FPS = 30
IDENTICAL_DB = 100.0  # PSNR recorded for identical pictures (the lossless path)
# (clip size, desktop size, where the clip is on the desktop)
LAYOUTS = {
    "1280x720": ((1280, 720), (1920, 1080), (600, 160)),
    "1920x1080": ((1920, 1080), (1920, 1200), (0, 0)),
}
_CLIPS: dict[str, Clip] = {}


def _clip(resolution: str) -> Clip:
    if resolution not in _CLIPS:
        (w, h), _, _ = LAYOUTS[resolution]
        _CLIPS[resolution] = Clip(w, h)
    return _CLIPS[resolution]


def _rgb(bgrx: bytes) -> bytes:
    return np.frombuffer(bgrx, np.uint8).reshape(-1, 4)[:, 2::-1].tobytes()


def _split(rgb: bytes, width: int, r: Rect) -> tuple[np.ndarray, np.ndarray]:
    img = np.frombuffer(rgb, np.uint8).reshape(-1, width, 3)
    mask = np.zeros(img.shape[:2], bool)
    mask[r.y : r.bottom, r.x : r.right] = True
    return img[mask], img[~mask]


def measure(address: str, service_pid: int, resolution: str, video: str, link_name: str, quick: bool) -> list[dict]:
    (cw, ch), (dw, dh), (vx, vy) = LAYOUTS[resolution]
    rect = Rect(vx, vy, cw, ch)
    clip = _clip(resolution)
    driver, link = start_guest([address], fifo_size=FIFO_SIZE, width=dw, height=dh, video=VideoSettings(mode=video),
                               photo=False)  # fmt: skip
    link.flush(60)
    segments, seconds = (2, 2.0) if quick else (5, 4.0)
    s = link.stats
    guest_cpu = 0.0
    psnrs: list[float] = []
    ssims: list[float] = []
    grain_ssims: list[float] = []  # the source frame against itself without its film grain, for comparison
    text_exact = True
    frame = 0
    last_frame_at = 0.0

    def play(seconds: float, until: Callable[[], bool] | None = None) -> float:
        """The guest plays the clip for `seconds` (or until `until()` says so); returns the CPU seconds its own
        drawing took."""
        nonlocal frame, last_frame_at
        t0, k, g = time.monotonic(), 0, 0.0
        while not until() if until is not None else time.monotonic() - t0 < seconds:
            g0 = time.thread_time()
            driver.put_pixels(rect, clip.frame(frame))
            g += time.thread_time() - g0
            driver.update(rect)
            driver.sync()
            last_frame_at = time.monotonic()
            frame += 1
            k += 1
            pause = t0 + k / FPS - time.monotonic()  # paced from the start
            if pause > 0:
                time.sleep(pause)
        return g

    def new_line() -> None:
        """The text beside the video changes; every state the desktop around the video has had is kept."""
        line = f"playing the synthetic clip from frame {frame:05d} at {FPS} fps"
        driver.update(driver.draw_text(8, dh - 60, line, 0xFFFFFF, 0x3A6EA5))
        desktops.append(_split(guest_rgb(driver), dw, rect)[1])

    shots: list[tuple[int, int, bytes]] = []
    desktops: list[np.ndarray] = []

    def grab() -> None:
        """While the clip plays: what the service shows, and the frames played meanwhile."""
        first = frame
        rgb = screenshot(address, link.slots[0].conn.session_id)[2]
        shots.append((first, frame, rgb))

    try:
        new_line()
        play(1.0)  # warm-up: the stream is detected (its first pictures travel lossless); not measured
        pictures = wire = played_frames = 0
        played = shim_cpu = svc_cpu = 0.0
        latencies: list[int] = []
        for _ in range(segments):
            # Measured: the clip plays. Then, not measured, it goes on while the benchmark takes a screenshot
            # (PNG-encoding a desktop costs the service ~160 ms at 1080p: the instrument, not the pipeline).
            p0, b0, n0, f0 = s.pictures_presented, s.bytes_to_service, len(s.latency_ns), frame
            c0, sc0, t0 = time.process_time(), _cpu_seconds(service_pid), time.monotonic()
            g = play(seconds)
            played += time.monotonic() - t0
            guest_cpu += g
            shim_cpu += time.process_time() - c0 - g
            svc_cpu += _cpu_seconds(service_pid) - sc0
            pictures += s.pictures_presented - p0
            wire += s.bytes_to_service - b0
            latencies += list(s.latency_ns)[n0:]
            played_frames += frame - f0
            grabber = threading.Thread(target=grab, daemon=True)
            grabber.start()
            play(0, until=lambda g=grabber: not g.is_alive())
            new_line()
        # The clip ends: when the whole screen became exact. The stream ends after its still time, its lossless
        # refresh travels and the link goes idle; the service's time of the last present it acknowledged (its
        # CLOCK_MONOTONIC, the same host's) is when the screen became what it still is, and one screenshot after
        # that, with nothing presented meanwhile, says whether that was exact. (Polling with screenshots would load
        # the service with PNG encodes while it decodes the refresh, and only bracket the moment.)
        stopped = last_frame_at  # the clip's last frame (a text line beside it changes after it)
        deadline = stopped + 10
        exact_after = None
        while link.video_state()[0]["streams"] and time.monotonic() < deadline:
            time.sleep(0.01)
        if link.flush(max(0.1, deadline - time.monotonic())):
            presented = link.last_presented_ns
            rgb = screenshot(address, link.slots[0].conn.session_id)[2]
            if rgb == guest_rgb(driver) and link.last_presented_ns == presented:
                exact_after = round(max(0.0, presented / 1e9 - stopped), 3)
        state = link.video_state()[0]
        # Each screenshot against the source frame it showed (the best match among the frames played up to it:
        # chosen on a strip, then the PSNR of the whole rectangle); the desktop around the video must be exactly one of
        # the states the guest drew (a text line changes each segment: the newest may still be on its way).
        for first, last, rgb in shots:
            inside, outside = _split(rgb, dw, rect)
            text_exact &= any(bool((outside == d).all()) for d in desktops)
            strip = inside[: cw * 16].tobytes()
            candidates = range(max(0, first - 45), last + 1)
            j = max(candidates, key=lambda j: psnr(strip, _rgb(clip.frame(j))[: cw * 16 * 3], 3))
            source = _rgb(clip.frame(j))
            psnrs.append(min(psnr(inside.tobytes(), source, 3), IDENTICAL_DB))
            ssims.append(ssim(inside.tobytes(), source, cw, ch, "rgb24"))
            grain_ssims.append(ssim(_rgb(clip.frame(j, grain=False)), source, cw, ch, "rgb24"))
    finally:
        link.close(drain=False)
    fps = pictures / played
    common = {
        "link": link_name,
        "resolution": resolution,
        "video": video,
        "desktop": f"{dw}x{dh}",
        "codec_used": state["codec"],
        "streams_started": state["started"],
    }
    lat_ms = [x / 1e6 for x in latencies]
    per_pic = max(1, pictures)
    return [
        _rec(
            "video_fps",
            fps,
            fps,
            "fps",
            pictures,
            **common,
            source_fps=round(played_frames / played, 1),
            shim_cpu_ms_per_frame=round(shim_cpu / per_pic * 1000, 2),
            service_cpu_ms_per_frame=round(svc_cpu / per_pic * 1000, 2),
            guest_cpu_ms_per_frame=round(guest_cpu / max(1, played_frames) * 1000, 2),
        ),  # fmt: skip
        _rec(
            "video_mbps",
            wire * 8 / played / 1e6 if played else 0.0,
            None,
            "Mbit/s",
            pictures,
            **common,
            bytes_per_frame=round(wire / per_pic),
        ),  # fmt: skip
        _rec(
            "video_psnr_db",
            percentile(psnrs, 0.5),
            percentile(psnrs, 0.01),
            "dB",
            len(psnrs),
            **common,
            text_exact=text_exact,
            exact_after_s=exact_after,
        ),  # fmt: skip
        _rec(
            "video_ssim",
            percentile(ssims, 0.5),
            percentile(ssims, 0.01),
            "",
            len(ssims),
            **common,
            ssim_without_grain=round(percentile(grain_ssims, 0.5), 4),
        ),  # fmt: skip
        _rec("video_added_latency", percentile(lat_ms, 0.5), percentile(lat_ms, 0.99), "ms", len(lat_ms), **common),
    ]


def _rec(metric: str, p50: float, p99: float | None, unit: str, samples: int, **extra: object) -> dict:
    return {
        "metric": metric,
        "mode": extra["video"],
        "p50": round(p50, 3) if p50 == p50 else p50,
        "p99": round(p99, 3) if p99 is not None and p99 == p99 else p50,
        "unit": unit,
        "paper": None,
        "samples": samples,
        **extra,
    }


def _ratios(records: list[dict]) -> None:
    """Each codec's figure beside the same clip's `off` figure: `vs_off` = codec / off."""
    off = {(r["metric"], r["link"], r["resolution"]): r["p50"] for r in records if r["video"] == "off"}
    for r in records:
        base = off.get((r["metric"], r["link"], r["resolution"]))
        if r["video"] != "off" and base and base == base and r["p50"] == r["p50"]:
            r["vs_off"] = round(r["p50"] / base, 2)


def run(quick: bool, workdir: Path, link: Link | None = None) -> list[dict]:
    link = link or Link("loopback", "127.0.0.1", None)
    resolutions = list(LAYOUTS)
    videos = ("off", "h264") if quick else ("off", "h264", "jpeg")
    svc = start_service(
        "display", workdir / "logs", "--headless", listen=f"{link.remote_host}:0", prefix=link.prefix, env=link.env
    )
    out: list[dict] = []
    try:
        for resolution in resolutions:
            for video in videos:
                out += measure(svc.address, svc.proc.pid, resolution, video, link.name, quick)
    finally:
        svc.stop()
    _ratios(out)
    return out


if __name__ == "__main__":
    import json

    for r in run(os.environ.get("BENCH_QUICK") == "1", Path("build/bench")):
        print(json.dumps(r))
