"""Count the host syncs a piece of code makes: on a CPU, where CUDA's sync debug mode does not exist.

A host sync is a point where Python needs a value that lives on the device: ``.item()``,
``int()`` / ``float()`` / ``bool()`` of a tensor (an ``if`` on one), ``.tolist()``, ``nonzero`` and
boolean-mask indexing (their output size depends on the data). On a GPU each drains the queue. On a
CPU nothing waits, but the same calls are made, so counting them here predicts the GPU's syncs:

* dispatched ops whose result the host must read (``_local_scalar_dense``, behind ``item`` and the
  conversions) or whose output shape depends on the data (``nonzero``, ``masked_select``, indexing
  with a bool mask, ``unique``);
* ``Tensor.tolist`` calls (on a CPU tensor it reads memory without dispatching an op).

On CUDA :func:`cuda_sync_errors` uses ``torch.cuda.set_sync_debug_mode("error")`` instead.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive",
                "unique_dim", "argwhere", "nonzero_static"}


class _SyncCounter(TorchDispatchMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _SYNCING_OPS:
            self.counts[name] += 1
        elif name in ("index", "index_put", "index_put_") and len(args) > 1 and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            self.counts[f"{name}[bool mask]"] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Count host syncs made inside the block, by kind; ``sum(counts.values())`` is the total."""
    counts: Counter = Counter()
    original = torch.Tensor.tolist

    def tolist(self, *args, **kwargs):
        counts["tolist"] += 1
        return original(self, *args, **kwargs)

    torch.Tensor.tolist = tolist
    try:
        with _SyncCounter(counts):
            yield counts
    finally:
        torch.Tensor.tolist = original


@contextmanager
def cuda_sync_errors() -> Iterator[None]:
    """Inside the block, any CUDA host sync raises (``torch.cuda.set_sync_debug_mode("error")``)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
