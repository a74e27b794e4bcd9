"""Python's cyclic garbage collector in processes that keep real time.

A full (generation 2) collection walks every object the process holds, and with gRPC, protobuf and numpy loaded
that is tens of thousands of them, most made at start-up and alive until exit. On a busy host the walk, which
holds the GIL, was measured at 53 ms in the audio service while four VMs played: its mixer ran 44 ms late and
every VM's sound starved at once. `settle()` moves what start-up made into the collector's permanent generation
(`gc.freeze`), so later collections walk only what was made since; the cyclic collector stays on for that.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once start-up is done (modules imported, servers built): collect its garbage, freeze the rest."""
    gc.collect()
    gc.freeze()
