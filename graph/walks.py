"""Stake-weighted random walks over a graph's adjacency: the compiler's MLP pass counts
co-occurrences on them, and finetune turns them into training sequences."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

MAX_PAIRS = 50_000_000  # co-occurrence pairs held at once (~600 MB as int32 coo)


def random_walks(a: sp.csr_array, per_node: int, length: int, seed: int) -> np.ndarray:
    """Stake-weighted walks, all walkers stepped together; -1 marks a stopped walker, which
    stays stopped. Returns (W, T), the transposed view of a (T, W) array.

    Walkers start at every node with out-links (per_node each), thinned evenly when the
    co-occurrence pairs would exceed MAX_PAIRS.
    """
    rng = np.random.default_rng(seed)
    a = a.tocsr()
    starts = np.repeat(np.flatnonzero(np.diff(a.indptr) > 0), per_node)
    budget = max(MAX_PAIRS // max(length, 1), 1)
    if len(starts) > budget:
        starts = starts[np.linspace(0, len(starts) - 1, budget).astype(np.int64)]
    cum = np.cumsum(a.data)                                      # (nnz,)
    before = np.concatenate([[0.0], cum])[a.indptr[:-1]]        # (V,) cum stake before row
    steps = np.full((length, len(starts)), -1, np.int32 if a.shape[0] < 2**31 else np.int64)
    if length:
        steps[0] = starts
    # Only walkers still moving are stepped (most stop within a few steps on a sparse
    # graph); they stay in walker order, so the draws match stepping every walker.
    walker, cur = np.arange(len(starts)), starts
    for t in range(1, length):
        has = a.indptr[cur + 1] > a.indptr[cur]
        walker, row = walker[has], cur[has]
        target = before[row] + rng.random(len(row)) * (cum[a.indptr[row + 1] - 1] - before[row])
        pos = np.searchsorted(cum, target, side="right")
        cur = a.indices[np.minimum(pos, a.indptr[row + 1] - 1)]
        steps[t, walker] = cur
    return steps.T                                              # (W, T)
