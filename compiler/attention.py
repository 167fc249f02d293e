"""Pass 5 — attention: one head per semcon, its QKᵀ the graph's k-hop structure.

For semcon s at layer l, P = Eᵀ A_s^k E (d, d) with k = 1 + ⌊l·diam/L⌋ (deeper layers look
further). Its SVD truncated to the head gives W_Q = U√Σ, W_K = V√Σ, so a query particle
attends to keys its type-s k-hop neighbourhood reaches. W_V reads the same key subspace and
W_O writes it back, scaled by a per-layer gain g·κ^l that can go to 0: DESIGN §6 warns
compiled attention can hurt, and gain 0 keeps the zero-layer floor exactly (the choice of
gain is measured in bench/compile_quality.py).

RoPE: rope_theta is 1e300 (CompileConfig), which is inf in float32, so every rotary pair's
frequency is exactly 0 except pair 0 (dims 0 and d_h/2 of each head), which turns at
1 rad/token whatever theta is. Those two dims are left empty, so the compiled scores hold at
every relative distance.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from compiler import linalg
from compiler.types import Arch, Attention, CompileConfig, Embedding, Semcons


def build_attention(semcons: Semcons, emb: Embedding, arch: Arch,
                    cfg: CompileConfig) -> Attention:
    """Compile W_Q, W_K, W_V, W_O for every layer (HF [out, in] layout).

    Returns:
        Attention with per-layer stacked head weights, the powers used and P-ATTN Pearsons.
    """
    d, h, dh, n_layers = arch.d, arch.heads, arch.head_dim, arch.layers
    diam = max(int(arch.derived.get("diameter", 1)), 1)
    powers = [1 + (l * diam) // n_layers for l in range(n_layers)]
    kappa = float(arch.derived.get("kappa", 0.85))
    slots = _head_slots(dh)                                     # (d_h - 2,) usable dims
    per_head = _head_adjacency(semcons, h)
    q = [np.zeros((h * dh, d), np.float32) for _ in powers]
    k = [np.zeros((h * dh, d), np.float32) for _ in powers]
    v = [np.zeros((h * dh, d), np.float32) for _ in powers]
    o = [np.zeros((d, h * dh), np.float32) for _ in powers]
    pearson = np.full((n_layers, h), np.nan)                    # NaN: nothing to approximate
    for head, a in enumerate(per_head):
        if a is None or a.nnz == 0 or len(slots) == 0:    # d_h = 2: all RoPE pair 0
            continue
        # A_s is zero outside the particles its links touch (S), so Eᵀ A_s^k E only needs
        # E[S] and A_s[S, S]: ~10× less work on a big graph with many small semcons. E[S]
        # is read in place (x_rows): for ⊥ S is most of the index, and a copy 1.7 GB at 3.14M.
        touched = np.diff(a.indptr) + np.bincount(a.indices, minlength=a.shape[1])   # (V,)
        support = np.flatnonzero(touched)                       # (S,)
        compact = a[support][:, support].tocsr()                # (S, S)
        factors = {}                                            # layers sharing a power share P
        distinct = sorted(set(powers))
        projections = linalg.power_projections(compact, emb.E, distinct,
                                               workers=cfg.workers, x_rows=support)
        for power, (p, _) in zip(distinct, projections):
            if p.any():                                         # else: no k-hop paths of this type
                # P up to a power-of-two scale, which neither the SVD's shape nor the
                # temperature scaling in _factor nor the Pearson sees.
                factors[power] = (*_factor(p, len(slots), cfg.attn_temperature, d, dh), p)
        for layer, power in enumerate(powers):
            if power not in factors:
                continue
            wq, wk, basis, r, p = factors[power]
            rows = head * dh + slots[:r]
            q[layer][rows] = wq.T
            k[layer][rows] = wk.T
            v[layer][rows] = basis.T
            o[layer][:, rows] = cfg.attn_gain * kappa ** layer * basis
            pearson[layer, head] = linalg.pearson(wq @ wk.T, p)
    return Attention(q=q, k=k, v=v, o=o, powers=powers, pearson=pearson)


def _head_slots(dh: int) -> np.ndarray:
    """Head dims that RoPE leaves alone: all but dims 0 and d_h/2 (rotary pair 0)."""
    return np.array([i for i in range(dh) if i not in (0, dh // 2)], dtype=np.int64)


def _head_adjacency(semcons: Semcons, heads: int) -> list[sp.csr_array | None]:
    """One adjacency per head: semcon i feeds head i mod heads (extra heads stay empty)."""
    out: list[sp.csr_array | None] = [None] * heads
    for i, a in enumerate(semcons.adjacency):
        j = i % heads
        out[j] = a if out[j] is None else (out[j] + a).tocsr()
    return out


def _factor(p: np.ndarray, rank: int, temperature: float, d: int, dh: int):
    """SVD of P truncated to `rank`: W_Q = U√Σ, W_K = V√Σ, scaled so the largest score
    x W_Q W_Kᵀ yᵀ / √d_h over unit-RMS x, y is `temperature`; the value basis is V."""
    u, s, vt = linalg.dense_svd(p, rank)                         # (d, r), (r,), (r, d)
    r = int((s > 0).sum())
    if r == 0:
        return np.zeros((d, 0)), np.zeros((d, 0)), np.zeros((d, 0)), 0
    u, s, vt = u[:, :r], s[:r], vt[:r]
    c = temperature * np.sqrt(dh) / (s[0] * d)                   # ‖x‖² = d for unit-RMS rows
    root = np.sqrt(s * c)
    return u * root, vt.T * root, vt.T, r
