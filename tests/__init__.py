"""rdv's tests and benchmarks; they run gRPC's core as rdv's processes do (services/common/grpc_runtime.py)."""

from services.common import grpc_runtime

grpc_runtime.configure()  # before any module of the tests imports grpc
