"""The remote node's device services (audio, display, input) and what they share."""

from services.common import grpc_runtime

grpc_runtime.configure()  # before anything imports grpc: services/common/grpc_runtime.py
