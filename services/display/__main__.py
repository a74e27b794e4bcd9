"""`python -m services.display`: the remote SVGA II's screen, shown with SDL (a window, or offscreen)."""

from __future__ import annotations

import argparse

from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import server, settings
from services.common.settings import Setting
from services.display.desktop import DEFAULT_MAX_FRAME_BYTES
from services.display.presenters import PresentError, make_presenter
from services.display.service import DisplayServicer
from services.display.stage import HOT_KEYS, WINDOW_MODES, Stage
from services.display.viewport import Viewport

DEFAULT_PORT = 50052


SETTINGS = [
    Setting("--viewport", Viewport.parse(""), "RDV_VIEWPORT", Viewport.parse, metavar="X,Y,W,H",
            help="part of the guest desktop this screen shows (default: all of it)"),
    Setting("--headless", False, None, switch=True,
            help="never open a window: no SDL at all (with --presenter sdl: SDL's dummy video driver)"),
    Setting("--presenter", "auto", "RDV_PRESENTER", settings.choice("auto", "sdl", "headless"),
            help="sdl, headless (no SDL at all), auto (sdl; headless if SDL cannot start)"),
    Setting("--refresh-hz", 60.0, "RDV_REFRESH_HZ", settings.number(0, 1000), metavar="HZ",
            help="most presents per second"),
    Setting("--input", "", "RDV_INPUT", metavar="HOST:PORT",
            help="input service to publish the windows' mouse and keyboard to (guest coordinates via the viewport; "
                 "the focused VM's window only) and to follow the focus of"),
    Setting("--window-mode", "windows", "RDV_WINDOW_MODE", settings.choice(*WINDOW_MODES),
            help="windows: a window per VM; switcher: one full-screen window showing the focused VM, its name "
                 "over the picture (Ctrl+Alt+N: next VM)"),
    Setting("--max-frame-bytes", DEFAULT_MAX_FRAME_BYTES, None, settings.number(1, 2**31 - 1, integer=True),
            hidden=True),
]  # fmt: skip


def build_parser() -> settings.SettingsParser:
    return server.parser(
        "display",
        DEFAULT_PORT,
        "Remote VMware SVGA II display: receives a VM's frames from rdv shims, keeps a copy of the guest desktop\n"
        "and shows its viewport with SDL: a window when DISPLAY is set, SDL's dummy driver otherwise.\n"
        "Several VMs: a window each (or one full-screen switcher); the focused VM gets the mouse and keyboard.\n"
        "Two services with adjacent viewports extend one guest desktop over two screens.\n"
        "Keys in a window: " + "; ".join(f"{k} {v}" for k, v in HOT_KEYS.items()) + ".",
        SETTINGS,
    )


def build(args: argparse.Namespace) -> server.ServiceParts:
    on_input = None
    if args.input:
        from services.display.input_bridge import make_bridge

        on_input = make_bridge(args.input, args.tls_dir)
    window = getattr(args, "pairing_window", None)  # set by server.main when this node can pair
    stage = Stage(
        make_presenter(args.presenter, args.headless),
        args.viewport,
        args.refresh_hz,
        on_input,
        on_pair_key=window.open if window is not None else None,
        window_mode=args.window_mode,
        on_focus=on_input.focus if on_input is not None else None,
    )
    try:
        stage.start()
    except PresentError as exc:
        raise SystemExit(f"rdv display: {exc}") from None
    if on_input is not None:
        on_input.watch_focus(stage.follow_focus)
    if window is not None:
        window.on_change = stage.set_notice  # the PIN over the screen while pairing is open
    v: Viewport = args.viewport
    info = server.service_info(
        "display",
        args.listen,
        ["svga2", "coherence:backend", "coherence:mirrored", "encodings:raw,lzo,lz4,zstd,image", "screenshot"],
        {
            "viewport": "all" if v.whole else f"{v.x},{v.y},{v.width},{v.height}",
            "presenter": stage.presenter.name,
            "refresh_hz": str(args.refresh_hz),
            "input": args.input,
            "window_mode": args.window_mode,
        },
    )
    servicer = DisplayServicer(info, stage, args.max_frame_bytes, server.open_gate(args))

    async def stop() -> None:
        stage.stop()
        if on_input is not None:
            on_input.close()

    add = display_pb2_grpc.add_DisplayServiceServicer_to_server
    return server.ServiceParts.of(display_pb2.DESCRIPTOR, "DisplayService", add, servicer, info, stop)


def main() -> None:
    server.main("display", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
