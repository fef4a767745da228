"""Peak device memory of a call, shared by the benchmarks."""

from __future__ import annotations

from typing import Callable

import torch


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Bytes ``fn`` allocates on the current CUDA device at its peak, above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start
