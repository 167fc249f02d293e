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
from graph.walks import random_walks



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


def cooccurrence(walks: np.ndarray, window: int, v: int) -> sp.csr_array:
    """Symmetric counts of particles within `window` steps of each other on a walk.

    Args:
        walks: (W, T) node ids, -1 once a walker has stopped (to the end of its row).
        window: the largest step gap that counts.
        v: the number of nodes.
    """
    steps = np.ascontiguousarray(walks.T)                       # (T, W)
    # Walkers longest first: those alive at step t are then a prefix of each row, and
    # every pair below is a pair of slices, with no masks over stopped walkers.
    walked = (steps >= 0).sum(axis=0)                           # (W,) steps per walker
    steps = steps[:, np.argsort(-walked, kind="stable")]
    live = len(walked) - np.searchsorted(np.sort(walked), np.arange(len(steps)), side="right")
    xs, ys = [], []
    for gap in range(1, window + 1):
        for t in range(len(steps) - gap):
            n = int(live[t + gap])                              # alive at t + gap, so at t
            xs.append(steps[t, :n])
            ys.append(steps[t + gap, :n])
    kind = np.int32 if v < 2**31 else np.int64
    x = np.concatenate(xs).astype(kind) if xs else np.zeros(0, kind)
    y = np.concatenate(ys).astype(kind) if ys else np.zeros(0, kind)
    half = sp.coo_array((np.ones(len(x)), (x, y)), shape=(v, v)).tocsr()   # (x, y) pairs
    m = (half + half.T).tocsr()                                 # and (y, x): symmetric
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
