"""Pass 4 — embedding: factorise the adjacency into input and output embeddings.

M ≈ U Σ Vᵀ (randomized SVD; Eckart–Young: the best rank-d approximation). E = U√Σ is the
input embedding and H = V√Σ the output head, so the zero-layer logit of q after p is the
rank-d reconstruction of M[p, q]. Two adjustments, both recorded per row:
- rows of E that are zero (particles with no out-links, most of a hub-heavy graph) are
  filled with the particle's own output vector H_p: after p, predict what is linked from
  the same places as p (its co-cited neighbours) instead of a uniform guess;
- every row of E is scaled to unit RMS. The final RMSNorm makes a row's scale irrelevant to
  the zero-layer ranking, and equal scales keep attention/MLP residuals comparable (tiny
  rows would otherwise be noise that RMSNorm amplifies, DESIGN §6).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from compiler import linalg
from compiler.types import Arch, CompileConfig, Embedding, Vocab

_CHUNK = 8192  # rows per in-place step: the temporaries stay small


def build_embedding(vocab: Vocab, pi: np.ndarray, arch: Arch, cfg: CompileConfig,
                    seed: int, start: np.ndarray | None = None, client=None,
                    scratch: Path | None = None) -> Embedding:
    """Factorise M (A, or diag(√π) A diag(√π) with cfg.focus_weighting) at rank arch.d.

    Args:
        vocab: the vocabulary and its (V, V) adjacency A.
        pi: (V,) focus.
        arch: the architecture (d).
        cfg: randomized SVD accuracy, weighting, BLAS threads and workers.
        seed: from the snapshot id, so two compiles are identical.
        start: (V, s) a warm start (compiler/warm.py): the SVD starts from it and takes
            cfg.warm_power_iters power iterations instead of cfg.power_iters.
        client: a dask.distributed Client (cfg.dask): the SVD runs on its cluster
            (compiler/distributed.py), its row blocks written as Parquet under `scratch`.

    Returns:
        Embedding with E, H (V, d) float32, σ, the fill mask, row scales and P-EMBED.
    """
    m = focus_weighted(vocab.adjacency, pi) if cfg.focus_weighting else vocab.adjacency
    if client is not None:
        from compiler import distributed
        u, s, vt = distributed.randomized_svd(m, arch.d, client, oversample=cfg.oversample,
                                              power_iters=cfg.power_iters, seed=seed,
                                              parts=cfg.dask_parts, folder=scratch)
    else:
        u, s, vt = linalg.randomized_svd(m, arch.d, oversample=cfg.oversample,  # (V, d), (d,), (d, V)
                                         power_iters=cfg.power_iters if start is None
                                         else cfg.warm_power_iters, seed=seed,
                                         threads=cfg.threads, workers=cfg.workers, start=start)
    root = np.sqrt(s).astype(np.float32)
    # In place: at Bostrom scale each (V, d) block is 3 GB, and E, H take over U's and V's.
    e = _scale_columns(u, root)                                 # (V, d) U√Σ
    h = _scale_columns(vt.T, root)                              # (V, d) V√Σ, C order
    del u, vt
    stats = {"p_embed": relative_residual(m, s), "sigma_max": float(s[0]) if len(s) else 0.0,
             "sigma_min": float(s[-1]) if len(s) else 0.0, "rank": int((s > 0).sum())}
    norms = _row_rms(e)                                         # (V,)
    filled = norms <= 1e-6 * max(float(norms.max(initial=0.0)), 1e-30)
    e[filled] = h[filled]
    rms = _row_rms(e)
    scale = np.where(rms > 0, 1.0 / np.maximum(rms, 1e-30), 0.0)  # (V,)
    _scale_rows(e, scale.astype(np.float32))
    stats.update(filled=int(filled.sum()), zero_rows=int((rms == 0).sum()))
    return Embedding(E=e, H=h, sigma=s, filled=filled, scale=scale, stats=stats)


def _scale_columns(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x *= c (per column) in place, a chunk of rows at a time; returns x."""
    for start in range(0, len(x), _CHUNK):
        x[start : start + _CHUNK] *= c
    return x


def _scale_rows(x: np.ndarray, c: np.ndarray) -> None:
    """x *= c (per row) in place, a chunk of rows at a time."""
    for start in range(0, len(x), _CHUNK):
        x[start : start + _CHUNK] *= c[start : start + _CHUNK, None]


def _row_rms(x: np.ndarray) -> np.ndarray:
    """Root mean square of each row in float64, without a float64 copy of x."""
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        block = x[start : start + _CHUNK].astype(np.float64)   # (c, d)
        out[start : start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block)
                                                  / max(x.shape[1], 1))
    return out


def focus_weighted(a: sp.csr_array, pi: np.ndarray) -> sp.csr_array:
    """diag(√π) A diag(√π) (DESIGN §2)."""
    root = sp.diags_array(np.sqrt(pi))
    return (root @ a @ root).tocsr()


def relative_residual(m: sp.csr_array, s: np.ndarray) -> float:
    """P-EMBED ‖M − U Σ Vᵀ‖_F / ‖M‖_F without a dense V×V: U Σ Vᵀ is the projection of M
    onto its top-d left singular space, so the squared residual is ‖M‖² − Σ σᵢ²."""
    total = float((m.data.astype(np.float64) ** 2).sum())
    if total == 0:
        return 0.0
    return float(np.sqrt(max(total - float((s ** 2).sum()), 0.0) / total))
