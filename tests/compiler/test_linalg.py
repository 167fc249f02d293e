"""Tests for compiler/linalg.py: randomized and dense SVD against numpy's exact SVD, the sign
convention, zero rows and missing ranks, determinism, power projections, Pearson."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from compiler import linalg
from graph.errors import GraftError


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """numpy's reference SVDs too: two-thread OpenBLAS stalls on a busy 2-core machine."""
    with threadpool_limits(1, "blas"):
        yield


def _with_spectrum(m: int, n: int, sigma: np.ndarray, seed: int) -> np.ndarray:
    """(m, n) dense matrix with singular values `sigma` and random singular vectors."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (u * sigma) @ v.T


def _power_law(n: int, nnz: int, seed: int) -> sp.csr_array:
    """(n, n) sparse matrix with Zipf in/out popularity and lognormal weights; many rows
    and columns stay empty, as in a link graph."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1)
    p /= p.sum()
    src = rng.permutation(n)[rng.choice(n, nnz, p=p)]
    dst = rng.permutation(n)[rng.choice(n, nnz, p=p)]
    return sp.csr_array(sp.coo_array((rng.lognormal(size=nnz), (src, dst)), shape=(n, n)))


def _reconstruct(u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> np.ndarray:
    return (u.astype(np.float64) * s) @ vt.astype(np.float64)


def _check_signs(u: np.ndarray, s: np.ndarray) -> None:
    for j in np.flatnonzero(s > 0):
        col = u[:, j]
        assert col[np.argmax(np.abs(col))] > 0, f"column {j} breaks the sign convention"


# -- randomized_svd ----------------------------------------------------------------------------
def test_matches_exact_svd_on_separated_spectrum():
    sigma = np.concatenate([2.0 ** -np.arange(8), np.full(40, 1e-3)])
    a = _with_spectrum(150, 100, sigma, seed=0)
    u, s, vt = linalg.randomized_svd(sp.csr_array(a), 8, seed=1)
    ue, se, vte = np.linalg.svd(a)
    assert u.dtype == vt.dtype == np.float32 and s.dtype == np.float64
    assert u.shape == (150, 8) and s.shape == (8,) and vt.shape == (8, 100)
    np.testing.assert_allclose(s, se[:8], rtol=1e-4)
    # Separated values: each computed vector is the exact one up to sign.
    np.testing.assert_allclose(np.abs(np.diag(ue[:, :8].T @ u)), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.abs(np.diag(vte[:8] @ vt.T)), 1.0, atol=1e-4)
    np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-5)
    _check_signs(u, s)


def test_matches_exact_svd_on_power_law_sparse():
    a = _power_law(600, 900, seed=2)
    dense = a.toarray()
    u, s, vt = linalg.randomized_svd(a, 20, power_iters=8, seed=3)
    se = np.linalg.svd(dense, compute_uv=False)
    np.testing.assert_allclose(s, se[:20], rtol=1e-4)
    _check_signs(u, s)


def test_residual_is_near_optimal():
    """Eckart–Young: no rank-k matrix beats the truncated SVD; q = 4 lands within 1%."""
    a = _power_law(500, 750, seed=4)
    dense = a.toarray()
    se = np.linalg.svd(dense, compute_uv=False)
    for k in (10, 40):
        u, s, vt = linalg.randomized_svd(a, k, seed=5)
        residual = np.linalg.norm(dense - _reconstruct(u, s, vt))
        optimal = np.sqrt((se[k:] ** 2).sum())
        assert optimal <= residual <= 1.01 * optimal


def test_rank_three_is_recovered_exactly_and_the_rest_is_zero():
    rng = np.random.default_rng(6)
    left = sp.random_array((90, 3), density=0.5, rng=rng) + sp.eye_array(90, 3)
    right = sp.random_array((3, 70), density=0.5, rng=rng) + sp.eye_array(3, 70)
    a = sp.csr_array(left @ right)                               # rank exactly 3
    dense = a.toarray()
    u, s, vt = linalg.randomized_svd(a, 8, seed=7)
    assert (s[:3] > 0).all() and (s[3:] == 0).all()
    assert not u[:, 3:].any() and not vt[3:].any()
    err = np.linalg.norm(dense - _reconstruct(u, s, vt)) / np.linalg.norm(dense)
    assert err < 1e-5
    np.testing.assert_allclose(s[:3], np.linalg.svd(dense, compute_uv=False)[:3], rtol=1e-5)


def test_zero_rows_and_columns_come_back_as_zeros():
    core = _with_spectrum(40, 30, np.geomspace(5, 0.1, 30), seed=8)
    rows, cols = np.arange(0, 120, 3), np.arange(1, 91, 3)
    padded = np.zeros((120, 91))
    padded[np.ix_(rows, cols)] = core
    u, s, vt = linalg.randomized_svd(sp.csr_array(padded), 5, seed=9)
    uc, sc, vtc = linalg.randomized_svd(sp.csr_array(core), 5, seed=9)
    assert not np.delete(u, rows, axis=0).any() and not np.delete(vt, cols, axis=1).any()
    np.testing.assert_array_equal(u[rows], uc)                   # same compact problem
    np.testing.assert_array_equal(vt[:, cols], vtc)
    np.testing.assert_allclose(s, np.linalg.svd(core, compute_uv=False)[:5], rtol=1e-4)


def test_wide_input_takes_the_transposed_path():
    a = _with_spectrum(60, 200, np.geomspace(10, 0.01, 60), seed=10)
    u, s, vt = linalg.randomized_svd(sp.csr_array(a), 6, seed=11)
    ut, st, vtt = linalg.randomized_svd(sp.csr_array(a.T), 6, seed=11)
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False)[:6], rtol=1e-4)
    np.testing.assert_allclose(s, st, rtol=1e-5)
    np.testing.assert_allclose(np.abs(u.T @ vtt.T), np.eye(6), atol=1e-4)
    _check_signs(u, s)


def test_sign_ties_go_to_the_lowest_row():
    """[B; -B]: every U column has |u_i| = |u_{i+h}| exactly, so row i must be positive.
    h exceeds the row chunk, so the tie is also decided across chunks."""
    h = linalg._CHUNK + 8
    b = sp.random_array((h, 30), density=0.1, rng=np.random.default_rng(12))
    u, s, vt = linalg.randomized_svd(sp.csr_array(sp.vstack([b, -b])), 4, seed=13)
    np.testing.assert_array_equal(u[:h], -u[h:])
    top = np.argmax(np.abs(u), axis=0)
    assert (top < h).all() and (u[top, np.arange(4)] > 0).all()
    # A dense-path tie: [[1], [-1]] has u = ±(1, -1)/√2; row 0 wins.
    u1, s1, vt1 = linalg.randomized_svd(sp.csr_array(np.array([[1.0], [-1.0]])), 1, seed=0)
    np.testing.assert_allclose(u1[:, 0], [2 ** -0.5, -(2 ** -0.5)], rtol=1e-6)
    np.testing.assert_allclose(vt1, [[1.0]])


def test_k_at_or_above_the_small_side_is_exact_and_zero_padded():
    a = _with_spectrum(30, 12, np.geomspace(4, 0.5, 12), seed=14)
    u, s, vt = linalg.randomized_svd(sp.csr_array(a), 15, seed=15)
    assert u.shape == (30, 15) and vt.shape == (15, 12)
    np.testing.assert_allclose(s[:12], np.linalg.svd(a, compute_uv=False), rtol=1e-12)
    assert (s[12:] == 0).all() and not u[:, 12:].any() and not vt[12:].any()
    np.testing.assert_allclose(_reconstruct(u, s, vt), a, atol=1e-5)


def test_deterministic_bytes_for_a_seed():
    a = _power_law(500, 800, seed=16)
    first = linalg.randomized_svd(a, 12, seed=17)
    second = linalg.randomized_svd(a.copy(), 12, seed=17)
    for x, y in zip(first, second):
        assert x.tobytes() == y.tobytes()
    # Another BLAS thread count may change bits (so compiles pin it), not the answer.
    other = linalg.randomized_svd(sp.csr_matrix(a), 12, seed=17, threads=2)
    np.testing.assert_allclose(other[1], first[1], rtol=1e-5)


def test_workers_do_not_change_a_bit():
    # Tall enough for several row chunks and sparse-product blocks on both sides.
    a = _power_law(30_000, 60_000, seed=23)
    x = np.random.default_rng(24).standard_normal((30_000, 16)).astype(np.float32)
    one = linalg.randomized_svd(a, 20, seed=5, workers=1)
    two = linalg.randomized_svd(a, 20, seed=5, workers=2)
    for p, q in zip(one, two):
        assert p.tobytes() == q.tobytes()
    for (p, e), (q, f) in zip(linalg.power_projections(a, x, [1, 2], workers=1),
                              linalg.power_projections(a, x, [1, 2], workers=2)):
        assert e == f and p.tobytes() == q.tobytes()
    with pytest.raises(GraftError, match="workers=0"):
        linalg.randomized_svd(a, 3, seed=0, workers=0)


def test_empty_matrix_and_bad_input():
    u, s, vt = linalg.randomized_svd(sp.csr_array((5, 4)), 3, seed=0)
    assert u.shape == (5, 3) and vt.shape == (3, 4) and not (u.any() or s.any() or vt.any())
    with pytest.raises(GraftError, match="k=0.*oversample=-1"):
        linalg.randomized_svd(sp.csr_array(np.eye(3)), 0, oversample=-1, seed=0)
    with pytest.raises(GraftError, match="non-finite"):
        linalg.randomized_svd(sp.csr_array(np.array([[np.nan, 1.0]])), 1, seed=0)
    with pytest.raises(GraftError, match="sparse"):
        linalg.randomized_svd(np.eye(3), 1, seed=0)


# -- dense_svd ---------------------------------------------------------------------------------
def test_dense_svd_matches_numpy_with_signs_and_padding():
    p = np.random.default_rng(18).standard_normal((12, 12))
    u, s, vt = linalg.dense_svd(p, 5)
    ue, se, vte = np.linalg.svd(p)
    np.testing.assert_allclose(s, se[:5], rtol=1e-12)
    flips = np.sign(np.diag(ue[:, :5].T @ u))
    np.testing.assert_allclose(u, ue[:, :5] * flips, atol=1e-6)
    np.testing.assert_allclose(vt, vte[:5] * flips[:, None], atol=1e-6)
    _check_signs(u, s)
    u, s, vt = linalg.dense_svd(np.outer([1.0, 2.0, 3.0], [1.0, -1.0]), 4)  # rank 1, k > n
    assert u.shape == (3, 4) and vt.shape == (4, 2)
    assert s[0] > 0 and (s[1:] == 0).all() and not u[:, 1:].any()
    with pytest.raises(GraftError):
        linalg.dense_svd(np.array([[np.inf]]), 1)


# -- power_projections -------------------------------------------------------------------------
def test_power_projections_match_matrix_power():
    a = _power_law(50, 150, seed=19)
    x = np.random.default_rng(20).standard_normal((50, 3))
    got = linalg.power_projections(a, x, [0, 1, 3, 3, 4])
    dense = a.toarray()
    for p, (proj, shift) in zip([0, 1, 3, 3, 4], got):
        want = x.T @ np.linalg.matrix_power(dense, p) @ x
        np.testing.assert_allclose(np.ldexp(proj, shift), want, rtol=1e-10,
                                   atol=1e-12 * np.abs(want).max())
    with pytest.raises(GraftError, match="ascending"):
        linalg.power_projections(a, x, [2, 1])
    with pytest.raises(GraftError, match="does not fit"):
        linalg.power_projections(a, x[:10], [1])


def test_power_projections_float32_wider_than_a_slab_and_read_through_rows():
    # 100 float32 columns widen in slabs of 64 and 36: every column must reach the product
    # (a strided last slab once lost its 36 columns). x_rows reads a big block in place and
    # must give the bits of the gathered block, with either walking direction and workers.
    a = _power_law(60, 240, seed=23)
    rng = np.random.default_rng(24)
    x = rng.standard_normal((60, 100)).astype(np.float32)
    dense, wide = a.toarray(), x.astype(np.float64)
    got = linalg.power_projections(a, x, [1, 2])
    for p, (proj, shift) in zip([1, 2], got):
        want = wide.T @ np.linalg.matrix_power(dense, p) @ wide
        np.testing.assert_allclose(np.ldexp(proj, shift), want, rtol=1e-10,
                                   atol=1e-12 * np.abs(want).max())
    big = rng.standard_normal((200, 100)).astype(np.float32)
    rows = np.sort(rng.choice(200, 60, replace=False))
    big[rows] = x
    for m in (a, a.T.tocsr()):
        for workers in (1, 2):
            plain = linalg.power_projections(m, x, [1, 2, 5], workers=workers)
            read = linalg.power_projections(m, big, [1, 2, 5], workers=workers, x_rows=rows)
            for (p, e), (q, f) in zip(plain, read):
                assert e == f and np.array_equal(p, q)
    with pytest.raises(GraftError, match="x_rows"):
        linalg.power_projections(a, big, [1], x_rows=rows[:10])
    with pytest.raises(GraftError, match="outside"):
        linalg.power_projections(a, big, [1], x_rows=rows + 150)


def test_power_projections_walk_either_way():
    # Leaves 1..8 → hub 0 → 9: walking forward keeps 8 rows at p = 1, backward 2 (0 and 9);
    # the transpose flips that. Both must give xᵀ aᵖ x.
    src, dst = np.r_[np.arange(1, 9), 0], np.r_[np.zeros(8, int), 9]
    w = np.arange(1.0, 10.0)
    x = np.random.default_rng(21).standard_normal((10, 4))
    for a in (sp.csr_array(sp.coo_array((w, (src, dst)), shape=(10, 10))),
              sp.csr_array(sp.coo_array((w, (dst, src)), shape=(10, 10)))):
        dense = a.toarray()
        for p, (proj, shift) in zip([1, 2, 3], linalg.power_projections(a, x, [1, 2, 3])):
            want = x.T @ np.linalg.matrix_power(dense, p) @ x
            np.testing.assert_allclose(np.ldexp(proj, shift), want, rtol=1e-10, atol=1e-12)


def test_power_projections_scale_past_float64_and_stop_on_a_dag():
    # A 3-cycle with stakes 1e30: its 12th power is 1e360, past float64; the exponent
    # carries the scale. A chain 0 → 1 → 2 has no path of length 3.
    cycle = sp.csr_array(sp.coo_array((np.full(3, 1e30), ([0, 1, 2], [1, 2, 0])), shape=(3, 3)))
    (proj, shift), = linalg.power_projections(cycle, np.eye(3), [12])
    np.testing.assert_allclose(proj, proj[0, 0] * np.eye(3))
    np.testing.assert_allclose(np.log2(proj[0, 0]) + shift, 360 * np.log2(10), rtol=1e-12)
    chain = sp.csr_array(sp.coo_array((np.array([2.0, 3.0]), ([0, 1], [1, 2])), shape=(3, 3)))
    got = linalg.power_projections(chain, np.eye(3), [2, 3, 9])
    assert np.ldexp(got[0][0], got[0][1])[0, 2] == 6.0 and np.count_nonzero(got[0][0]) == 1
    assert not got[1][0].any() and not got[2][0].any()


def test_pearson_hand_computed_values():
    # x - x̄ = (-1, 0, 1), y - ȳ = (-7, -1, 8)/3: r = 5 / (√2 · √114 / 3) = 15 / √228.
    assert linalg.pearson(np.array([1, 2, 3]), np.array([2, 4, 7])) == pytest.approx(
        15 / np.sqrt(228), rel=1e-12)
    assert linalg.pearson(np.array([[1.0, 2.0], [3.0, 4.0]]),
                          np.array([[8.0, 6.0], [4.0, 2.0]])) == pytest.approx(-1.0)
    assert linalg.pearson(np.full(4, 0.1), np.arange(4.0)) == 0.0       # constant: 0, not NaN
    with pytest.raises(GraftError):
        linalg.pearson(np.ones(3), np.ones(4))
    with pytest.raises(GraftError):
        linalg.pearson(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_dense_svd_top_k_path_matches_the_full_svd():
    rng = np.random.default_rng(5)
    p = rng.standard_normal((300, 300)) @ np.diag(np.linspace(1, 1e-3, 300)) @ rng.standard_normal((300, 300))
    u, s, vt = linalg.dense_svd(p, 40)           # 4·40 <= 300: the Gram-eigenpair path
    uf, sf, vtf = linalg.dense_svd(p, 200)       # the full LAPACK SVD
    np.testing.assert_allclose(s, sf[:40], rtol=1e-10)
    np.testing.assert_allclose(u, uf[:, :40], atol=1e-5)
    np.testing.assert_allclose(vt, vtf[:40], atol=1e-5)
