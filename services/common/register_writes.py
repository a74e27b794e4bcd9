"""Batches of posted register writes (rdv.common.v1.RegisterWrites): packed by the shim, checked by the services.

A batch stands for that many `RegisterAccess` writes to BAR 0, in order. Only its shape is checked here; each
write's offset and size are the device model's to refuse, exactly as for a single access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat

from rdv.common.v1 import common_pb2

MAX_WRITES = 1024  # per batch: bounds the work one message costs a service's event loop (~1 ms of model writes)
IMPLIED_SIZE = 4  # the width of every write of a batch that lists no sizes

Write = tuple[int, int, int]  # (offset, size, value)


def pack(writes: Sequence[Write]) -> common_pb2.RegisterWrites:
    """One message for `writes` (at most MAX_WRITES of them); sizes are left out when all are IMPLIED_SIZE."""
    batch = common_pb2.RegisterWrites(pairs=[n for offset, _, value in writes for n in (offset, value)])
    if any(size != IMPLIED_SIZE for _, size, _ in writes):
        batch.sizes.extend(size for _, size, _ in writes)
    return batch


def unpack(batch: common_pb2.RegisterWrites) -> Iterator[Write]:
    """The writes of `batch`, in order; ValueError (before any is yielded) when its shape is malformed."""
    pairs, sizes = batch.pairs, batch.sizes
    count = len(pairs) // 2
    if len(pairs) % 2 or not 0 < count <= MAX_WRITES:
        raise ValueError(f"{len(pairs)} numbers are not the offset-value pairs of 1 to {MAX_WRITES} register writes")
    if len(sizes) not in (0, count):
        raise ValueError(f"{len(sizes)} sizes for {count} register writes (one each, or none for {IMPLIED_SIZE} bytes)")
    return zip(pairs[0::2], sizes or repeat(IMPLIED_SIZE), pairs[1::2], strict=False)  # lengths checked above
