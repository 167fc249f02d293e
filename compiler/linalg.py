"""Truncated SVDs, sparse powers, correlation, spectrum estimates: the compiler's linear algebra.

Nothing here knows about graphs or HF. Stochastic Lanczos quadrature (the architecture's
spectrum estimate) is at the end. Letters in shape comments: m, n the input's rows and
columns; m0, n0 its non-empty rows and columns; k the rank asked for; l = k + oversample;
w a block's current width (l, or less once a rank-deficient block is narrowed); r ≤ w the
width of the second block; c rows in a chunk; j the columns of a dense block.

One sign convention throughout: each singular pair is flipped so the largest-|x| entry of
its U column is positive (ties: the lowest row). Singular values past the numerical rank
come back as 0 with zero columns in U and V, never as rounding noise.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from graph.errors import GraftError

try:  # y += A x into a buffer we own: `A @ x` would page in a fresh block every product
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - scipy moved its private kernels
    _csr_matvecs = None

_CHUNK = 8192              # rows per BLAS call on a tall block: small temporaries, warm cache
_SLAB = 64                 # columns of a float32 block widened at once for a float64 product
_SCALE_FREE = 256          # power blocks are rescaled once their largest entry leaves 2^±this
_DENSE_MAX = 1 << 24       # entries of a non-empty part we densify for an exact SVD
_RANK_TOL32 = 1e-5         # σ/σ₁ below this is float32 rounding (measured ≤ 1e-7): reported 0
# Squared pivots of a unit-diagonal Gram below these are unresolved: float32 sums carry
# ~1e-5 relative error; exact sums of float32 data stop at the data's rounding (~eps32²).
_PIVOT_TOL = {False: 1e-4, True: 1e-12}
_MAX_PASSES = 6            # Gram passes (an exact retry counts one) before we take the result


class _Blocks:
    """Runs a kernel's row blocks in order, or on `workers` threads (numpy's GEMMs and
    scipy's sparse kernels release the GIL). Every block does the same work whichever
    thread runs it and results are combined in block order, so the float bits do not
    depend on the number of workers; BLAS stays at its own thread setting inside each."""

    def __init__(self, workers: int = 1):
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.workers = workers

    def __enter__(self) -> _Blocks:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def map(self, fn, items) -> list:
        return list(self.pool.map(fn, items)) if self.pool else [fn(i) for i in items]


_SERIAL = _Blocks(1)


def randomized_svd(a: sp.csr_array, k: int, *, oversample: int = 10, power_iters: int = 4,
                   seed: int, threads: int = 1, workers: int = 1,
                   start: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD a ≈ U diag(s) Vt by the Halko–Martinsson–Tropp range finder.

    All-zero rows and columns are dropped before the dense work and come back as zero rows
    of U and zero columns of Vt. Dense blocks are float32, Gram matrices float64; blocks are
    orthonormalised by Cholesky-QR on the Gram (see _power_pass, _orthonormalise). When
    k + oversample reaches the smaller non-empty side of a small matrix, the SVD is exact.

    Args:
        a: (m, n) sparse matrix with finite entries.
        k: triplets wanted (>= 1); may exceed the rank.
        oversample: extra sketch columns (>= 0).
        power_iters: subspace iterations (>= 0), each two sparse products and one
            orthonormalisation; they sharpen a slowly decaying spectrum.
        seed: seeds the numpy Generator that draws the test matrix.
        threads: BLAS threads while this runs; float bits depend on it, so pin it.
        workers: threads for the row-block kernels (Grams, sparse products, same-width
            rotations); float bits do not depend on it.
        start: (n, s) a guess at the leading right singular vectors (a warm start: the
            previous compile's, rows of new columns zero); the test matrix's first
            min(s, k + oversample − ⌈oversample/2⌉) columns are it, the rest random, so
            fewer power iterations reach the same accuracy.

    Returns:
        U (m, k) float32, s (k,) float64 descending, Vt (k, n) float32 — Vt is the
        transpose view of a C-contiguous (n, k) array. Missing singular values are 0.
    """
    a = _check_sparse(a, k, oversample, power_iters, threads, workers)
    m, n = a.shape
    rows = np.flatnonzero(np.diff(a.indptr))
    cols = np.flatnonzero(np.bincount(a.indices, minlength=n))
    with threadpool_limits(threads, "blas"), _Blocks(workers) as run:
        b = a[rows][:, cols]                                    # (m0, n0)
        m0, n0 = b.shape
        l = min(k + oversample, m0, n0)
        # The outputs double as work blocks: (m0, l) sketches first, (m, k) results last.
        ubuf = np.empty(max(m0 * l, m * k), np.float32)
        vbuf = np.empty(max(n0 * l, n * k), np.float32)
        if b.nnz == 0:
            s = np.zeros(k)
        elif k + oversample >= min(m0, n0) and m0 * n0 <= _DENSE_MAX:
            s = _exact_into(b.toarray().astype(np.float64), k, ubuf, vbuf)
        else:
            # Unit Frobenius norm: float32 blocks meet b's entries cubed.
            norm = float(np.linalg.norm(b.data))
            b = (b * (1.0 / norm)).astype(np.float32)
            rng = np.random.default_rng(seed)
            guess = None
            if start is not None:            # on the side the sketch starts from
                v0 = np.asarray(start, dtype=np.float32)[cols]               # (n0, s)
                guess = v0 if m0 <= n0 else b @ v0                            # or (m0, s) ≈ UΣ
            # The shorter side carries the sketch: it is orthonormalised every iteration.
            if m0 <= n0:
                s = norm * _sketch_svd(b, k, l, power_iters, rng, ubuf, vbuf, run, guess)
            else:
                s = norm * _sketch_svd(b.T.tocsr(), k, l, power_iters, rng, vbuf, ubuf, run,
                                       guess)
        _apply_signs(ubuf[: m0 * k].reshape(m0, k), vbuf[: n0 * k].reshape(n0, k), s)
        u = _scatter_rows(ubuf, rows, m, k)                     # (m, k)
        v = _scatter_rows(vbuf, cols, n, k)                     # (n, k)
    return u, s, v.T


def dense_svd(p: np.ndarray, k: int, *, threads: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact SVD of a small dense matrix truncated to k, with the module's sign convention.

    Args:
        p: (m, n) finite matrix (a d×d attention or MLP projection).
        k: triplets wanted (>= 1); past the numerical rank (numpy's matrix_rank
            tolerance) they come back as zeros.
        threads: BLAS threads while this runs.

    Returns:
        U (m, k) float32, s (k,) float64 descending, Vt (k, n) float32.
    """
    p = np.asarray(p)
    problems = _bad_ints(k=(k, 1), threads=(threads, 1))
    if p.ndim != 2 or p.size == 0:
        problems.append(f"p has shape {p.shape} (expected a non-empty 2-D matrix)")
    elif not np.isfinite(p).all():
        problems.append("p has non-finite entries")
    if problems:
        raise GraftError("dense_svd: " + "; ".join(problems))
    m, n = p.shape
    u, v = np.empty(m * k, np.float32), np.empty(n * k, np.float32)
    with threadpool_limits(threads, "blas"):
        s = _exact_into(p.astype(np.float64), k, u, v)
    u, v = u.reshape(m, k), v.reshape(n, k)                     # (m, k), (n, k)
    _apply_signs(u, v, s)
    return u, s, np.ascontiguousarray(v.T)


def power_projections(a: sp.csr_array, x: np.ndarray, powers: list[int], workers: int = 1,
                      x_rows: np.ndarray | None = None) -> list[tuple[np.ndarray, int]]:
    """xᵀ aᵖ x for each p, by repeated sparse products on the rows still reached.

    Row i of aᵖ x is zero unless a path of length p leaves i, and row i of (aᵀ)ᵖ x unless
    one arrives at i; on a sparse graph either set thins out fast with p. Since
    xᵀ aᵖ x = ((aᵀ)ᵖ x)ᵀ x, the walk goes whichever way leaves fewer rows to project
    (counted first with boolean products), and every product and projection runs on the
    live rows only. At 3.14M particles the ⊥ semcon keeps 755k / 153k / 96k rows at
    p = 1 / 3 / 15 walking forward, 391k / 17k / 2 walking backward.
    Blocks are float64 (float32 sums moved compiled heads by ~1e-4, more than provenance's
    first-order split tolerates) and rescaled by a power of two when their entries leave
    2^±256, which is exact, so high powers neither overflow nor underflow.

    Args:
        a: (n, n) sparse matrix with finite entries.
        x: (n, j) dense block, or with x_rows any (N, j) block.
        powers: ascending powers >= 0 (repeats allowed); each extends the last.
        workers: threads for the row-block products; float bits do not depend on it.
        x_rows: (n,) row of x for each row of a: the block is x[x_rows], read a slab or a
            chunk at a time instead of gathered whole (a's support in a big embedding would
            be a copy of most of it). The result equals passing x[x_rows], bit for bit.

    Returns:
        One (P, e) per power with xᵀ aᵖ x = 2^e · P, P (j, j) float64; all zero once no
        path of length p exists.
    """
    a, x, steps = sp.csr_array(a), np.asarray(x), [int(q) for q in powers]
    problems = []
    if a.shape[0] != a.shape[1]:
        problems.append(f"a has shape {a.shape} (expected square)")
    if x_rows is None:
        if x.ndim != 2 or x.shape[0] != a.shape[1]:
            problems.append(f"x has shape {x.shape} (does not fit a of shape {a.shape})")
    else:
        x_rows = np.asarray(x_rows)
        if x.ndim != 2 or x_rows.shape != (a.shape[1],) or x_rows.dtype.kind not in "iu":
            problems.append(f"x has shape {x.shape} and x_rows shape {x_rows.shape} dtype "
                            f"{x_rows.dtype} (expected 2-d x and {a.shape[1]} integer rows)")
        elif len(x_rows) and (x_rows.min() < 0 or x_rows.max() >= x.shape[0]):
            problems.append(f"x_rows reach outside x's {x.shape[0]} rows")
    if any(q < 0 for q in steps) or steps != sorted(steps):
        problems.append(f"powers={list(powers)} (expected ascending and >= 0)")
    if a.nnz and not np.isfinite(a.data).all():
        problems.append("a has non-finite entries")
    problems += _bad_ints(workers=(workers, 1))
    if problems:
        raise GraftError("power_projections: " + "; ".join(problems))
    a = a.astype(np.float64)                                    # a copy we may scale
    a.sum_duplicates()
    a.eliminate_zeros()
    back = a.T.tocsr()
    wanted = set(steps)
    backward = (sum(_live_counts(back, steps)[q] for q in wanted)
                < sum(_live_counts(a, steps)[q] for q in wanted))
    walk = back if backward else a
    # y = 2^-shift walkᵖ x on rows; at p = 0 it is x itself, read through x_rows
    rows, y, shift, at = np.arange(a.shape[0]), x, 0, 0
    out = []
    with _Blocks(workers) as run:
        for q in steps:
            while at < q and len(rows):
                sub = walk[:, rows]                             # (n, live): columns still reached
                reached = np.flatnonzero(np.diff(sub.indptr))
                y = _scaled(_spmm_wide(sub[reached], y, run, x_rows if at == 0 else None))
                rows, shift, at = reached, shift + y[1], at + 1  # y: (live', j)
                y = y[0]
            if at < q or not len(rows):                         # no path of length q
                out.append((np.zeros((x.shape[1], x.shape[1])), 0))
                continue
            p = _cross(x, rows if x_rows is None else x_rows[rows], y, run)   # x[rows]ᵀ walkᵖ x
            out.append((np.ascontiguousarray(p.T) if backward else p, shift))
    return out


def _live_counts(a: sp.csr_array, powers: list[int]) -> dict[int, int]:
    """For each p in powers, how many rows of aᵖ (stored entries, no cancellation) are
    non-empty: boolean products from all ones."""
    live = np.ones(a.shape[0], np.float32)
    pattern = sp.csr_array((np.ones(a.nnz, np.float32), a.indices, a.indptr), shape=a.shape)
    counts, at = {0: a.shape[0]}, 0
    for q in powers:
        while at < q and live.any():
            live = (pattern @ live > 0).astype(np.float32)
            at += 1
        counts[q] = int(live.sum()) if at == q else 0
    return counts


def _spmm_wide(b: sp.csr_array, x: np.ndarray, run: _Blocks = _SERIAL,
               rows: np.ndarray | None = None) -> np.ndarray:
    """b @ x (float64) for float64 csr b and a float32 or float64 block x (or x[rows]),
    widening and gathering x a slab of columns at a time so no float64 copy or gather of
    all of it is made."""
    out = np.empty((b.shape[0], x.shape[1]))
    if x.dtype == np.float64 and rows is None:
        _spmm(b, np.ascontiguousarray(x), out, run)
        return out
    n = x.shape[0] if rows is None else len(rows)
    part = dest = None
    for start in range(0, x.shape[1], _SLAB):
        width = min(_SLAB, x.shape[1] - start)
        if part is None or part.shape[1] != width:              # contiguous, both of them
            part, dest = np.empty((n, width)), np.empty((b.shape[0], width))
        for c in range(0, n, _CHUNK):                           # (n, width) float64, by chunks
            idx = slice(c, c + _CHUNK) if rows is None else rows[c : c + _CHUNK]
            part[c : c + _CHUNK] = x[idx, start : start + width]
        _spmm(b, part, dest, run)
        out[:, start : start + width] = dest
    return out


def _scaled(y: np.ndarray) -> tuple[np.ndarray, int]:
    """(y · 2^-e, e), exact as a power of two: e = 0 while the largest |entry| is within
    2^±256 (one read of y, no write), else the largest |entry| is brought into [0.5, 1)."""
    top = max(float(y.max(initial=0.0)), -float(y.min(initial=0.0)))
    if top == 0 or not np.isfinite(top):
        return y, 0
    e = int(np.frexp(top)[1])
    if abs(e) <= _SCALE_FREE:
        return y, 0
    y *= np.ldexp(1.0, -e)
    return y, e


def _cross(x: np.ndarray, rows: np.ndarray, y: np.ndarray, run: _Blocks = _SERIAL
           ) -> np.ndarray:
    """x[rows]ᵀ y (j, j) in float64, gathering and widening x a chunk of rows at a time;
    chunk products are summed in chunk order."""
    def part(start: int) -> np.ndarray:
        block = x[rows[start : start + _CHUNK]].astype(np.float64)            # (c, j)
        return block.T @ y[start : start + _CHUNK]

    acc = np.zeros((x.shape[1], y.shape[1]))
    for p in run.map(part, range(0, len(rows), _CHUNK)):
        acc += p
    return acc


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays, flattened, in float64.

    Nan-safe: a constant input has no variance and an undefined correlation; it gives 0.0.

    Args:
        x, y: finite arrays of one shape with at least one entry.

    Returns:
        The correlation in [-1, 1].
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size == 0:
        raise GraftError(f"pearson: shapes {x.shape} and {y.shape} (expected one, non-empty)")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise GraftError("pearson: non-finite input")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # exact test: centring a constant leaves ulp noise
        return 0.0
    dx, dy = (x - x.mean()).ravel(), (y - y.mean()).ravel()
    r = float(dx @ dy) / (float(np.linalg.norm(dx)) * float(np.linalg.norm(dy)))
    return min(1.0, max(-1.0, r))


# -- the sketch ------------------------------------------------------------------------------
def _sketch_svd(b: sp.csr_array, k: int, l: int, power_iters: int, rng: np.random.Generator,
                ubuf: np.ndarray, vbuf: np.ndarray, run: _Blocks = _SERIAL,
                guess: np.ndarray | None = None) -> np.ndarray:
    """Range finder on float32 b (m0, n0): leaves U (m0, k) at ubuf's start and V (n0, k)
    at vbuf's, C order; returns s (k,), zero past the numerical rank. `guess` (n0, s): the
    test matrix's leading columns (a warm start), each scaled to the random ones' norm."""
    bt = b.T.tocsr()
    m0, n0 = b.shape
    z = vbuf[: n0 * l].reshape(n0, l)                           # (n0, l) test matrix Ω
    rng.random(out=z, dtype=np.float32)
    z -= 0.5                                                    # mean 0; the scale is moot
    if guess is not None and guess.shape[1]:
        w = min(guess.shape[1], l - (l - k + 1) // 2)             # keep random columns too
        norms = np.sqrt(np.einsum("ij,ij->j", guess[:, :w], guess[:, :w]))
        scale = (np.sqrt(n0 / 12.0) / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        for j in np.flatnonzero(norms > 0):                     # the rest stay random; column
            np.multiply(guess[:, j], scale[j], out=z[:, j])     # by column: no (n0, w) copies
    y = ubuf[: m0 * l].reshape(m0, l)                           # (m0, l)
    _spmm(b, z, y, run)
    if guess is not None:
        # b·(leading singular vectors) are graded by σ (κ(y) = σ₁/σ_k): Cholesky-QR on that
        # Gram fails over to its slow path. Unit columns span the same range, near-orthogonal.
        norms = np.linalg.norm(y, axis=0)
        y /= np.where(norms > 0, norms, 1.0).astype(np.float32)
    for i in range(power_iters):
        # b bᵀ applied whole, one orthonormalisation per iteration: the block meets κ(b)²
        # (κ(b)³ the first time). Measured: as accurate as HMT's extra pass after b Ω.
        z = vbuf[: n0 * y.shape[1]].reshape(n0, y.shape[1])     # (n0, w)
        _spmm(bt, y, z, run)
        _spmm(b, z, y, run)
        y = _power_pass(y, ubuf, aligned=i > 0, run=run)
    y, r_y, _ = _orthonormalise(y, ubuf, run=run)               # Q = y r_y⁻¹ (m0, w)
    z = vbuf[: n0 * y.shape[1]].reshape(n0, y.shape[1])         # (n0, w) bᵀ y = Bᵀ r_y
    _spmm(bt, y, z, run)
    z, r_z, f = _orthonormalise(z, vbuf, pending=r_y, run=run)  # Bᵀ ≈ (z r_z⁻¹) f, f (r, w)
    # B = Qᵀ b = fᵀ (z r_z⁻¹)ᵀ: the SVD of the small fᵀ rotates both bases.
    uf, s, vft = np.linalg.svd(f.T, full_matrices=False)       # (w, r), (r,), (r, r)
    keep = min(k, len(s))
    s = np.concatenate([s[:keep], np.zeros(k - keep)])
    s[s <= _RANK_TOL32 * s[0]] = 0.0
    _right_multiply(y, sla.solve_triangular(r_y, uf[:, :keep]), ubuf, k)        # U (m0, k)
    _right_multiply(z, sla.solve_triangular(r_z, vft[:keep].T), vbuf, k)       # V (n0, k)
    return s


def _power_pass(x: np.ndarray, buf: np.ndarray, aligned: bool, run: _Blocks = _SERIAL
                ) -> np.ndarray:
    """Orthonormalise x well enough to iterate on; returns the block (at buf's start).

    Once x's columns are near its principal directions (aligned), their unit-diagonal
    Gram is near I and float32 sums (accurate per entry) suffice for Cholesky-QR. A first
    block, or one whose Cholesky fails, gets the exact Gram's eigenbasis instead, which
    aligns the columns. Its eigenvalues get a tiny shift rather than a cut, so directions
    lost below float32 rounding stay in the block (small) and can grow back."""
    if aligned:
        r = _cholesky(_gram(x, False, run), _PIVOT_TOL[False])
        if r is not None:
            _solve_right(x, r)
            return x
    t, _ = _eigen_factor(_gram(x, True, run), _PIVOT_TOL[True], shift=True)
    return _right_multiply(x, t, buf, run=run)


def _orthonormalise(x: np.ndarray, buf: np.ndarray, pending: np.ndarray | None = None,
                    run: _Blocks = _SERIAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormalise the block x p⁻¹ (p = pending, upper triangular; I when None) by
    Cholesky-QR passes until its Gram is within 0.1 of I (CholeskyQR2 when the block is
    well conditioned). The last factor is left for the caller to fold into its next
    product. Returns (x', r, f): x' r⁻¹ is orthonormal and x p⁻¹ ≈ (x' r⁻¹) f.

    A Gram too ill-conditioned for float32 sums is recomputed exactly; one singular even
    then gets an eigen pass that drops the missing directions, so x' (a view at buf's
    start) may be narrower than x."""
    p = np.eye(x.shape[1]) if pending is None else pending
    f = np.eye(x.shape[1])
    exact = False
    for attempt in range(_MAX_PASSES):
        g = _congruent(_gram(x, exact, run), p)                 # (w, w) Gram of x p⁻¹
        r = _cholesky(g, _PIVOT_TOL[exact])
        if r is None and not exact:
            exact = True
            continue
        if r is None:
            t, fe = _eigen_factor(g, _PIVOT_TOL[True])
            x = _right_multiply(x, sla.solve_triangular(p, t), buf, run=run)
            p, f, exact = np.eye(x.shape[1]), fe @ f, False
            continue
        if np.abs(g - np.eye(len(g))).max() <= 0.1 or attempt == _MAX_PASSES - 1:
            return x, r @ p, r @ f
        _solve_right(x, r @ p)
        p, f, exact = np.eye(len(r)), r @ f, False
    return x, p, f  # the last pass was an eigen pass: as orthonormal as this block gets


def _cholesky(g: np.ndarray, tol: float) -> np.ndarray | None:
    """Upper R with RᵀR = g, via the unit-diagonal scaling of g; None when g is not
    numerically positive definite (a squared pivot of the scaled g below tol)."""
    diag = np.diag(g)
    if not (diag > 0).all():  # rounding can leave a dependent column's entry at -1e-11
        return None
    d = np.sqrt(diag)
    try:
        rs = np.linalg.cholesky(g / np.outer(d, d)).T           # (w, w) upper
    except np.linalg.LinAlgError:
        return None
    return None if np.diag(rs).min() ** 2 < tol else rs * d


def _eigen_factor(g: np.ndarray, tol: float, shift: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(t, f) with x t orthonormal and x ≈ (x t) f, from the eigenbasis of the unit-
    diagonal Gram, largest first (SVQB, Stathopoulos & Wu 2002). Directions below tol of
    the largest eigenvalue are dropped, or with `shift` kept, damped by (λ + tol·λ₁)^-½."""
    d = np.sqrt(np.maximum(np.diag(g), 0.0))
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    lam, vec = np.linalg.eigh(g * np.outer(inv, inv))           # ascending
    floor = tol * max(float(lam[-1]), np.finfo(np.float64).tiny)
    if shift:
        lam = np.maximum(lam, 0.0) + floor
    keep = lam > floor
    lam, vec = lam[keep][::-1], vec[:, keep][:, ::-1]           # (w',), (w, w')
    return (inv[:, None] * vec) / np.sqrt(lam), (np.sqrt(lam)[:, None] * vec.T) * d


def _congruent(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """p⁻ᵀ g p⁻¹ for symmetric g and upper-triangular p."""
    h = sla.solve_triangular(p, g, trans="T")                   # p⁻ᵀ g
    h = sla.solve_triangular(p, h.T, trans="T")                 # p⁻ᵀ (p⁻ᵀ g)ᵀ
    return (h + h.T) / 2


# -- kernels on tall float32 blocks, in place ------------------------------------------------
def _spmm(b: sp.csr_array, x: np.ndarray, out: np.ndarray, run: _Blocks = _SERIAL) -> None:
    """out = b @ x for csr b and C-contiguous blocks of its dtype, into out's memory; with
    workers, in row blocks of about equal entries (each row's sum is the same either way)."""
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        # the kernel writes through out.ravel(): on a strided view that is a copy, lost
        raise ValueError("_spmm needs C-contiguous x and out")
    if _csr_matvecs is None:  # pragma: no cover
        np.copyto(out, b @ x)
        return
    parts = 1 if run.pool is None else 4 * run.workers
    cuts = np.searchsorted(b.indptr, np.linspace(0, b.nnz, parts + 1)[1:-1])
    bounds = np.unique(np.r_[0, cuts, b.shape[0]])              # row block edges
    flat = x.ravel()

    def block(i: int) -> None:
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        rows = out[lo:hi]
        rows.fill(0.0)
        # indptr[lo:hi+1] holds absolute offsets into indices and data: no copies
        _csr_matvecs(hi - lo, b.shape[1], x.shape[1], b.indptr[lo : hi + 1], b.indices,
                     b.data, flat, rows.ravel())

    run.map(block, range(len(bounds) - 1))


def _gram(x: np.ndarray, exact: bool, run: _Blocks = _SERIAL) -> np.ndarray:
    """xᵀx (w, w) in float64 over chunks of rows, summed in chunk order. Not exact: float32
    GEMMs summed in float64, each entry good to ~1e-5 of |x_i|·|x_j|, at twice DGEMM's
    rate. Exact: each chunk widened to float64, where products of float32 numbers are exact."""
    w = x.shape[1]

    def part(start: int) -> np.ndarray:
        block = x[start : start + _CHUNK]                       # (c, w)
        if exact:
            block = block.astype(np.float64)
        return block.T @ block                                  # (w, w)

    g = np.zeros((w, w))
    for p in run.map(part, range(0, len(x), _CHUNK)):
        g += p
    return (g + g.T) / 2


def _solve_right(x: np.ndarray, r: np.ndarray) -> None:
    """x ← x r⁻¹ for upper-triangular r: x is C order, so xᵀ is a Fortran block that
    STRSM overwrites from the left."""
    r32 = np.asarray(r, np.float32, order="F")
    for start in range(0, len(x), _CHUNK):
        blas.strsm(1.0, r32, x[start : start + _CHUNK].T, side=0, lower=0, trans_a=1,
                   overwrite_b=1)


def _right_multiply(x: np.ndarray, c: np.ndarray, buf: np.ndarray,
                    width: int | None = None, run: _Blocks = _SERIAL) -> np.ndarray:
    """x @ c over x's own memory, which starts buf; returns the (rows, width) view, zero
    past c's columns (width defaults to c's). Row i's result lands only on rows already
    read because c is no wider than x (a wider width is spread back to front after)."""
    rows, live = len(x), c.shape[1]
    width = live if width is None else width
    assert live <= x.shape[1] and live <= width and np.shares_memory(x, buf)
    out = buf[: rows * live].reshape(rows, live)
    c32 = np.asarray(c, np.float32)
    if live == x.shape[1] and run.pool is not None:
        # Same width: each chunk's result goes back onto its own rows, so chunks are
        # independent and may run on any thread.
        def chunk(start: int) -> None:
            out[start : start + _CHUNK] = x[start : start + _CHUNK] @ c32

        run.map(chunk, range(0, rows, _CHUNK))
    else:
        tmp = np.empty((min(_CHUNK, rows), live), np.float32)
        for start in range(0, rows, _CHUNK):
            part = tmp[: min(_CHUNK, rows - start)]
            np.matmul(x[start : start + _CHUNK], c32, out=part)
            out[start : start + len(part)] = part
    if width > live:  # a block narrowed by its rank below k: rare and small, so copy
        out = out.copy()
        full = buf[: rows * width].reshape(rows, width)
        full[:, live:] = 0.0
        full[:, :live] = out
        out = full
    return out


def _scatter_rows(buf: np.ndarray, rows: np.ndarray, total: int, width: int) -> np.ndarray:
    """Spread the (len(rows), width) block at buf's start onto rows `rows` of a (total,
    width) array in the same memory, zero elsewhere. Back to front: rows[i] >= i, so a
    row only lands on rows already moved."""
    out = buf[: total * width].reshape(total, width)
    if len(rows) < total:
        src = buf[: len(rows) * width].reshape(len(rows), width)
        for end in range(len(rows), 0, -_CHUNK):
            start = max(0, end - _CHUNK)
            out[rows[start:end]] = src[start:end].copy()
        empty = np.ones(total, bool)
        empty[rows] = False
        out[empty] = 0.0
    return out


def _apply_signs(u: np.ndarray, v: np.ndarray, s: np.ndarray) -> None:
    """Flip pairs in place so each U column's largest-|x| entry is positive (the first
    such row on ties: argmax, then a strict > across chunks); zero the pairs with s = 0."""
    k = u.shape[1]
    best, at_best = np.full(k, -1.0, np.float32), np.zeros(k, np.float32)
    for start in range(0, len(u), _CHUNK):
        block = u[start : start + _CHUNK]                       # (c, k)
        mag = np.abs(block)
        idx = mag.argmax(axis=0)
        top = mag[idx, np.arange(k)]
        better = top > best
        best[better] = top[better]
        at_best[better] = block[idx[better], np.arange(k)[better]]
    signs = (np.where(at_best < 0, -1.0, 1.0) * (s > 0)).astype(np.float32)
    for x in (u, v):
        for start in range(0, len(x), _CHUNK):
            x[start : start + _CHUNK] *= signs


def _exact_into(p: np.ndarray, k: int, ubuf: np.ndarray, vbuf: np.ndarray) -> np.ndarray:
    """Exact float64 SVD of dense p (m0, n0): U (m0, k) and V (n0, k) at the buffers'
    starts as float32, zero past the rank (numpy's matrix_rank tolerance); returns s."""
    m0, n0 = p.shape
    if 4 * k <= min(m0, n0) and min(m0, n0) >= 256:
        u, s, vt = _top_svd(p, k)          # a few heads' worth of a d×d P: ~5-10× faster
    else:
        u, s, vt = np.linalg.svd(p, full_matrices=False)        # (m0, p), (p,), (p, n0)
    keep = min(k, len(s))
    s = np.concatenate([s[:keep], np.zeros(k - keep)])
    s[s <= max(m0, n0) * np.finfo(np.float64).eps * s[0]] = 0.0
    u0, v0 = ubuf[: m0 * k].reshape(m0, k), vbuf[: n0 * k].reshape(n0, k)
    u0.fill(0.0)
    v0.fill(0.0)
    u0[:, :keep], v0[:, :keep] = u[:, :keep], vt[:keep].T
    return s


def _top_svd(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k SVD of dense p through the eigenpairs of the smaller Gram matrix: LAPACK's
    subset eigensolver (MRRR) finds only the k wanted pairs. Squaring the condition number
    costs nothing here: only the top k, well above rounding, are kept."""
    tall = p.shape[0] >= p.shape[1]
    g = p.T @ p if tall else p @ p.T                            # (n0, n0) or (m0, m0)
    n = g.shape[0]
    w, vecs = sla.eigh(g, subset_by_index=[n - k, n - 1], driver="evr")
    w, vecs = w[::-1], vecs[:, ::-1]                            # descending
    s = np.sqrt(np.maximum(w, 0.0))
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    other = (p @ vecs if tall else p.T @ vecs) * inv            # the other side's vectors
    u, v = (other, vecs) if tall else (vecs, other)
    return u, s, v.T


# -- stochastic Lanczos quadrature: the top singular values of a tall sparse M ------------------
def slq_sigma(m: sp.csr_array, probes: int, steps: int, rng: np.random.Generator,
              rank: int) -> tuple[np.ndarray, dict]:
    """Estimate the top `rank` singular values of a tall M by SLQ on B = MᵀM.

    A Rademacher probe z runs `steps` Lanczos steps on B; the eigenvalues θ of its
    tridiagonal T with weights n·(first eigenvector components)² are a Gauss quadrature of
    z's spectral measure, whose mean over z is B's eigenvalue counting measure. Converged
    Ritz values count as exact eigenvalues (_snap); the top `rank` eigenvalues are read off
    the probes' mean measure as quantiles (_quantiles). σ = √λ.

    Args:
        m: (R, n) CSR without empty rows or columns, R ≥ n.
        probes, steps: Lanczos chains, and steps per chain.
        rng: draws the probes.
        rank: how many of the largest to estimate.

    Returns:
        (≤ rank,) descending σ estimates, and sizes for the record.
    """
    n = m.shape[1]
    scale = 1.0 / np.abs(m.data).max()  # B·scale² has entries near 1: no denormals
    single = np.diff(m.indptr) == 1
    # A row with one entry adds only m_rj² to B's diagonal: fold those rows into a vector
    # and keep the sparse products for the rest (a third of the entries at 3M nodes).
    lone = np.repeat(single, np.diff(m.indptr))
    diag = np.bincount(m.indices[lone], weights=(m.data[lone] * scale) ** 2, minlength=n)
    rest = m[np.flatnonzero(~single)] * scale  # (R', n) CSR
    rest_t = rest.T  # (n, R') CSC view: reads rows in order and scatters (as in focus.py)
    norm = float((np.bincount(rest.indices, rest.data ** 2, minlength=n) + diag).max())

    def b_mul(x: np.ndarray) -> np.ndarray:
        return rest_t @ (rest @ x) + diag * x  # (n,)

    chains = _lanczos_chains(b_mul, n, probes, steps, norm, rng)
    nodes, found = _snap([_quadrature(alpha, beta, n) for alpha, beta in chains], n)
    sigma = np.sqrt(_quantiles(nodes, n, rank)) / scale
    return sigma, {"probes": probes, "steps": steps, "converged": found}


def _lanczos_chains(b_mul, n: int, probes: int, steps: int, norm: float,
                    rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(α, β) of `probes` independent Lanczos chains on a PSD operator, advanced together.

    No reorthogonalisation: in floating point that only duplicates converged Ritz values
    ("ghosts"), which _snap merges, and the quadrature stays accurate. A chain whose β
    vanishes has found an invariant subspace: its quadrature is exact and it stops.
    `norm` (≤ ‖B‖, > 0) sets the scale of "vanishes". Vectors are rows of (p, n) arrays:
    numpy broadcasts over a short last axis ~5× slower.
    """
    q = rng.choice([-1.0, 1.0], size=(probes, n)) / math.sqrt(n)  # (p, n) unit rows
    prev, w, tmp = np.zeros_like(q), np.empty_like(q), np.empty_like(q)  # reused (PERF)
    beta = np.zeros(probes)
    alphas, betas = np.zeros((steps, probes)), np.zeros((steps, probes))
    length = np.full(probes, steps)
    for k in range(steps):
        live = np.flatnonzero(length == steps)
        for j in live:
            w[j] = b_mul(q[j])
        alpha = np.einsum("ij,ij->i", q, w)
        w -= np.multiply(q, alpha[:, None], out=tmp)
        w -= np.multiply(prev, beta[:, None], out=tmp)
        beta = np.sqrt(np.einsum("ij,ij->i", w, w))
        alphas[k], betas[k] = alpha, beta
        length[(beta <= 1e-13 * norm) & (length == steps)] = k + 1
        if not (length == steps).any():
            break
        prev, q = q, prev
        np.divide(w, np.where(length == steps, beta, np.inf)[:, None], out=q)  # done: q = 0
    return [(alphas[:length[j], j], betas[:length[j], j]) for j in range(probes)]


def _quadrature(alpha: np.ndarray, beta: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Nodes θ, weights n·τ and residual bounds β_k·|y_k| of one chain's Gauss quadrature."""
    theta, y = sla.eigh_tridiagonal(alpha, beta[:-1])
    return theta, n * y[0] ** 2, beta[-1] * np.abs(y[-1])


def _snap(quads: list[tuple[np.ndarray, ...]], n: int, rtol: float = 1e-6
          ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """Give converged Ritz values their eigenvalue's multiplicity as weight, probe by probe.

    A Ritz pair with residual bound r ≤ rtol·θ has an eigenvalue within r of θ. Pairs that
    close — one eigenvalue seen by several probes, or ghost copies — are one eigenvalue,
    whose multiplicity is the mean weight of the probes that found it (E[n·τ] is the
    multiplicity), 1 unless clearly above. Those nodes then weigh exactly that, the probe's
    other nodes are rescaled to the rest of n, and a probe that has not found an eigenvalue
    keeps it smeared, so nothing counts twice. The χ²-noisy weights of the few top
    eigenvalues had made d* from 2–4 probes off by up to 2.7×.

    Returns:
        Per probe: nodes θ, weights (summing to n) and a mask of the converged ones; and the
        number of distinct eigenvalues found.
    """
    conv = [(r <= rtol * t) & (t > 0) for t, _, r in quads]
    theta = np.concatenate([t[c] for (t, _, _), c in zip(quads, conv)])
    resid = np.concatenate([r[c] for (_, _, r), c in zip(quads, conv)])
    weight = np.concatenate([w[c] for (_, w, _), c in zip(quads, conv)])
    probe = np.concatenate([np.full(c.sum(), j) for j, c in enumerate(conv)])
    if len(theta) == 0:
        return [(t, w, c) for (t, w, _), c in zip(quads, conv)], 0
    o = np.argsort(-theta, kind="stable")
    # Ghost copies scatter ~1e-10·θ beyond their residual bounds (seen at 3M nodes, where a
    # 300-step chain held 45 copies of the top eigenvalue): merge within 1e-8·θ.
    slack = resid[o][:-1] + resid[o][1:] + 1e-8 * theta[o][:-1]
    group = np.empty(len(theta), np.int64)
    group[o] = np.cumsum(np.r_[True, theta[o][:-1] - theta[o][1:] > slack]) - 1
    g, p = int(group.max()) + 1, len(quads)
    cell = group * p + probe  # (c,) one (eigenvalue, probe) cell per converged pair
    per_cell = np.bincount(cell, weights=weight, minlength=g * p).reshape(g, p)
    members = np.bincount(cell, minlength=g * p).reshape(g, p)
    found = (members > 0).sum(axis=1)
    mean = per_cell.sum(axis=1) / found
    # n·τ of a simple eigenvalue has mean 1 and variance ≤ 2 per probe: claim a multiplicity
    # only beyond three standard errors, or noise doubles a fifth of the top eigenvalues.
    mult = np.where(mean > 1.0 + 3.0 * np.sqrt(2.0 / found), np.round(mean), 1.0)  # (g,)
    out, at = [], 0
    for (t, w, _), c in zip(quads, conv):
        cells = cell[at:at + c.sum()]
        at += c.sum()
        w = w.copy()
        w[c] = mult[cells // p] / members.ravel()[cells]  # ghosts share their eigenvalue
        held = mult[np.unique(cells // p)].sum()  # eigenvalues this probe now counts exactly
        free = w[~c].sum()
        if free > 0:
            w[~c] *= max(n - held, 0.0) / free
        out.append((t, w, c))
    return out, g


def _quantiles(nodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int,
               rank: int) -> np.ndarray:
    """The top min(rank, n) eigenvalues of B as quantiles of the mean counting measure.

    Converged nodes hold their ranks as flat steps. Any other node of weight w starting at
    rank c stands for eigenvalues around θ and sits at its middle rank c + w/2 (the
    Chebyshev–Markov–Stieltjes bounds put the true count at θ between c and c + w), and θ is
    interpolated between nodes rather than held in steps, which cut the bias.
    """
    theta = np.concatenate([t for t, _, _ in nodes])
    weight = np.concatenate([w for _, w, _ in nodes]) / len(nodes)
    exact = np.concatenate([c for _, _, c in nodes])
    o = np.lexsort((~exact, -theta))  # by θ descending, converged first on ties
    theta, weight, exact = theta[o], weight[o], exact[o]
    start = np.cumsum(weight) - weight
    positive = theta > 1e-14 * max(theta.max(initial=0.0), 0.0)
    if not positive.any():
        return np.zeros(min(rank, n))
    xs = np.concatenate([start[exact], start[exact] + weight[exact],
                         start[~exact] + weight[~exact] / 2])
    ys = np.concatenate([theta[exact], theta[exact], theta[~exact]])
    keep = np.concatenate([positive[exact], positive[exact], positive[~exact]])
    xs, ys = xs[keep], np.log(ys[keep])
    o = np.argsort(xs, kind="stable")
    ranks = np.arange(min(rank, n)) + 0.5
    # Linear in (log rank, log θ): exact between nodes for a power-law spectrum, and it
    # halved the error of rank-linear interpolation with one or two probes.
    lam = np.exp(np.interp(np.log(ranks), np.log(np.maximum(xs[o], 0.5)), ys[o]))
    lam[ranks >= weight[positive].sum()] = 0.0  # beyond the mass of positive eigenvalues
    return lam


# -- input checks ----------------------------------------------------------------------------
def _bad_ints(**least: tuple[object, int]) -> list[str]:
    """'name=value (expected ...)' for each value that is not an integer >= its least."""
    return [f"{name}={value!r} (expected an integer >= {low})"
            for name, (value, low) in least.items()
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low]


def _check_sparse(a: object, k: int, oversample: int, power_iters: int,
                  threads: int, workers: int) -> sp.csr_array:
    """Validate every argument at once; return a canonical CSR copy without stored zeros."""
    problems = _bad_ints(k=(k, 1), oversample=(oversample, 0), power_iters=(power_iters, 0),
                         threads=(threads, 1), workers=(workers, 1))
    if not sp.issparse(a) or len(a.shape) != 2:
        problems.append(f"a is {type(a).__name__} (expected a 2-D scipy sparse matrix)")
    elif not np.isfinite(a.data).all():
        problems.append("a has non-finite entries")
    if problems:
        raise GraftError("randomized_svd: " + "; ".join(problems))
    a = sp.csr_array(a, copy=True)
    a.sum_duplicates()
    a.eliminate_zeros()
    return a
