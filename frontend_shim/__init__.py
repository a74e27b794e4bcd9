"""The local node: the shim beside QEMU that serves the devices over vfio-user and links them to the services."""

from services.common import grpc_runtime

grpc_runtime.configure()  # before anything imports grpc: services/common/grpc_runtime.py
