"""`heap.settle()`: what start-up made leaves the collector's reach, so later full collections walk only the rest."""

from __future__ import annotations

import gc
import time

from services.common import heap


def test_settle_freezes_what_start_up_made_and_full_collections_get_cheaper() -> None:
    import grpc  # noqa: F401  (the modules a service loads: what its full collections walked every time)
    import numpy  # noqa: F401

    from rdv.audio.v1 import audio_pb2  # noqa: F401

    def full_collection_s() -> float:
        best = 1.0
        for _ in range(5):
            t = time.perf_counter()
            gc.collect()
            best = min(best, time.perf_counter() - t)
        return best

    gc.unfreeze()
    before = full_collection_s()  # also frees what earlier tests left: only live objects are counted below
    tracked = len(gc.get_objects())
    try:
        heap.settle()
        assert gc.get_freeze_count() >= tracked * 0.9, "start-up's objects were not moved out of the collector's walk"
        after = full_collection_s()
        assert after < before / 4, (
            f"a full collection took {after * 1e3:.2f} ms after settle, {before * 1e3:.2f} before"
        )
    finally:
        gc.unfreeze()
