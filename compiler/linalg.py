"""Truncated SVDs, sparse matrix powers and correlation: the compiler's linear algebra.

Nothing here knows about graphs or HF. Letters in shape comments: m, n the input's rows and
columns; m0, n0 its non-empty rows and columns; k the rank asked for; l = k + oversample the
sketch width; w a block's current width (l, or less once a rank-deficient block is narrowed);
c the rows in a chunk; x the columns of a block multiplied by a sparse matrix.

Every SVD here follows one sign convention: each singular pair is flipped so the entry of
largest |x| in its U column is positive (ties: the lowest row). Singular values that are not
there (k above the numerical rank) come back as 0 with zero columns in U and V, never as
rounding noise.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from graph.errors import GraftError

try:  # y += A x straight into a buffer we own: `A @ x` would page in a fresh block each time
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - scipy moved its private kernels
    _csr_matvecs = None

_CHUNK = 8192                 # rows per BLAS call on a tall block: small temporaries, warm cache
_DENSE_MAX = 1 << 24          # entries of the non-empty part we densify for an exact SVD
_EPS32 = float(np.finfo(np.float32).eps)
_RANK_TOL32 = 1e-5            # σ / σ₁ below this is rounding in float32 blocks: reported as 0
# Squared Cholesky pivots of a unit-diagonal Gram below these are not resolved: float32 sums
# carry ~1e-5 relative error; exact sums of float32 data stop at its rounding (eps32²·w).
_PIVOT_TOL = {False: 1e-4, True: 1e-12}
_MAX_PASSES = 6               # Gram passes (an exact retry counts) before we take what we have


def randomized_svd(a: sp.csr_array, k: int, *, oversample: int = 10, power_iters: int = 4,
                   seed: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD a ≈ U diag(s) Vt by the Halko–Martinsson–Tropp range finder.

    All-zero rows and columns are dropped before any dense work and come back as zero rows
    of U and zero columns of Vt. The dense blocks are float32; Gram matrices are summed in
    float64; blocks are orthonormalised by Cholesky-QR (shifted when the Gram is not
    positive definite, by a rank-revealing eigen pass when it is singular). When k is not
    below the smaller non-empty dimension and the non-empty part is small, the SVD is exact.

    Args:
        a: (m, n) sparse matrix with finite entries.
        k: singular triplets wanted (>= 1); may exceed the rank.
        oversample: extra sketch columns (>= 0).
        power_iters: subspace iterations (>= 0); each costs two sparse products and one
            orthonormalisation, and sharpens a slowly decaying spectrum.
        seed: seeds the numpy Generator that draws the test matrix.
        threads: BLAS threads while this runs; float bits depend on it, so pin it.

    Returns:
        U (m, k) float32, s (k,) float64 descending, Vt (k, n) float32 — Vt is the
        transpose view of a C-contiguous (n, k) array. Missing singular values are 0.
    """
    a = _check_sparse(a, k, oversample, power_iters, threads)
    m, n = a.shape
    rows = np.flatnonzero(np.diff(a.indptr))
    cols = np.flatnonzero(np.bincount(a.indices, minlength=n))
    with threadpool_limits(threads, "blas"):
        if a.nnz == 0:
            return np.zeros((m, k), np.float32), np.zeros(k), np.zeros((n, k), np.float32).T
        b = a[rows][:, cols]                                     # (m0, n0)
        m0, n0 = b.shape
        # Outputs double as the work blocks: (m0, l) sketches first, (m, k) results last.
        ubuf = np.empty(max(m0 * min(k + oversample, m0, n0), m * k), np.float32)
        vbuf = np.empty(max(n0 * min(k + oversample, m0, n0), n * k), np.float32)
        if k + oversample >= min(m0, n0) and m0 * n0 <= _DENSE_MAX:
            s = _exact_into(b.toarray().astype(np.float64), k, ubuf, vbuf)
        else:
            rng = np.random.default_rng(seed)
            l = min(k + oversample, m0, n0)
            # Unit Frobenius norm first: float32 blocks meet b's entries cubed.
            norm = float(np.linalg.norm(b.data))
            b = (b * (1.0 / norm)).astype(np.float32)
            # The shorter side carries the sketch: it is orthonormalised every iteration.
            if m0 <= n0:
                s = _sketch_svd(b, k, l, power_iters, rng, ubuf, vbuf)
            else:
                s = _sketch_svd(b.T.tocsr(), k, l, power_iters, rng, vbuf, ubuf)
            s *= norm
        u0 = ubuf[: m0 * k].reshape(m0, k)                       # (m0, k)
        v0 = vbuf[: n0 * k].reshape(n0, k)                       # (n0, k)
        signs = _signs(u0) * (s > 0)                             # also zeroes missing pairs
        _scale_columns(u0, signs)
        _scale_columns(v0, signs)
        u = _scatter_rows(ubuf, rows, m, k)                      # (m, k)
        v = _scatter_rows(vbuf, cols, n, k)                      # (n, k)
    return u, s, v.T


def dense_svd(p: np.ndarray, k: int, *, threads: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact SVD of a small dense matrix truncated to k, with the module's sign convention.

    Args:
        p: (m, n) finite dense matrix (a d×d head or MLP projection).
        k: triplets wanted (>= 1); beyond the numerical rank (numpy's matrix_rank
            tolerance) they come back as zeros.
        threads: BLAS threads while this runs.

    Returns:
        U (m, k) float32, s (k,) float64 descending, Vt (k, n) float32.
    """
    p = np.asarray(p)
    if p.ndim != 2 or p.size == 0:
        raise GraftError(f"dense_svd: expected a non-empty 2-D matrix, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise GraftError("dense_svd: the matrix has non-finite entries")
    _check_int("k", k, 1)
    m, n = p.shape
    u = np.empty(m * k, np.float32)
    v = np.empty(n * k, np.float32)
    with threadpool_limits(threads, "blas"):
        s = _exact_into(p.astype(np.float64), k, u, v)
    u, v = u.reshape(m, k), v.reshape(n, k)                     # (m, k), (n, k)
    signs = _signs(u) * (s > 0)
    _scale_columns(u, signs)
    _scale_columns(v, signs)
    return u, s, np.ascontiguousarray(v.T)


def sparse_power_products(a: sp.csr_array, x: np.ndarray, powers: list[int]) -> list[np.ndarray]:
    """a^p @ x for each p, by repeated sparse products; a^p itself is never formed.

    Args:
        a: (n, n) sparse matrix.
        x: (n,) or (n, x) dense block.
        powers: ascending powers >= 0 (repeats allowed); each product extends the last.

    Returns:
        One array per power, shaped like x (a fresh copy of x for p = 0).
    """
    a = sp.csr_array(a)
    x = np.asarray(x)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise GraftError(f"sparse_power_products: a must be square, got shape {a.shape}")
    if x.ndim not in (1, 2) or x.shape[0] != a.shape[1]:
        raise GraftError(f"sparse_power_products: x of shape {x.shape} does not fit a "
                         f"of shape {a.shape}")
    steps = [int(q) for q in powers]
    if any(q < 0 for q in steps) or steps != sorted(steps):
        raise GraftError(f"sparse_power_products: powers must be ascending and >= 0, "
                         f"got {list(powers)}")
    out, cur, at = [], x, 0
    for q in steps:
        for _ in range(q - at):
            cur = a @ cur
        at = q
        out.append(cur.copy() if cur is x else cur)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two same-shape arrays, flattened, in float64.

    Nan-safe: a constant input (no variance: correlation undefined) gives 0.0, never NaN.

    Args:
        x, y: finite arrays of the same shape with at least one entry.

    Returns:
        The correlation in [-1, 1].
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if np.shape(x) != np.shape(y) or x.size == 0:
        raise GraftError(f"pearson: expected two non-empty arrays of one size, got "
                         f"{x.size} and {y.size} entries")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise GraftError("pearson: non-finite input")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # exact test: centring a constant leaves ulp noise
        return 0.0
    dx, dy = x - x.mean(), y - y.mean()
    r = float(dx @ dy) / (float(np.linalg.norm(dx)) * float(np.linalg.norm(dy)))
    return min(1.0, max(-1.0, r))


# -- the sketch ------------------------------------------------------------------------------
def _sketch_svd(b: sp.csr_array, k: int, l: int, power_iters: int, rng: np.random.Generator,
                ubuf: np.ndarray, vbuf: np.ndarray) -> np.ndarray:
    """HMT range finder on float32 b (m0, n0). Leaves U (m0, k) in ubuf and V (n0, k) in
    vbuf (prefixes, C order); returns s (k,), zero beyond the numerical rank."""
    bt = b.T.tocsr()
    m0, n0 = b.shape
    z = vbuf[: n0 * l].reshape(n0, l)                           # (n0, l)
    rng.random(out=z, dtype=np.float32)
    z *= 2.0
    z -= 1.0                                                    # uniform on [-1, 1): mean zero
    y = ubuf[: m0 * l].reshape(m0, l)                           # (m0, l)
    _spmm(b, z, y)                                              # y = b Ω
    for i in range(power_iters):
        # b bᵀ applied whole, one orthonormalisation per iteration: the block meets κ(b)²
        # (κ(b)³ the first time). Measured: no loss against HMT's extra pass after b Ω.
        w = y.shape[1]
        z = vbuf[: n0 * w].reshape(n0, w)                       # (n0, w)
        _spmm(bt, y, z)
        _spmm(b, z, y)
        y = _power_pass(y, ubuf, aligned=i > 0)
    y, r_y, _ = _orthonormalise(y, ubuf)                        # Q = y r_y⁻¹ (m0, w)
    w = y.shape[1]
    z = vbuf[: n0 * w].reshape(n0, w)                           # (n0, w): bᵀ y = Bᵀ r_y
    _spmm(bt, y, z)
    z, r_z, f = _orthonormalise(z, vbuf, pending=r_y)           # Bᵀ ≈ (z r_z⁻¹) f
    # B = fᵀ Q_zᵀ: the SVD of the small fᵀ rotates both bases.
    uf, s, vft = np.linalg.svd(f.T, full_matrices=False)       # (w, p), (p,), (p, wz)
    keep = min(k, len(s))
    s = np.concatenate([s[:keep], np.zeros(k - keep)])
    s[s <= _RANK_TOL32 * s[0]] = 0.0
    cu = np.zeros((w, k))
    cu[:, :keep] = sla.solve_triangular(r_y, uf[:, :keep])
    cv = np.zeros((z.shape[1], k))
    cv[:, :keep] = sla.solve_triangular(r_z, vft[:keep].T)
    _right_multiply_padded(y, cu, ubuf)                         # U = Q uf   (m0, k)
    _right_multiply_padded(z, cv, vbuf)                         # V = Q_z vf (n0, k)
    return s


def _orthonormalise(x: np.ndarray, buf: np.ndarray, pending: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormalise the block x p⁻¹ (p = pending, upper triangular; I when None) by
    Cholesky-QR passes in place until its Gram is within 0.1 of I — CholeskyQR2 when the
    block is well conditioned. The last factor is left for the caller to fold into its
    next product. Returns (x', r, f): x' r⁻¹ is orthonormal and x p⁻¹ ≈ (x' r⁻¹) f.

    A Gram too ill-conditioned for float32 sums is recomputed exactly; one singular even
    then (rank below the width) gets an eigen pass that drops the missing directions, so
    x' (a view at buf's start) may be narrower than x."""
    p = np.eye(x.shape[1]) if pending is None else pending
    f = np.eye(x.shape[1])
    exact = False
    for attempt in range(_MAX_PASSES):
        g = _congruent(_gram(x, exact), p)                      # (w, w) Gram of x p⁻¹
        r = _cholesky(g, _PIVOT_TOL[exact])
        if r is None and not exact:
            exact = True
            continue
        if r is None:
            t, fe = _eigen_factor(g, _PIVOT_TOL[True])
            x = _right_multiply(x, sla.solve_triangular(p, t), buf)
            p, f, exact = np.eye(x.shape[1]), fe @ f, False
            continue
        if np.abs(g - np.eye(len(g))).max() <= 0.1 or attempt == _MAX_PASSES - 1:
            return x, r @ p, r @ f
        _solve_right(x, r @ p)
        p, f, exact = np.eye(len(r)), r @ f, False
    return x, p, f  # the last pass was an eigen pass: as orthonormal as this block gets


def _congruent(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """p⁻ᵀ g p⁻¹ for symmetric g and upper-triangular p."""
    h = sla.solve_triangular(p, g, trans="T")                   # p⁻ᵀ g
    h = sla.solve_triangular(p, h.T, trans="T")                 # p⁻ᵀ (p⁻ᵀ g)ᵀ = p⁻ᵀ g p⁻¹
    return (h + h.T) / 2


def _power_pass(x: np.ndarray, buf: np.ndarray, aligned: bool) -> np.ndarray:
    """Orthonormalise x enough to go on iterating; returns the block (a view at buf's start).

    Cholesky-QR on the float32-summed Gram is enough once x's columns are near the
    principal directions (aligned): after unit-diagonal scaling their Gram is near I,
    and each entry is accurate relative to its own columns. A first, unaligned block (or
    one whose Cholesky fails) gets the exact Gram and its eigenbasis instead, which aligns
    the columns for the next iterations. Its eigenvalues get a tiny shift rather than a
    cut, so directions lost below float32 rounding stay (small) and can grow back."""
    if aligned:
        r = _cholesky(_gram(x, False), _PIVOT_TOL[False])
        if r is not None:
            _solve_right(x, r)
            return x
    t, _ = _eigen_factor(_gram(x, True), _PIVOT_TOL[True], shift=True)
    return _right_multiply(x, t, buf)


def _cholesky(g: np.ndarray, tol: float) -> np.ndarray | None:
    """Upper R with RᵀR = g, via the unit-diagonal scaling of g; None when g is not
    numerically positive definite (a squared pivot of the scaled g below tol)."""
    d = np.sqrt(np.diag(g))
    if not (d > 0).all():
        return None
    try:
        rs = np.linalg.cholesky(g / np.outer(d, d)).T           # (w, w) upper
    except np.linalg.LinAlgError:
        return None
    if np.diag(rs).min() ** 2 < tol:
        return None
    return rs * d                                               # undo the column scaling


def _eigen_factor(g: np.ndarray, tol: float, shift: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(t, f) with x t orthonormal and x ≈ (x t) f from the eigenbasis of the unit-diagonal
    Gram (SVQB, Stathopoulos & Wu 2002), largest first. Directions below tol of the
    largest eigenvalue are dropped, or with `shift` kept but damped by (λ + tol·λ₁)^-½."""
    d = np.sqrt(np.maximum(np.diag(g), 0.0))
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    lam, vec = np.linalg.eigh(g * np.outer(inv, inv))           # ascending
    floor = tol * max(float(lam[-1]), np.finfo(np.float64).tiny)
    if shift:
        lam = np.maximum(lam, 0.0) + floor
    keep = lam > floor
    lam, vec = lam[keep][::-1], vec[:, keep][:, ::-1]           # (w',), (w, w')
    t = (inv[:, None] * vec) / np.sqrt(lam)                     # (w, w')
    f = (np.sqrt(lam)[:, None] * vec.T) * d                     # (w', w)
    return t, f


# -- dense kernels on tall float32 blocks ----------------------------------------------------
def _spmm(b: sp.csr_array, x: np.ndarray, out: np.ndarray) -> None:
    """out = b @ x for float32 csr b and C-contiguous float32 blocks, into out's memory."""
    if _csr_matvecs is None:  # pragma: no cover
        np.copyto(out, b @ x)
        return
    out.fill(0.0)
    _csr_matvecs(b.shape[0], b.shape[1], x.shape[1], b.indptr, b.indices, b.data,
                 x.ravel(), out.ravel())


def _gram(x: np.ndarray, exact: bool) -> np.ndarray:
    """xᵀx (w, w) in float64, over chunks of rows. Not exact: float32 GEMMs summed in
    float64 (twice DGEMM's rate; each entry good to ~1e-5 of |x_i|·|x_j|). Exact: the
    chunk in float64, where products of float32 numbers are exact."""
    w = x.shape[1]
    g = np.zeros((w, w))
    part = np.empty((w, w), np.float64 if exact else np.float32)
    wide = np.empty((min(_CHUNK, len(x)), w)) if exact else None
    for start in range(0, len(x), _CHUNK):
        block = x[start : start + _CHUNK]                       # (c, w)
        if exact:
            block = wide[: len(block)]
            np.copyto(block, x[start : start + _CHUNK])
        np.matmul(block.T, block, out=part)
        g += part
    return (g + g.T) / 2


def _solve_right(x: np.ndarray, r: np.ndarray) -> None:
    """x ← x r⁻¹ in place for upper-triangular r: x is C order, so xᵀ is a Fortran block
    that STRSM overwrites from the left."""
    r32 = np.asarray(r, np.float32, order="F")
    for start in range(0, len(x), _CHUNK):
        blas.strsm(1.0, r32, x[start : start + _CHUNK].T, side=0, lower=0, trans_a=1,
                   overwrite_b=1)


def _right_multiply(x: np.ndarray, c: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """x @ c written over x's own memory, which starts buf: row i's result only lands on
    rows already consumed because c is no wider than x. Returns the (rows, c cols) view."""
    rows, width = len(x), c.shape[1]
    assert width <= x.shape[1] and np.shares_memory(x, buf)
    out = buf[: rows * width].reshape(rows, width)
    c32 = np.asarray(c, np.float32)
    tmp = np.empty((min(_CHUNK, rows), width), np.float32)
    for start in range(0, rows, _CHUNK):
        part = tmp[: min(_CHUNK, rows - start)]
        np.matmul(x[start : start + _CHUNK], c32, out=part)
        out[start : start + len(part)] = part
    return out


def _right_multiply_padded(x: np.ndarray, c: np.ndarray, buf: np.ndarray) -> None:
    """(rows, k) = x @ c at buf's start, where c's columns past x's width are zero (a
    block narrowed below k by its rank): only the live columns are multiplied in place."""
    live = min(c.shape[1], x.shape[1])
    out = _right_multiply(x, c[:, :live], buf)                  # (rows, live)
    if live < c.shape[1]:
        out = out.copy()
        full = buf[: len(x) * c.shape[1]].reshape(len(x), c.shape[1])
        full[:, live:] = 0.0
        full[:, :live] = out


def _scatter_rows(buf: np.ndarray, rows: np.ndarray, total: int, width: int) -> np.ndarray:
    """Spread the (len(rows), width) block at buf's start to rows `rows` of a (total, width)
    array in the same memory, zero elsewhere. Back to front: rows[i] >= i, so a row moves
    only onto rows already moved."""
    out = buf[: total * width].reshape(total, width)
    if len(rows) == total:
        return out
    src = buf[: len(rows) * width].reshape(len(rows), width)
    for end in range(len(rows), 0, -_CHUNK):
        start = max(0, end - _CHUNK)
        out[rows[start:end]] = src[start:end].copy()
    empty = np.ones(total, bool)
    empty[rows] = False
    out[empty] = 0.0
    return out


def _signs(u: np.ndarray) -> np.ndarray:
    """(k,) ±1 that make each column's largest-|x| entry positive; the first such row wins
    ties (argmax, and a strict > across chunks). All-zero columns get +1."""
    k = u.shape[1]
    best, at_best = np.full(k, -1.0, np.float32), np.zeros(k, np.float32)
    for start in range(0, len(u), _CHUNK):
        block = u[start : start + _CHUNK]                       # (c, k)
        mag = np.abs(block)
        idx = mag.argmax(axis=0)
        val = mag[idx, np.arange(k)]
        better = val > best
        best[better] = val[better]
        at_best[better] = block[idx[better], np.arange(k)[better]]
    return np.where(at_best < 0, -1.0, 1.0)


def _scale_columns(x: np.ndarray, scale: np.ndarray) -> None:
    """x[:, j] *= scale[j] in place, chunk by chunk (no full-size temporary)."""
    s32 = np.asarray(scale, np.float32)
    for start in range(0, len(x), _CHUNK):
        x[start : start + _CHUNK] *= s32


def _exact_into(p: np.ndarray, k: int, ubuf: np.ndarray, vbuf: np.ndarray) -> np.ndarray:
    """Exact float64 SVD of dense p (m0, n0): U (m0, k) and V (n0, k) into the buffers'
    prefixes as float32, zero past the rank (numpy's matrix_rank tolerance); returns s."""
    m0, n0 = p.shape
    u, s, vt = np.linalg.svd(p, full_matrices=False)            # (m0, p), (p,), (p, n0)
    keep = min(k, len(s))
    s = np.concatenate([s[:keep], np.zeros(k - keep)])
    s[s <= max(m0, n0) * np.finfo(np.float64).eps * s[0]] = 0.0
    live = s[:keep] > 0
    u0 = ubuf[: m0 * k].reshape(m0, k)
    v0 = vbuf[: n0 * k].reshape(n0, k)
    u0.fill(0.0)
    v0.fill(0.0)
    u0[:, :keep] = u[:, :keep] * live
    v0[:, :keep] = vt[:keep].T * live
    return s


# -- input checks ----------------------------------------------------------------------------
def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise GraftError(f"{name}={value!r} (expected an integer >= {least})")


def _check_sparse(a: object, k: int, oversample: int, power_iters: int,
                  threads: int) -> sp.csr_array:
    """Validate every argument at once; return a canonical CSR copy without stored zeros."""
    problems = []
    for name, value, least in (("k", k, 1), ("oversample", oversample, 0),
                               ("power_iters", power_iters, 0), ("threads", threads, 1)):
        try:
            _check_int(name, value, least)
        except GraftError as err:
            problems.append(str(err))
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
