"""`python -m services.display`: the remote SVGA II's screen, shown with SDL (a window, or offscreen)."""

from __future__ import annotations

import argparse
import os

from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import server
from services.display.desktop import DEFAULT_MAX_FRAME_BYTES
from services.display.presenters import make_presenter
from services.display.service import DisplayServicer
from services.display.stage import Stage
from services.display.viewport import Viewport

DEFAULT_PORT = 50052


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = server.parser(
        "display",
        DEFAULT_PORT,
        "Remote VMware SVGA II display: receives a VM's frames from rdv shims, keeps a copy of the guest desktop\n"
        "and shows its viewport with SDL: a window when DISPLAY is set, SDL's dummy driver otherwise.\n"
        "Two services with adjacent viewports extend one guest desktop over two screens.\n"
        "Extra environment defaults: RDV_VIEWPORT, RDV_PRESENTER, RDV_REFRESH_HZ, RDV_INPUT.",
    )
    p.add_argument(
        "--viewport",
        type=Viewport.parse,
        default=Viewport.parse(env("RDV_VIEWPORT", "")),
        metavar="X,Y,W,H",
        help="part of the guest desktop this screen shows (default: all of it)",
    )
    p.add_argument("--headless", action="store_true", help="never open a window (SDL's dummy video driver)")
    p.add_argument(
        "--presenter",
        choices=["auto", "sdl", "headless"],
        default=env("RDV_PRESENTER", "auto"),
        help="sdl, headless (no SDL at all), auto (sdl; headless if SDL cannot start)",
    )
    p.add_argument(
        "--refresh-hz", type=float, default=float(env("RDV_REFRESH_HZ", "60")), help="most presents per second"
    )
    p.add_argument(
        "--input",
        default=env("RDV_INPUT", ""),
        metavar="HOST:PORT",
        help="input service to publish the window's mouse and keyboard to (guest coordinates via the viewport)",
    )
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES, help=argparse.SUPPRESS)
    return p


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
    )
    stage.start()
    if window is not None:
        window.on_change = stage.set_notice  # the PIN over the screen while pairing is open
    v: Viewport = args.viewport
    info = server.service_info(
        "display",
        args.listen,
        ["svga2", "coherence:backend", "coherence:mirrored", "encodings:raw,lzo,lz4,zstd", "screenshot"],
        {
            "viewport": "all" if v.whole else f"{v.x},{v.y},{v.width},{v.height}",
            "presenter": stage.presenter.name,
            "refresh_hz": str(args.refresh_hz),
            "input": args.input,
        },
    )
    servicer = DisplayServicer(info, stage, args.max_frame_bytes, server.open_gate(args))

    async def stop() -> None:
        stage.stop()
        if on_input is not None:
            on_input.close()

    return server.ServiceParts(
        names=[display_pb2.DESCRIPTOR.services_by_name["DisplayService"].full_name],
        register=lambda grpc_server: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, grpc_server),
        info=info,
        on_stop=stop,
    )


def main() -> None:
    args = build_parser().parse_args()
    if args.refresh_hz < 0:
        raise SystemExit("--refresh-hz must not be negative")
    server.main("display", args, build)


if __name__ == "__main__":
    main()
