"""`python -m services.display`: the remote display service (so far: health, reflection and service info only)."""

from __future__ import annotations

import argparse

import grpc

from rdv.common.v1 import common_pb2
from rdv.display.v1 import display_pb2, display_pb2_grpc
from services.common import server

DEFAULT_PORT = 50052


class DisplayServicer(display_pb2_grpc.DisplayServiceServicer):
    def __init__(self, info: common_pb2.ServiceInfo) -> None:
        self.info = info

    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return self.info

    async def ListSessions(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:  # noqa: ANN001
        return common_pb2.ListSessionsResponse()


def build_parser() -> argparse.ArgumentParser:
    return server.parser(
        "display",
        DEFAULT_PORT,
        "Remote display service. Not implemented yet beyond health, reflection and GetServiceInfo: "
        "it answers so that the remote node starts whole.",
    )


def build(args: argparse.Namespace) -> server.ServiceParts:
    info = server.service_info("display", args.listen, ["placeholder"], {})
    servicer = DisplayServicer(info)
    return server.ServiceParts(
        names=[display_pb2.DESCRIPTOR.services_by_name["DisplayService"].full_name],
        register=lambda grpc_server: display_pb2_grpc.add_DisplayServiceServicer_to_server(servicer, grpc_server),
        info=info,
    )


def main() -> None:
    server.main("display", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
