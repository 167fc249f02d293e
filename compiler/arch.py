"""Pass 3 — architecture (interim version; see the helper's full module)."""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order
from scipy.sparse.linalg import eigsh

from compiler import linalg
from compiler.types import Arch, CompileConfig
from graph.errors import GraftError


def derive_arch(adjacency: sp.csr_array, pi: np.ndarray, n_semcons: int, cfg: CompileConfig,
                seed: int) -> Arch:
    derived: dict = {"h_star": n_semcons}
    t = time.perf_counter()
    root = sp.diags_array(np.sqrt(pi))
    m = (root @ adjacency @ root).tocsr()
    k = min(1024, max(min(m.shape) - 1, 1))
    _, s, _ = linalg.randomized_svd(m, k, seed=seed, power_iters=2)
    s = s[s > 0]
    p = s / s.sum() if len(s) else np.ones(1)
    entropy = float(-(p * np.log(p)).sum())
    d_star = _round_d(math.ceil(math.exp(entropy)), n_semcons)
    derived.update(entropy=entropy, d_star=d_star, spectrum_path="randomized", spectrum_seconds=round(time.perf_counter() - t, 3))
    t = time.perf_counter()
    sym = (adjacency + adjacency.T).tocsr()
    lam2 = _lambda2(sym)
    kappa = 0.85 * (1 - lam2)
    diam = _diameter(sym)
    l_star = int(np.clip(diam * math.ceil(math.log(1 / 0.01) / math.log(1 / kappa)), 4, 512)) if kappa > 0 else 4
    derived.update(lambda2=lam2, kappa=kappa, diameter=diam, l_star=l_star, lambda2_seconds=round(time.perf_counter() - t, 3))
    heads = cfg.heads or n_semcons
    d = cfg.d or _round_d(d_star, heads)
    layers = cfg.layers or min(l_star, cfg.max_layers)
    if d % heads or (d // heads) % 2:
        raise GraftError(f"d={d} with heads={heads}: d must be a multiple of heads with an even head size")
    return Arch(derived=derived, d=d, heads=heads, head_dim=d // heads, layers=layers, intermediate=d)


def _round_d(d: int, h: int) -> int:
    step = 2 * h
    d = int(np.clip(d, 64, 4096))
    return int(math.ceil(d / step) * step)


def _lambda2(sym: sp.csr_array) -> float:
    n = sym.shape[0]
    deg = np.asarray(sym.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
    norm = sp.diags_array(inv) @ sym @ sp.diags_array(inv)
    lap = sp.eye_array(n) - norm
    if n <= 2000:
        vals = np.linalg.eigvalsh(lap.toarray())
        return float(max(vals[1], 0.0)) if n > 1 else 0.0
    vals = eigsh(lap, k=2, sigma=-1e-3, which="LM", return_eigenvectors=False)
    return float(max(sorted(vals)[1], 0.0))


def _diameter(sym: sp.csr_array) -> int:
    start = int(np.argmax(np.diff(sym.indptr)))
    best = 0
    for _ in range(2):
        order, pred = breadth_first_order(sym, start, directed=False, return_predecessors=True)
        depth = np.zeros(sym.shape[0], dtype=np.int64)
        for node in order[1:]:
            depth[node] = depth[pred[node]] + 1
        far = int(order[np.argmax(depth[order])])
        best = max(best, int(depth.max()))
        start = far
    return max(best, 1)
