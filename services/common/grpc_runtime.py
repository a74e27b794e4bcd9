"""How rdv's processes run gRPC's core: chosen once, before `grpc` is imported.

grpcio 1.80 moved Python's clients and listeners onto gRPC's EventEngine: a message that arrives is read by an
EventEngine thread and handed to the thread that polls the completion queue (the sync channel's spin thread,
grpc.aio's poller), one more thread wake-up per message at each end. On the 2-core node a bare gRPC bidi echo
took 275–283 µs with it and 194–212 µs without, a backend register read over vfio-user 421–451 µs and 331–357 µs
(README, hot path, "Fourth pass"). rdv's processes therefore turn the two experiments off
(`GRPC_EXPERIMENTS=-event_engine_client,-event_engine_listener`), as gRPC's maintainers advise for a
regression; a user who sets GRPC_EXPERIMENTS decides instead (empty: gRPC's defaults).

gRPC reads the variable once, when `grpc` is first imported: setting it later changes nothing. The packages
`services`, `frontend_shim` and `tests` call `configure()` first thing when they are imported, and `python -m`
imports a module's package before the module, so every rdv process, test and benchmark runs the same core. A
program of one's own that imports `grpc` before any rdv package keeps gRPC's defaults
(tests/test_grpc_runtime.py shows both).
"""

from __future__ import annotations

import os

EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def configure() -> None:
    os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
