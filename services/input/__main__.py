"""`python -m services.input`: the remote input service (so far: health, reflection and service info only)."""

from __future__ import annotations

import argparse

import grpc

from rdv.common.v1 import common_pb2
from rdv.input.v1 import input_pb2, input_pb2_grpc
from services.common import server

DEFAULT_PORT = 50053


class InputServicer(input_pb2_grpc.InputServiceServicer):
    def __init__(self, info: common_pb2.ServiceInfo) -> None:
        self.info = info

    async def GetServiceInfo(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ServiceInfo:  # noqa: ANN001
        return self.info

    async def ListSessions(self, request, context: grpc.aio.ServicerContext) -> common_pb2.ListSessionsResponse:  # noqa: ANN001
        return common_pb2.ListSessionsResponse()


def build_parser() -> argparse.ArgumentParser:
    return server.parser(
        "input",
        DEFAULT_PORT,
        "Remote input service. Not implemented yet beyond health, reflection and GetServiceInfo: "
        "it answers so that the remote node starts whole.",
    )


def build(args: argparse.Namespace) -> server.ServiceParts:
    info = server.service_info("input", args.listen, ["placeholder"], {})
    servicer = InputServicer(info)
    return server.ServiceParts(
        names=[input_pb2.DESCRIPTOR.services_by_name["InputService"].full_name],
        register=lambda grpc_server: input_pb2_grpc.add_InputServiceServicer_to_server(servicer, grpc_server),
        info=info,
    )


def main() -> None:
    server.main("input", build_parser().parse_args(), build)


if __name__ == "__main__":
    main()
