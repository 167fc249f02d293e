"""Pass 3 — architecture: d* from the focus matrix's spectral entropy, h* semcons, L* mixing."""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order
from threadpoolctl import threadpool_limits

from compiler import linalg
from compiler.types import Arch, CompileConfig
from graph.errors import GraftError

# Letters: V particles; M = diag(√π) A diag(√π) without empty rows and columns, turned tall
# (R, n) so that B = MᵀM is n×n; p SLQ probes, k Lanczos steps.

RANK = 1024                  # σ̂ keeps the top RANK singular values (DESIGN §2)
D_MIN, D_MAX = 64, 4096      # clamp of d*
DIAM_MIN, DIAM_MAX = 4, 512  # clamp of the BFS diameter bound inside L*
DAMPING = 0.85               # κ = DAMPING·|1 − λ₂|
TARGET = 0.01                # L* counts the steps that shrink an error to 1 %
EXACT_SPECTRUM = 1536        # dense Gram eigvalsh up to n = 1536 (~0.5 s on one core)
EXACT_LAMBDA2 = 1000         # dense eigvalsh of the normalised adjacency up to V = 1000
SLQ_STEPS = (300, 400)       # fewest / most Lanczos steps per probe
SLQ_PROBES = 4               # most probes
SLQ_WORK = 1.5e8             # entries × probes × steps: ~1 s at 100k; 3M gets 1 × 300
LANCZOS_STEPS = 300          # cap of the λ₂ Lanczos; it usually stops far earlier


@dataclass(frozen=True)
class Spectrum:
    """The top singular values of the focus matrix: (≤ RANK,) `sigma`, descending; H(σ̂) in
    nats; `path` "exact" (dense Gram), "slq" (stochastic Lanczos quadrature) or "empty"."""

    sigma: np.ndarray
    entropy: float
    path: str
    info: dict = field(default_factory=dict)  # n, and SLQ probes, steps, converged


def derive_arch(adjacency: sp.csr_array, pi: np.ndarray, n_semcons: int, cfg: CompileConfig,
                seed: int) -> Arch:
    """Derive d*, h*, L* from the graph (DESIGN §2, pass 3) and pick the values to use.

    d* = ceil(exp H(σ̂)), σ̂ the top-1024 singular values of M = diag(√π) A diag(√π) over
    their sum, clamped to [64, 4096] (and to ≥ 4·h*, so a head has room beside RoPE pair 0),
    rounded up to a multiple of 2·h* (HF: d % heads == 0; RoPE: even head size). h* = n_semcons. L* = diam · ceil(ln(1/0.01) / ln(1/κ)),
    κ = 0.85·|1 − λ₂|, λ₂ of the normalised Laplacian of A + Aᵀ (0 when disconnected), diam
    a double-sweep BFS bound clamped to [4, 512]. Set cfg.d / heads / layers override; an
    overridden heads count also sets the multiple d is rounded to.

    Args:
        adjacency: (V, V) stake-weighted adjacency, finite and ≥ 0.
        pi: (V,) focus (PageRank) vector, finite and ≥ 0.
        n_semcons: h*, the number of semcons with ⊥ included; ≥ 1.
        cfg: the compile config (overrides and max_layers).
        seed: seeds the SLQ probes and the λ₂ start vector.

    Returns:
        Arch with the used values; `derived` holds d_star, h_star, l_star, entropy,
        effective_rank, spectrum_path, spectrum (sizes), lambda2 (an upper bound on the
        "lanczos" path), lambda2_path, lambda2_steps, kappa, diameter (the BFS bound),
        diameter_clamped, connected and seconds per estimate.

    Raises:
        GraftError: on bad input (every problem listed) or used values HF cannot load.
    """
    a, pi = _validated(adjacency, pi, n_semcons, cfg, seed)
    seconds = {}
    # One BLAS thread: Lanczos and small eigvalsh calls stall with two (PERF), and the
    # float bits then do not depend on the machine's thread count.
    with threadpool_limits(1, "blas"):
        start = time.perf_counter()
        spec = focus_spectrum(focus_matrix(a, pi), seed)
        seconds["spectrum"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        w = (a + a.T).tocsr()  # (V, V) symmetrised stake
        diameter, connected = bfs_diameter(w)
        seconds["diameter"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        if connected and a.shape[0] > 1:
            lam2, lam2_path, lam2_steps = second_eigenvalue(w, seed)
        else:  # several components: a second zero eigenvalue, so κ = 0.85, PageRank's rate
            lam2, lam2_path, lam2_steps = 0.0, "disconnected" if not connected else "trivial", 0
        seconds["lambda2"] = round(time.perf_counter() - start, 3)

    effective = math.exp(spec.entropy)
    d_raw = math.ceil(round(effective, 9))  # exp(ln n) may land a hair above n
    diam_used = int(np.clip(diameter, DIAM_MIN, DIAM_MAX))
    l_star = diam_used * steps_to_mix(lam2)
    heads = cfg.heads or n_semcons
    d = cfg.d or round_hidden(d_raw, heads)
    _check_used(d, heads, cfg)
    derived = {
        "d_star": round_hidden(d_raw, n_semcons) if 2 * n_semcons <= D_MAX else None,
        "h_star": n_semcons, "l_star": l_star, "entropy": spec.entropy,
        "effective_rank": effective, "spectrum_path": spec.path, "spectrum": spec.info,
        "lambda2": lam2, "lambda2_path": lam2_path, "lambda2_steps": lam2_steps,
        "kappa": DAMPING * abs(1.0 - lam2), "diameter": diameter,
        "diameter_clamped": diam_used, "connected": connected, "seconds": seconds,
    }
    return Arch(derived=derived, d=d, heads=heads, head_dim=d // heads,
                layers=cfg.layers or min(l_star, cfg.max_layers),
                intermediate=d)  # the MLP's projected matrix has rank ≤ d


def round_hidden(d_raw: int, heads: int) -> int:
    """Clamp to [64, 4096] and to at least 4·heads when that fits (a head size of 2 is all
    RoPE pair 0, which the compiled heads leave empty: compiler/attention.py), then round up
    to a multiple of 2·heads (an even head size); down to the largest such multiple when
    rounding up passes 4096.

    Raises:
        GraftError: when 2·heads > 4096, so no hidden size in range fits.
    """
    step = 2 * heads
    if step > D_MAX:
        raise GraftError(f"heads={heads} needs a hidden size of at least 2·heads = {step} > "
                         f"{D_MAX}; set CompileConfig(heads=...) lower, or set d explicitly")
    floor = max(D_MIN, 4 * heads) if 4 * heads <= D_MAX else D_MIN
    d = math.ceil(min(max(d_raw, floor), D_MAX) / step) * step
    return d if d <= D_MAX else D_MAX // step * step


def steps_to_mix(lam2: float) -> int:
    """ceil(ln(1/0.01) / ln(1/κ)), κ = 0.85·|1 − λ₂|: steps that shrink an error 100×.

    29 for every λ₂ below ~0.0019. λ₂ > 1 happens only on complete graphs (2 on a single
    link); the modulus is the rate PageRank sees there (the walk's eigenvalue 1 − λ₂ < 0).
    """
    kappa = DAMPING * abs(1.0 - lam2)
    if kappa <= 0.0:
        return 1
    return max(1, math.ceil(math.log(1.0 / TARGET) / math.log(1.0 / kappa)))


def focus_matrix(a: sp.csr_array, pi: np.ndarray) -> sp.csr_array:
    """M = diag(√π) A diag(√π), as a CSR copy."""
    root = np.sqrt(pi)
    m = a.copy()
    m.data *= np.repeat(root, np.diff(m.indptr)) * root[m.indices]
    m.eliminate_zeros()
    return m


def focus_spectrum(m: sp.csr_array, seed: int, exact_max: int = EXACT_SPECTRUM,
                   probes: int | None = None, steps: int | None = None) -> Spectrum:
    """Top-RANK singular values of M and their entropy: exact when small, else SLQ.

    Args:
        m: (V, V) focus matrix, finite.
        seed: seeds the Rademacher probes.
        exact_max: the dense path runs when the shorter side, without empty rows and
            columns, has ≤ this many.
        probes, steps: SLQ size; None picks it from the work (see _slq_budget).

    Returns:
        The Spectrum and the path taken.
    """
    m = _trimmed(m)  # (R, n)
    n = m.shape[1]
    if m.nnz == 0:
        return Spectrum(np.zeros(0), 0.0, "empty", {"n": 0})
    if n <= exact_max:
        ev = la.eigvalsh((m.T @ m).toarray())[::-1][:RANK]  # of the (n, n) Gram MᵀM
        ev[ev <= n * np.finfo(float).eps * ev[0]] = 0.0  # rounding noise of a zero
        return Spectrum(np.sqrt(ev), entropy_of(np.sqrt(ev)), "exact", {"n": n})
    p, k = _slq_budget(m, probes, steps)
    sigma, info = linalg.slq_sigma(m, p, k, np.random.default_rng([seed, 1]), RANK)
    return Spectrum(sigma, entropy_of(sigma), "slq", {"n": n, **info})


def entropy_of(sigma: np.ndarray) -> float:
    """H(σ̂) = −Σ σ̂ ln σ̂ over the top RANK values, σ̂ = σ / Σσ (zeros add nothing)."""
    s = np.sort(np.asarray(sigma, dtype=float))[::-1][:RANK]
    s = s[s > 0]
    p = s / s.sum() if len(s) else s
    return float(-(p * np.log(p)).sum())


def _trimmed(m: sp.csr_array) -> sp.csr_array:
    """M without empty rows and columns, transposed if that makes it tall (R ≥ n)."""
    counts = np.diff(m.indptr)
    used = np.bincount(m.indices, minlength=m.shape[1]) > 0
    # Re-index in place of fancy indexing, which took 1.2 s of 1.7 s at 3M nodes.
    indptr = np.r_[0, np.cumsum(counts[counts > 0])]
    t = sp.csr_array((m.data, (np.cumsum(used) - 1)[m.indices], indptr),
                     shape=(len(indptr) - 1, int(used.sum())))
    return t if t.shape[0] >= t.shape[1] else t.T.tocsr()


def _slq_budget(m: sp.csr_array, probes: int | None, steps: int | None) -> tuple[int, int]:
    """Probes and steps within SLQ_WORK: long chains first, then more probes.

    Against exact spectra (svds; 10k–100k nodes, seven graph families, three seeds) d* came
    out within 4.3 % at 4×400 (up to ~1M nodes), 8 % at 1×300 on 30k–100k graphs (18 % at
    10k); at 3.14M nodes 1×300 to 4×1200 agree within 5 %. 150 steps overestimated d* by up
    to 40 %. Work counts the entries of rows with ≥ 2 (the others fold into a diagonal).
    """
    work = max(m.nnz - int((np.diff(m.indptr) == 1).sum()), m.shape[1])
    if probes is None:
        probes = int(np.clip(SLQ_WORK // (work * SLQ_STEPS[1]), 1, SLQ_PROBES))
    if steps is None:
        steps = int(np.clip(SLQ_WORK // (work * probes), *SLQ_STEPS))
    return probes, steps


# -- L*: λ₂ and the diameter of the symmetrised graph ----------------------------------------
def second_eigenvalue(w: sp.csr_array, seed: int, exact_max: int = EXACT_LAMBDA2,
                      max_steps: int = LANCZOS_STEPS, saturate: bool = True
                      ) -> tuple[float, str, int]:
    """λ₂ of the normalised Laplacian I − S, S = D^-½ W D^-½, of a connected symmetric W.

    Up to `exact_max` nodes: dense eigvalsh. Above: Lanczos on S within u⊥, u = √d/‖√d‖ its
    eigenvector of eigenvalue 1. The largest Ritz value θ is a Rayleigh quotient there, so
    1 − θ ≥ λ₂, tightening every step. It stops when θ's residual bound is ≤ 1e-3·(1 − θ),
    or (`saturate`) once steps_to_mix(1 − θ) == steps_to_mix(0): every λ₂ in [0, 1 − θ]
    then gives the same L* (so for λ₂ < 0.0019; PERF's 3M graph has 6e-4). Lanczos, not the
    lazy power iteration's residual ratio: on a 1000-ring 2000 power steps still
    overestimated λ₂ 20×, 150 Lanczos steps 5×, and 28 reach the saturation bound.

    Returns:
        (λ₂ or its upper bound, "exact" | "lanczos", Lanczos steps taken).
    """
    root = np.sqrt(np.asarray(w.sum(axis=1)).ravel())  # (V,) √degree, > 0 when connected
    s = w.copy()
    s.data /= np.repeat(root, np.diff(s.indptr)) * root[s.indices]
    if w.shape[0] <= exact_max:
        mu = la.eigvalsh(s.toarray())
        return float(np.clip(1.0 - mu[-2], 0.0, 2.0)), "exact", 0
    u = root / np.linalg.norm(root)
    q = np.random.default_rng([seed, 2]).choice([-1.0, 1.0], w.shape[0])
    q -= u * (u @ q)
    q /= np.linalg.norm(q)
    prev, tmp = np.zeros_like(q), np.empty_like(q)  # reused buffers: (V,) each
    beta, alphas, betas, lam = 0.0, [], [], 1.0
    for k in range(1, max_steps + 1):
        x = s @ q
        x -= np.multiply(u, u @ x, out=tmp)  # rounding would regrow the eigenvalue-1 direction
        alpha = float(q @ x)
        x -= np.multiply(q, alpha, out=tmp)
        x -= np.multiply(prev, beta, out=tmp)
        beta = math.sqrt(x @ x)
        alphas.append(alpha)
        betas.append(beta)
        if k % 4 == 0 or k == max_steps or beta <= 1e-12:
            theta, y = la.eigh_tridiagonal(np.array(alphas), np.array(betas[:-1]),
                                           select="i", select_range=(k - 1, k - 1))
            lam = 1.0 - float(theta[0])
            if (beta <= 1e-12 or beta * abs(y[-1, 0]) <= 1e-3 * max(lam, 1e-12)
                    or (saturate and lam < 1 and steps_to_mix(lam) == steps_to_mix(0))):
                break
        prev, q = q, prev
        np.divide(x, beta, out=q)
    return float(np.clip(lam, 0.0, 2.0)), "lanczos", k


def bfs_diameter(w: sp.csr_array) -> tuple[int, bool]:
    """Double-sweep BFS lower bound on the diameter, and whether the graph is connected.

    BFS from the node with the most distinct neighbours (the first on ties) to a farthest
    node f, then BFS from f: the larger eccentricity bounds the diameter of that component
    from below (exactly on trees). The first sweep reaching every node means connected.

    Args:
        w: (V, V) symmetric sparse adjacency; its pattern is what counts.

    Returns:
        (hops, connected).
    """
    start = int(np.argmax(np.diff(w.indptr)))
    order, pred = breadth_first_order(w, start, directed=True, return_predecessors=True)
    far = int(order[-1])  # BFS order is by distance
    order2, pred2 = breadth_first_order(w, far, directed=True, return_predecessors=True)
    return max(_depth(pred, far), _depth(pred2, int(order2[-1]))), len(order) == w.shape[0]


def _depth(pred: np.ndarray, node: int) -> int:
    """Hops from the BFS root to `node` along the predecessor tree (root: pred < 0)."""
    hops = 0
    while pred[node] >= 0:
        node, hops = int(pred[node]), hops + 1
    return hops


# -- checks ----------------------------------------------------------------------------------
def _check_used(d: int, heads: int, cfg: CompileConfig) -> None:
    """HF Llama needs hidden_size % heads == 0 and RoPE an even head size; say how to fix."""
    if d % heads == 0 and (d // heads) % 2 == 0:
        return
    why = (f"d={d} is not a multiple of heads={heads}" if d % heads
           else f"head size d/heads = {d}/{heads} = {d // heads} is odd (RoPE needs it even)")
    source = (f"d from {'CompileConfig.d' if cfg.d else 'd*'}, heads from "
              f"{'CompileConfig.heads' if cfg.heads else 'h* (the number of semcons)'}")
    fix = math.ceil(d / (2 * heads)) * 2 * heads
    raise GraftError(f"architecture: {why} ({source}); HF Llama needs hidden_size % "
                     f"num_attention_heads == 0 and an even head_dim: use d={fix} (the next "
                     f"multiple of 2·heads), or set heads to a divisor of d with an even quotient")


def _validated(adjacency: object, pi: object, n_semcons: object, cfg: object,
               seed: object) -> tuple[sp.csr_array, np.ndarray]:
    """A float64 CSR copy (duplicates summed, zeros dropped) and π; raises on every problem."""
    problems, a = [], None
    if not (isinstance(n_semcons, numbers.Integral) and not isinstance(n_semcons, bool)
            and n_semcons >= 1):
        problems.append(f"n_semcons must be an integer ≥ 1 (⊥ included), got {n_semcons!r}")
    if not isinstance(cfg, CompileConfig):
        problems.append(f"cfg must be a CompileConfig, got {type(cfg).__name__}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        problems.append(f"seed must be an integer, got {seed!r}")
    shape = getattr(adjacency, "shape", None)
    if not sp.issparse(adjacency) or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        problems.append("adjacency must be a square V×V scipy sparse array with V ≥ 1, got "
                        f"{type(adjacency).__name__} of shape {shape}")
    else:
        try:
            a = sp.csr_array(adjacency, dtype=np.float64, copy=True)
            a.sum_duplicates()
        except (TypeError, ValueError) as exc:
            problems.append(f"adjacency is not numeric: {exc}")
    bad = None if a is None else ~(np.isfinite(a.data) & (a.data >= 0))
    if bad is not None and bad.any():
        problems.append(f"adjacency has {int(bad.sum())} entries that are negative or not "
                        "finite (stakes are finite and ≥ 0)")
    try:
        p = np.asarray(pi, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.full(1, np.nan)
    if p.ndim != 1 or (a is not None and p.shape[0] != a.shape[0]):
        problems.append(f"pi must have shape ({a.shape[0] if a is not None else 'V'},), "
                        f"got {p.shape}")
    elif not (np.isfinite(p).all() and (p >= 0).all() and p.sum() > 0):
        problems.append("pi must be finite, ≥ 0 and not all zero")
    if problems:
        raise GraftError("derive_arch: " + "; ".join(problems))
    a.eliminate_zeros()
    return a, p
