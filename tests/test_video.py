"""Video streams (#17): detection on scripted update patterns, the codecs, hostile video payloads at the service,
and a scripted guest playing the synthetic clip end to end (PSNR, exact text around it, exact after the clip)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from frontend_shim.guests.scripted_svga import ScriptedSvgaDriver
from frontend_shim.guests.scripted_video import Clip, psnr
from frontend_shim.links.display import DisplayLink
from frontend_shim.links.video_streams import MIN_AREA, VideoSettings, VideoStreams, photo_like, subtract
from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import raster, video_codec
from services.common.png import decode
from services.common.raster import Rect, Surface
from tests.display_helpers import first_difference, guest_rgb, screenshot, start_guest
from tests.helpers import run_shim, start_service
from tests.test_display_xvfb import crop, grab, window_geometry, xserver  # noqa: F401 - xserver is a fixture

# ------------------------------------------------------------------------------------------------ detection
DW, DH = 640, 480
VIDEO = Rect(64, 48, 320, 240)
FPS = 30


class Screen:
    """A VRAM with a text-like desktop, for driving VideoStreams directly."""

    def __init__(self) -> None:
        self.surface = Surface(DW, DH, DW * 4, 4)
        self.vram = bytearray(DW * DH * 4)
        rows = [bytes([240, 240, 240, 0]) * DW for _ in range(DH)]
        for y in range(0, DH, 14):  # lines of "text": dark runs on a light page
            rows[y] = (bytes([16, 16, 16, 0]) * 3 + bytes([240, 240, 240, 0]) * 2) * (DW // 5)
        raster.write_rect(self.vram, self.surface, Rect(0, 0, DW, DH), b"".join(rows))
        self.clip = Clip(VIDEO.w, VIDEO.h)

    def play(self, i: int, rect: Rect = VIDEO) -> None:
        frame = self.clip.frame(i) if rect.w == VIDEO.w and rect.h == VIDEO.h else Clip(rect.w, rect.h).frame(i)
        raster.write_rect(self.vram, self.surface, rect, frame)


def drive(streams: VideoStreams, screen: Screen, updates: list[tuple[float, Rect]]) -> list[list[Rect]]:
    """Feed (time, rect) updates, taking a frame after each; returns the lossless damage of each frame."""
    lossless = []
    for t, r in updates:
        pending = list(streams.observe(r, t))
        pending, cuts = streams.claim(pending, screen.vram, screen.surface, t, 125e6)
        streams.encode(cuts)
        lossless.append(pending)
    return lossless


def video_streams(mode: str = "auto", still: float = 0.3) -> VideoStreams:
    s = VideoStreams(VideoSettings(mode=mode, still_seconds=still))
    s.configure(["h264", "jpeg"])
    return s


def test_a_video_rect_becomes_a_stream_and_leaves_the_lossless_path() -> None:
    screen, streams = Screen(), video_streams()
    lossless = []
    for i in range(20):  # the clip changes between updates, as a player's frames do
        screen.play(i)
        lossless += drive(streams, screen, [(i / FPS, VIDEO)])
    assert len(streams.streams) == 1 and streams.streams[0].rect == VIDEO
    assert all(p == [] for p in lossless[8:]), "a stream's damage no longer travels lossless"
    assert streams.encoded_frames >= 12


def test_scrolling_text_and_a_blinking_cursor_never_become_streams() -> None:
    screen, streams = Screen(), video_streams()
    window = Rect(0, 300, 600, 160)  # a terminal scrolling at 30 Hz: big, fast, but it compresses
    cursor = Rect(500, 20, 2, 14)
    updates = []
    for i in range(60):
        data = raster.read_rect(screen.vram, screen.surface, Rect(0, 301, 600, 159))
        raster.write_rect(screen.vram, screen.surface, Rect(0, 300, 600, 159), data)  # scroll up one row
        updates += [(i / FPS, window), (i / FPS, cursor)]
    lossless = drive(streams, screen, updates)
    assert streams.streams == [] and streams.started == 0
    assert lossless[-2:] == [[window], [cursor]]


def test_photo_measure_tells_film_from_text() -> None:
    screen = Screen()
    assert photo_like(screen.clip.frame(0), VIDEO.w * 4)
    assert not photo_like(raster.read_rect(screen.vram, screen.surface, Rect(0, 300, 600, 100)), 600 * 4)


def test_still_stream_ends_with_a_lossless_refresh() -> None:
    screen, streams = Screen(), video_streams(still=0.3)
    for i in range(12):
        screen.play(i)
        drive(streams, screen, [(i / FPS, VIDEO)])
    assert len(streams.streams) == 1
    sid = streams.streams[0].stream_id
    last = 11 / FPS
    assert not streams.expire(last + 0.2)
    assert streams.expire(last + 0.31)
    pending, cuts = streams.claim([], screen.vram, screen.surface, last + 0.32, 125e6)
    assert pending == [VIDEO] and cuts == [] and streams.take_ends() == [sid]


@pytest.mark.parametrize(("fps", "ends_after"), [(30, 8 / 30), (10, 0.5), (60, 0.25)])
def test_still_time_follows_the_stream_frame_rate(fps: float, ends_after: float) -> None:
    """8 of the stream's frame intervals, within [0.25, 0.5] s (the setting): a 30 frames/s film is exact sooner
    after it pauses, a 10 frames/s animation is not cut at a late frame."""
    screen, streams = Screen(), video_streams(still=0.5)
    for i in range(16):
        screen.play(i)
        drive(streams, screen, [(i / fps, VIDEO)])
    assert len(streams.streams) == 1
    last = 15 / fps
    assert streams.next_still(last) == pytest.approx(ends_after, abs=1e-6)
    assert not streams.expire(last + ends_after - 0.01)
    assert streams.expire(last + ends_after + 0.001)


def test_a_full_redraw_ends_every_stream_at_the_service() -> None:
    screen, streams = Screen(), video_streams()
    for i in range(8):
        screen.play(i)
        drive(streams, screen, [(i / FPS, VIDEO)])
    ids = [s.stream_id for s in streams.streams]
    assert ids
    streams.end_all()
    assert streams.streams == [] and streams.take_ends() == ids and streams.refresh == []


def test_stream_moves_and_resizes_with_the_content() -> None:
    screen, streams = Screen(), video_streams()
    t = 0.0
    for i in range(10):
        screen.play(i)
        drive(streams, screen, [(t, VIDEO)])
        t += 1 / FPS
    first = streams.streams[0].stream_id
    moved = VIDEO.translate(40, 30)
    for i in range(3):  # the player window is dragged: same size, new place
        screen.play(i, moved)
        drive(streams, screen, [(t, moved)])
        t += 1 / FPS
    assert [s.rect for s in streams.streams] == [moved]
    assert streams.streams[0].stream_id != first and first in streams.take_ends()
    bigger = Rect(moved.x, moved.y, 400, 300)
    for i in range(3):  # ... and resized
        screen.play(i, bigger)
        drive(streams, screen, [(t, bigger)])
        t += 1 / FPS
    assert [s.rect for s in streams.streams] == [bigger]


def test_updates_partly_over_a_stream_keep_their_outside_lossless() -> None:
    screen, streams = Screen(), video_streams()
    for i in range(10):
        screen.play(i)
        drive(streams, screen, [(i / FPS, VIDEO)])
    over = Rect(VIDEO.x - 10, VIDEO.y + 10, 50, 20)  # a tooltip straddling the video's left edge
    pieces = streams.observe(over, 10 / FPS)
    assert pieces == [Rect(VIDEO.x - 10, VIDEO.y + 10, 10, 20)]
    assert subtract(Rect(0, 0, 10, 10), Rect(2, 2, 4, 4)) == [
        Rect(0, 0, 10, 2), Rect(0, 6, 10, 4), Rect(0, 2, 2, 4), Rect(6, 2, 4, 4)
    ]  # fmt: skip
    assert streams.shadows(Rect(VIDEO.x, VIDEO.y, 4, 4)) and not streams.shadows(Rect(0, 0, 4, 4))


def test_codec_choice_falls_back() -> None:
    s = VideoStreams(VideoSettings(mode="h264"))
    s.configure(["jpeg"])  # a service without H.264
    assert s.codec == "jpeg"
    s.configure(None)  # a service without video
    assert s.codec is None and s.observe(VIDEO, 0.0) == [VIDEO]
    off = VideoStreams(VideoSettings(mode="off"))
    off.configure(["h264", "jpeg"])
    assert off.codec is None
    assert video_codec.choose("auto", ["h264", "jpeg"]) == "h264"


@pytest.mark.parametrize(
    "kwargs, setting",
    [({"mode": "vp9"}, "--video "), ({"max_mbps": 0}, "--video-max-mbps"), ({"quality": 101}, "--video-quality")],
)
def test_bad_settings_name_the_option(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        VideoSettings(**kwargs)


def test_small_rects_never_qualify() -> None:
    assert MIN_AREA > 64 * 64  # a cursor or an icon


# ------------------------------------------------------------------------------------------------ codecs
@pytest.mark.parametrize("codec", ["h264", "jpeg"])
def test_codec_round_trip_and_corrupt_payloads(codec: str) -> None:
    clip = Clip(160, 96)
    enc = video_codec.make_encoder(codec, 160, 96, 75, 4000)
    dec = video_codec.make_decoder(codec, 160, 96)
    for i in range(5):
        payload, key = enc.encode(clip.frame(i), keyframe=i == 0)
        assert key or i > 0
        assert psnr(dec.decode(payload), clip.frame(i), 4) > 35
    for bad in (os.urandom(400), payload[: len(payload) // 2], b""):
        with pytest.raises(video_codec.VideoError, match=codec):
            video_codec.make_decoder(codec, 160, 96).decode(bad)
    with pytest.raises(video_codec.VideoError, match="picture for a"):
        video_codec.make_decoder(codec, 80, 96).decode(video_codec.make_encoder(codec, 160, 96, 75, 4000).encode(
            clip.frame(0), True)[0])  # fmt: skip


# ------------------------------------------------------------------------------------------------ the service
MW, MH = 64, 48
MODE = display_pb2.FrameMode(width=MW, height=MH, bpp=32, pitch=MW * 4, enabled=True)


@pytest.fixture(scope="module")
def display(tmp_path_factory: pytest.TempPathFactory):
    svc = start_service("display", tmp_path_factory.mktemp("display"), "--headless")
    yield svc
    svc.stop()


def video(sid: int, r: Rect, payload: bytes, key: bool = True, codec: int = display_pb2.VIDEO_CODEC_JPEG,
          version: int = 1) -> display_pb2.DisplayUpdate:  # fmt: skip
    return display_pb2.DisplayUpdate(
        video=display_pb2.VideoFrame(
            version=version, stream_id=sid, rect=display_pb2.Rect(x=r.x, y=r.y, width=r.w, height=r.h),
            codec=codec, keyframe=key, payload=payload,
        )
    )  # fmt: skip


def test_bad_video_is_refused_per_stream_and_the_session_goes_on(display) -> None:
    clip = Clip(32, 32)
    jpeg = video_codec.make_encoder("jpeg", 32, 32, 90, 0)
    h264 = video_codec.make_encoder("h264", 32, 32, 90, 1000)
    good = [jpeg.encode(clip.frame(i))[0] for i in range(2)]
    r = Rect(0, 0, 32, 32)
    raw = bytes(range(256)) * (16 * 16 * 4 // 256)
    frames = [
        [video(1, r, good[0])],  # stream 1 starts
        [video(2, Rect(32, 0, 32, 32), os.urandom(300))],  # corrupt
        [video(3, Rect(32, 0, 32, 32), h264.encode(clip.frame(0))[0][:40], codec=display_pb2.VIDEO_CODEC_H264)],
        [video(9, Rect(32, 16, 32, 32), good[0], key=False)],  # unknown stream id
        [video(4, Rect(48, 0, 32, 32), good[0])],  # beyond the desktop
        [video(5, Rect(32, 0, 32, 32), good[0], version=7)],  # a future version
        [video(1, r, good[1], key=False),  # stream 1 goes on, and lossless pixels in the same frame apply
         display_pb2.DisplayUpdate(pixels=display_pb2.PixelRect(
             rect=display_pb2.Rect(x=40, y=20, width=16, height=16), encoding=display_pb2.ENCODING_RAW,
             payload=raw, decoded_size=len(raw)))],
    ]  # fmt: skip
    done = threading.Event()

    def messages():
        yield display_pb2.FrontendMessage(open=display_pb2.Open(vm="video", mode=common_pb2.COHERENCE_MODE_MIRRORED))
        for i, updates in enumerate(frames, 1):
            yield display_pb2.FrontendMessage(frame=display_pb2.Frame(frame_id=i, mode=MODE, updates=updates))
        yield display_pb2.FrontendMessage(barrier=common_pb2.Barrier(seq=1))
        done.wait(20)

    replies = []
    with grpc.insecure_channel(display.address) as ch:
        stub = display_pb2_grpc.DisplayServiceStub(ch)
        call = stub.Session(messages(), timeout=30)
        for reply in call:
            replies.append(reply)
            kinds = [m.WhichOneof("kind") for m in replies]
            if "barrier_ack" in kinds and kinds.count("frame_ack") == len(frames):
                state = stub.GetDisplayState(display_pb2.GetDisplayStateRequest())
                shot = screenshot(display.address)
                done.set()
    notices = {m.notice.video_stream_id: m.notice.message for m in replies if m.WhichOneof("kind") == "notice"}
    assert set(notices) == {2, 3, 9, 4, 5}
    assert "jpeg" in notices[2] and "h264" in notices[3]
    assert "unknown stream" in notices[9]
    assert "outside the 64x48 desktop" in notices[4]
    assert "version 7 not supported" in notices[5]
    opened = replies[0].opened
    assert opened.video.version == 1 and display_pb2.VIDEO_CODEC_H264 in opened.video.codecs
    assert [s.stream_id for s in state.video_streams] == [1] and state.video_streams[0].frames == 2
    assert state.stats.video_frames == 2 and state.stats.video_dropped == 5
    w, _, rgb, _ = shot
    shown = np.frombuffer(rgb, np.uint8).reshape(MH, MW, 3)
    expected = np.frombuffer(raw, np.uint8).reshape(16, 16, 4)[..., 2::-1]
    assert (shown[20:36, 40:56] == expected).all(), "the lossless rectangle of the same frame applied"
    src = np.frombuffer(clip.frame(1), np.uint8).reshape(32, 32, 4)[..., 2::-1]
    assert psnr(shown[0:32, 0:32].tobytes(), np.ascontiguousarray(src).tobytes(), 3) > 25  # decoded, not noise


# ------------------------------------------------------------------------------------------------ end to end
def start_video_guest(address: str, video: str) -> tuple[ScriptedSvgaDriver, DisplayLink]:
    return start_guest([address], video=VideoSettings(mode=video, still_seconds=1.0), photo=False)


def split(rgb: bytes, width: int, r: Rect) -> tuple[np.ndarray, np.ndarray]:
    """(pixels inside r, pixels outside r) of a packed RGB image."""
    img = np.frombuffer(rgb, np.uint8).reshape(-1, width, 3)
    mask = np.zeros(img.shape[:2], bool)
    mask[r.y : r.bottom, r.x : r.right] = True
    return img[mask], img[~mask]


@pytest.mark.parametrize("codec", ["h264", "jpeg"])
def test_scripted_guest_plays_the_clip(display, codec: str) -> None:
    driver, link = start_video_guest(display.address, codec)
    clip = Clip(VIDEO.w, VIDEO.h)
    try:
        assert link.flush(20)
        checked = 0
        for i in range(60):
            driver.put_pixels(VIDEO, clip.frame(i))
            driver.update(VIDEO)
            if i % 15 == 14:  # text next to the video changes too
                driver.update(driver.draw_text(VIDEO.x, VIDEO.bottom + 4, f"frame {i:03d}", 0x101010, 0xF0F0F0))
            driver.sync()
            if i >= 20 and i % 10 == 0:
                assert link.flush(20)
                w, h, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)
                inside, outside = split(rgb, w, VIDEO)
                g_inside, g_outside = split(guest_rgb(driver), w, VIDEO)
                assert (outside == g_outside).all(), "the desktop around the video is exact in every frame"
                assert psnr(inside.tobytes(), g_inside.tobytes(), 3) >= 35
                checked += 1
            else:
                time.sleep(1 / FPS)
        assert checked == 4
        with grpc.insecure_channel(display.address) as ch:
            state = display_pb2_grpc.DisplayServiceStub(ch).GetDisplayState(
                display_pb2.GetDisplayStateRequest(session_id=link.slots[0].conn.session_id), timeout=10
            )
        # (a screenshot slower than the still time on a loaded machine may have ended the stream meanwhile)
        assert all(s.rect.width == VIDEO.w and s.codec == {"h264": 1, "jpeg": 2}[codec] for s in state.video_streams)
        assert state.stats.video_frames >= 20 and link.stats.video_frames == state.stats.video_frames
        # The clip stops: within a second (still time 1 s here, at most) the whole screen is exact.
        stopped = time.monotonic()
        while True:
            _, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)
            if rgb == guest_rgb(driver) or time.monotonic() - stopped > 10:
                break
            time.sleep(0.1)
        assert rgb == guest_rgb(driver), first_difference(rgb, guest_rgb(driver), DW)
        ended = link.video_state()[0]
        assert ended["ended"] >= 1 and ended["started"] == ended["ended"]
    finally:
        link.close()


def test_video_off_is_lossless_throughout(display) -> None:
    driver, link = start_video_guest(display.address, "off")
    clip = Clip(VIDEO.w, VIDEO.h)
    try:
        for i in range(12):
            driver.put_pixels(VIDEO, clip.frame(i))
            driver.update(VIDEO)
            driver.sync()
        assert link.flush(20)
        _, _, rgb, _ = screenshot(display.address, link.slots[0].conn.session_id)
        assert rgb == guest_rgb(driver) and link.stats.video_frames == 0
    finally:
        link.close()


# ------------------------------------------------------------------------------------------------ a real window
@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("Xvfb", "import", "xdotool")), reason="needs Xvfb, imagemagick and xdotool"
)
def test_sdl_window_shows_the_clip(services, xserver: str, tmp_path) -> None:  # noqa: F811
    """What the SDL window on a real X server shows during the clip, against the source frames (PSNR)."""
    svc = services("display", env={"DISPLAY": xserver})
    driver, link = start_video_guest(svc.address, "h264")
    clip = Clip(VIDEO.w, VIDEO.h)
    shot: dict[str, object] = {}

    def capture() -> None:
        shot["first"] = frame
        shot["root"] = grab(xserver, tmp_path)
        shot["last"] = frame

    grabber = threading.Thread(target=capture)
    try:
        geo = window_geometry(xserver, svc.proc.pid)
        for frame in range(150):
            driver.put_pixels(VIDEO, clip.frame(frame))
            driver.update(VIDEO)
            driver.sync()
            if frame == 40:
                grabber.start()
            if frame > 40 and not grabber.is_alive():
                break
            time.sleep(1 / FPS)
        grabber.join(60)
        assert link.video_state()[0]["frames"] > 10, "the clip travelled as a video stream"
    finally:
        link.close()
    sw, _, root = shot["root"]  # type: ignore[misc]
    shown = crop(crop(root, sw, geo), geo.w, VIDEO)
    candidates = range(max(0, int(shot["first"]) - 30), int(shot["last"]) + 1)  # type: ignore[call-overload]
    best = max(psnr(shown, _rgb(clip.frame(j)), 3) for j in candidates)
    assert best >= 33, f"the window shows the clip at {best:.1f} dB"


def _rgb(bgrx: bytes) -> bytes:
    return np.frombuffer(bgrx, np.uint8).reshape(-1, 4)[:, 2::-1].tobytes()


@pytest.mark.parametrize("video", ["jpeg", "off"])
def test_draw_demo_plays_the_clip_and_leaves_an_exact_screen(services, tmp_path, video: str) -> None:
    svc = services("display", "--headless")
    png = tmp_path / "guest.png"
    args = ["--seconds", "3", "--clip", "--video", video, "--width", "640", "--height", "480"]
    res = run_shim("draw-demo", "--display", svc.address, *args, "--save-guest-png", str(png), "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    state = json.loads(res.stdout)["video"][0]
    assert state["codec"] == video
    if video != "off":
        assert state["started"] >= 1 and state["frames"] > 10 and state["streams"] == []
    _, _, guest = decode(png.read_bytes())
    _, _, shown, _ = screenshot(svc.address)  # closing ended the stream with a lossless refresh
    assert shown == guest, first_difference(shown, guest, 640)


def test_video_options_are_checked() -> None:
    res = run_shim("draw-demo", "--video-max-mbps", "-3")
    assert res.returncode == 2 and "argument --video-max-mbps" in res.stderr and "-3" in res.stderr
