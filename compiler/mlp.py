"""Pass 6 — MLP: walk co-occurrence, positive PMI, projected and factorised.

Seeded stake-weighted random walks give co-occurrence counts within a window; positive PMI
of those counts, projected into embedding space as P = Eᵀ·PPMI·E (d, d), is factorised by
SVD into W1 = U√Σ and W2 = V√Σ. HF's gated MLP, down(act(gate(x)) · up(x)), computes
SiLU(x W1) W2ᵀ exactly with mlp_bias: gate = W1ᵀ, up weight 0 with bias 1, down = W2. P is
scaled so |x P yᵀ| ≤ 1 for unit-RMS rows, keeping SiLU near its linear range; the output is
scaled per layer by the MLP gain (measured in bench/compile_quality.py).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from compiler import linalg
from compiler.types import MLP, Arch, CompileConfig, Embedding, Vocab

MAX_PAIRS = 50_000_000  # co-occurrence pairs held at once (~600 MB as int32 coo)


def build_mlp(vocab: Vocab, emb: Embedding, arch: Arch, cfg: CompileConfig, seed: int) -> MLP:
    """Compile the (shared) MLP weights; per-layer gains are applied when packing."""
    walks = random_walks(vocab.adjacency, cfg.walks_per_node, cfg.walk_length, seed)  # (W, T)
    ppmi = positive_pmi(cooccurrence(walks, cfg.window, len(vocab.particles)))
    e = emb.E                                                   # (V, d) float32
    p = (e.T @ (ppmi.astype(np.float32) @ e)).astype(np.float64)   # (d, d)
    u, s, vt = linalg.dense_svd(p, arch.intermediate)
    r = arch.intermediate
    gate = np.zeros((r, arch.d), np.float32)
    down = np.zeros((arch.d, r), np.float32)
    if len(s) and s[0] > 0:
        root = np.sqrt(s / (s[0] * arch.d))
        gate[: len(s)] = (u * root).T
        down[:, : len(s)] = vt.T * root
    return MLP(gate=gate, down=down, stats={"walks": int(walks.shape[0]),
                                            "ppmi_nnz": int(ppmi.nnz)})


def random_walks(a: sp.csr_array, per_node: int, length: int, seed: int) -> np.ndarray:
    """Stake-weighted walks, all walkers stepped together; -1 marks a stopped walker.

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
    walks = np.full((len(starts), length), -1, dtype=np.int64)
    walks[:, 0] = cur = starts
    for t in range(1, length):
        alive = cur >= 0
        has = np.zeros_like(alive)
        has[alive] = a.indptr[cur[alive] + 1] > a.indptr[cur[alive]]
        nxt = np.full_like(cur, -1)
        row = cur[has]
        target = before[row] + rng.random(len(row)) * (cum[a.indptr[row + 1] - 1] - before[row])
        pos = np.searchsorted(cum, target, side="right")
        nxt[has] = a.indices[np.minimum(pos, a.indptr[row + 1] - 1)]
        walks[:, t] = cur = nxt
    return walks


def cooccurrence(walks: np.ndarray, window: int, v: int) -> sp.csr_array:
    """Symmetric counts of particles within `window` steps of each other on a walk."""
    rows, cols = [], []
    for gap in range(1, window + 1):
        x, y = walks[:, :-gap].ravel(), walks[:, gap:].ravel()
        ok = (x >= 0) & (y >= 0)
        rows += [x[ok], y[ok]]
        cols += [y[ok], x[ok]]
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    m = sp.coo_array((np.ones(len(r)), (r, c)), shape=(v, v)).tocsr()
    m.sum_duplicates()
    return m


def positive_pmi(c: sp.csr_array) -> sp.csr_array:
    """max(0, log(C_ij · total / (row_i · col_j))) on the stored entries."""
    c = c.tocoo()
    total = c.data.sum()
    if total == 0:
        return sp.csr_array(c.shape)
    row = np.asarray(c.sum(axis=1)).ravel()
    col = np.asarray(c.sum(axis=0)).ravel()
    pmi = np.log(c.data * total / (row[c.row] * col[c.col]))
    keep = pmi > 0
    return sp.coo_array((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape).tocsr()
