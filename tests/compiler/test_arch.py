"""Tests for compiler/arch.py: hand-computed spectra, λ₂ and diameters, rounding and clamps,
overrides, the SLQ and Lanczos estimates against exact values, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from compiler import arch
from compiler.types import CompileConfig
from graph.errors import GraftError
from graph.focus import compute_focus


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The reference eigvalsh calls too: two-thread OpenBLAS stalls on a busy 2-core machine."""
    with threadpool_limits(1, "blas"):
        yield


# -- tiny named graphs: (V, V) CSR adjacencies ----------------------------------------------
def _adj(v: int, src, dst, w=None) -> sp.csr_array:
    w = np.ones(len(src)) if w is None else np.asarray(w, float)
    return sp.csr_array(sp.coo_array((w, (np.asarray(src), np.asarray(dst))), shape=(v, v)))


def _cycle(n: int) -> sp.csr_array:
    """Directed cycle 0 → 1 → … → n−1 → 0: A + Aᵀ is the ring C_n."""
    return _adj(n, np.arange(n), (np.arange(n) + 1) % n)


def _path(n: int) -> sp.csr_array:
    return _adj(n, np.arange(n - 1), np.arange(1, n))


def _star(k: int) -> sp.csr_array:
    """Hub 0 → 1..k with stakes 1..k."""
    return _adj(k + 1, np.zeros(k, int), np.arange(1, k + 1), np.arange(1, k + 1))


def _two_communities(n: int, p: float, seed: int) -> sp.csr_array:
    """Two random directed blocks of n nodes (plus a ring inside each) and one bridge link."""
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for off in (0, n):
        i, j = np.nonzero(rng.random((n, n)) < p)
        src += [i + off, np.arange(n) + off, [n - 1]]
        dst += [j + off, (np.arange(n) + 1) % n + off, [n]]
    return _adj(2 * n, np.concatenate(src[:-1]), np.concatenate(dst[:-1]))


def _random_connected(n: int, degree: float, seed: int) -> sp.csr_array:
    """A directed ring plus n·degree uniform random links."""
    rng = np.random.default_rng(seed)
    k = int(n * degree)
    src = np.r_[np.arange(n), rng.integers(0, n, k)]
    dst = np.r_[(np.arange(n) + 1) % n, rng.integers(0, n, k)]
    return _adj(n, src, dst)


def _power_law(v: int, links: int, a_out: float, a_in: float, seed: int) -> sp.csr_array:
    """Seeded power-law graph: p(rank r) ∝ r^−a for sources and targets, lognormal stakes."""
    rng = np.random.default_rng(seed)

    def ranks(a: float) -> np.ndarray:
        u = rng.random(links)  # inverse CDF of the continuous law on [1, v + 1]
        r = (v + 1) ** u if a == 1 else (1 + u * ((v + 1) ** (1 - a) - 1)) ** (1 / (1 - a))
        return rng.permutation(v)[np.minimum(r.astype(int) - 1, v - 1)]

    src, dst = ranks(a_out), ranks(a_in)
    keep = src != dst
    return _adj(v, src[keep], dst[keep], rng.lognormal(0.0, 2.0, links)[keep])


def _derive(a: sp.csr_array, h: int = 1, cfg: CompileConfig = CompileConfig(),
            seed: int = 0) -> arch.Arch:
    return arch.derive_arch(a, compute_focus(a).pi, h, cfg, seed)


def _sym(a: sp.csr_array) -> sp.csr_array:
    return (a + a.T).tocsr()


# -- d*: hand-computed spectra --------------------------------------------------------------
@pytest.mark.parametrize("n, h, d_star", [(100, 1, 100), (100, 13, 104), (40, 1, 64),
                                          (40, 13, 78), (200, 4, 200)])
def test_cycle_has_a_flat_spectrum(n: int, h: int, d_star: int) -> None:
    # M = (1/n)·P, P a permutation: n equal singular values, H = ln n, exp H = n.
    got = _derive(_cycle(n), h).derived
    assert got["spectrum_path"] == "exact"
    assert got["entropy"] == pytest.approx(math.log(n), abs=1e-12)
    assert got["d_star"] == d_star and got["h_star"] == h


def test_cycle_through_slq_counts_the_multiplicity() -> None:
    # B = MᵀM = I/n²: every chain stops after one step with all its weight on one
    # eigenvalue; the top 1024 of 3000 equal values give H = ln 1024 exactly.
    m = arch.focus_matrix(_cycle(3000), np.full(3000, 1 / 3000))
    spec = arch.focus_spectrum(m, seed=0, exact_max=0)
    assert spec.path == "slq" and spec.info["steps"] == 400
    assert spec.entropy == pytest.approx(math.log(1024), abs=1e-9)


@pytest.mark.parametrize("h, d_star", [(1, 64), (2, 64), (3, 66)])
def test_star_has_rank_one(h: int, d_star: int) -> None:
    # One source row: M has a single non-zero singular value, H = 0, exp H = 1 → clamp to 64.
    got = _derive(_star(7), h).derived
    assert got["entropy"] == pytest.approx(0.0, abs=1e-12) and got["effective_rank"] == 1.0
    assert got["d_star"] == d_star


def test_entropy_of_known_spectrum() -> None:
    assert arch.entropy_of(np.array([1.0, 1.0, 0.0])) == pytest.approx(math.log(2))
    p = np.array([0.5, 0.25, 0.25])
    assert arch.entropy_of(p * 8) == pytest.approx(-(p * np.log(p)).sum())
    assert arch.entropy_of(np.ones(2000)) == pytest.approx(math.log(arch.RANK))  # top 1024
    assert arch.entropy_of(np.zeros(3)) == 0.0


@pytest.mark.parametrize("family", [(4000, 3400, 0.6, 1.1, 0), (4000, 3400, 1.0, 1.0, 1),
                                    (5000, 4300, 1.2, 0.6, 3), (2500, 6000, 0.9, 0.9, 2)])
def test_slq_agrees_with_exact(family: tuple) -> None:
    # The estimate path on graphs small enough for the dense one (n ≤ 1536 after trimming):
    # within 10 % in d*; measured 3–5 % here and on 30k–100k graphs against svds.
    v, links, a_out, a_in, seed = family
    a = _power_law(v, links, a_out, a_in, seed)
    m = arch.focus_matrix(a, compute_focus(a).pi)
    exact = arch.focus_spectrum(m, seed=seed, exact_max=10_000)
    est = arch.focus_spectrum(m, seed=seed, exact_max=0)
    assert exact.path == "exact" and est.path == "slq" and est.info["n"] > 400
    assert math.exp(est.entropy) == pytest.approx(math.exp(exact.entropy), rel=0.10)
    assert math.ceil(math.exp(est.entropy)) > 20  # not a trivially flat or rank-one case


def test_slq_on_few_probes_stays_close() -> None:
    # The 3M-node budget runs 1 probe × 300 steps: measured within 8 % on 30k–100k graphs,
    # 18 % at 10k; 6 % here.
    a = _power_law(2500, 6000, 0.9, 0.9, 2)
    m = arch.focus_matrix(a, compute_focus(a).pi)
    exact = math.exp(arch.focus_spectrum(m, seed=2).entropy)
    est = arch.focus_spectrum(m, seed=2, exact_max=0, probes=1, steps=300)
    assert est.info["probes"] == 1 and math.exp(est.entropy) == pytest.approx(exact, rel=0.15)


# -- rounding and clamps --------------------------------------------------------------------
@pytest.mark.parametrize("d_raw, heads, d", [(1, 1, 64), (64, 16, 64), (64, 32, 128),
                                             (64, 33, 132), (65, 1, 66), (100, 13, 104),
                                             (100, 47, 188), (5000, 1, 4096),
                                             (4095, 3, 4092), (4096, 2048, 4096)])
def test_round_hidden(d_raw: int, heads: int, d: int) -> None:
    got = arch.round_hidden(d_raw, heads)
    assert got == d and got % heads == 0 and (got // heads) % 2 == 0
    # a head keeps at least one rotary pair beside pair 0 (UMLS: 47 semcons, d* 100 → 188)
    assert got // heads >= 4 or 4 * heads > arch.D_MAX


def test_round_hidden_rejects_too_many_heads() -> None:
    with pytest.raises(GraftError, match=r"heads=2049 .* 4098 > 4096"):
        arch.round_hidden(100, 2049)


@pytest.mark.parametrize("lam2, steps", [(0.0, 29), (0.0015, 29), (0.01, 27), (0.5, 6),
                                         (1.0, 1), (1.25, 3), (2.0, 29)])
def test_steps_to_mix(lam2: float, steps: int) -> None:
    # ceil(ln 100 / ln(1/κ)), κ = 0.85·|1 − λ₂|: ln 100 / ln(1/0.85) = 28.34 → 29; K_5 has
    # λ₂ = 5/4, κ = 0.2125 → 2.97 → 3; a single link (K_2) λ₂ = 2, the walk flips: κ = 0.85.
    assert arch.steps_to_mix(lam2) == steps


# -- L*: λ₂ and the diameter ----------------------------------------------------------------
def test_ring_lambda2_and_layers() -> None:
    # The normalised Laplacian of C_n has λ₂ = 1 − cos(2π/n); C_60's diameter is 30.
    got = _derive(_cycle(60), cfg=CompileConfig(max_layers=1000)).derived
    lam2 = 1 - math.cos(2 * math.pi / 60)
    assert got["lambda2_path"] == "exact" and got["lambda2"] == pytest.approx(lam2, rel=1e-9)
    assert got["kappa"] == pytest.approx(0.85 * (1 - lam2))
    assert got["diameter"] == 30 and got["connected"]
    assert got["l_star"] == 30 * math.ceil(math.log(100) / math.log(1 / got["kappa"]))


@pytest.mark.parametrize("name, a", [("ring", _cycle(400)), ("path", _path(300)),
                                     ("communities", _two_communities(150, 0.05, 0)),
                                     ("random", _random_connected(800, 2.0, 0))])
def test_lanczos_lambda2_matches_exact(name: str, a: sp.csr_array) -> None:
    w = _sym(a)
    exact, path, _ = arch.second_eigenvalue(w, seed=0, exact_max=10_000)
    est, est_path, steps = arch.second_eigenvalue(w, seed=0, exact_max=0, saturate=False)
    assert (path, est_path) == ("exact", "lanczos") and 0 < steps <= arch.LANCZOS_STEPS
    assert est == pytest.approx(exact, rel=1e-3)
    # With the early stop the value is an upper bound that gives the same L*.
    fast, _, fast_steps = arch.second_eigenvalue(w, seed=0, exact_max=0)
    assert fast >= exact - 1e-12 and fast_steps <= steps
    assert arch.steps_to_mix(fast) == arch.steps_to_mix(exact)


def test_lanczos_lambda2_on_a_long_ring_is_an_upper_bound() -> None:
    # C_3000: λ₂ = 4.4e-6 is far below what 300 steps resolve, yet L* is exact: the bound
    # falls under 0.0019 (29 steps to mix, as for λ₂ = 0) within a few dozen steps.
    w = _sym(_cycle(3000))
    lam2 = 1 - math.cos(2 * math.pi / 3000)
    est, path, steps = arch.second_eigenvalue(w, seed=0)
    assert path == "lanczos" and steps < 60 and est >= lam2
    assert arch.steps_to_mix(est) == arch.steps_to_mix(lam2) == 29


def test_disconnected_graph_has_lambda2_zero() -> None:
    two_rings = sp.block_diag([_cycle(10), _cycle(12)], format="csr")
    got = _derive(sp.csr_array(two_rings)).derived
    assert got["connected"] is False and got["lambda2_path"] == "disconnected"
    assert got["lambda2"] == 0.0 and got["kappa"] == 0.85
    assert got["diameter"] == 5  # of C_10, where BFS starts (degree ties: lowest id)
    assert got["l_star"] == 5 * 29


@pytest.mark.parametrize("a, diameter", [(_path(50), 49), (_star(7), 2), (_cycle(9), 4),
                                         (_adj(3, [], []), 0)])
def test_bfs_diameter(a: sp.csr_array, diameter: int) -> None:
    got, connected = arch.bfs_diameter(_sym(a))
    assert got == diameter and connected == (a.nnz > 0)


def test_diameter_is_clamped_inside_l_star() -> None:
    got = _derive(_path(3)).derived  # diameter 2 → 4
    assert got["diameter"] == 2 and got["diameter_clamped"] == 4
    assert got["l_star"] == 4 * arch.steps_to_mix(got["lambda2"])
    long = _derive(_path(600)).derived  # diameter 599 → 512
    assert long["diameter"] == 599 and long["diameter_clamped"] == 512


def test_graph_without_links() -> None:
    a = _adj(5, [], [])
    got = arch.derive_arch(a, np.full(5, 0.2), 2, CompileConfig(), 0)
    d = got.derived
    assert d["spectrum_path"] == "empty" and d["d_star"] == 64 and d["diameter"] == 0
    assert d["l_star"] == 4 * 29 and got.layers == 8 and got.d == 64


# -- used values ----------------------------------------------------------------------------
def test_used_values_default_to_derived() -> None:
    got = _derive(_cycle(100), h=5, cfg=CompileConfig(max_layers=3))
    assert got.d == got.derived["d_star"] == 100 and got.heads == 5 and got.head_dim == 20
    assert got.layers == 3 < got.derived["l_star"] and got.intermediate == got.d


def test_overrides_win_and_derived_is_kept() -> None:
    got = _derive(_cycle(100), h=5, cfg=CompileConfig(d=96, heads=4, layers=2))
    assert (got.d, got.heads, got.head_dim, got.layers, got.intermediate) == (96, 4, 24, 2, 96)
    assert got.derived["d_star"] == 100 and got.derived["h_star"] == 5


def test_heads_override_sets_the_rounding_of_d() -> None:
    got = _derive(_cycle(100), h=5, cfg=CompileConfig(heads=8))
    assert got.d == 112 and got.head_dim == 14  # 100 → next multiple of 16
    assert got.derived["d_star"] == 100  # d* itself stays a multiple of 2·h*


@pytest.mark.parametrize("cfg, h, words", [
    (CompileConfig(d=100), 13, ["d=100 is not a multiple of heads=13", "d=104",
                                "CompileConfig.d", "h* (the number of semcons)"]),
    (CompileConfig(d=78), 26, ["head size d/heads = 78/26 = 3 is odd", "d=104"]),
])
def test_bad_used_values_say_how_to_fix(cfg: CompileConfig, h: int, words: list) -> None:
    with pytest.raises(GraftError) as err:
        _derive(_cycle(20), h=h, cfg=cfg)
    for word in words:
        assert word in str(err.value)


def test_too_many_semcons_for_the_clamp() -> None:
    a = _cycle(20)
    with pytest.raises(GraftError, match="heads=3000"):
        _derive(a, h=3000)
    got = _derive(a, h=3000, cfg=CompileConfig(heads=8))  # the user's way out
    assert got.d == 64 and got.derived["d_star"] is None


# -- records, determinism, bad input --------------------------------------------------------
def test_record_is_deterministic_and_complete() -> None:
    a = _power_law(9000, 8000, 0.9, 1.1, 5)  # trimmed n = 1967 > 1536: the SLQ path
    first, second = _derive(a, h=3, seed=11), _derive(a, h=3, seed=11)
    keys = {"d_star", "h_star", "l_star", "entropy", "spectrum_path", "lambda2",
            "lambda2_path", "kappa", "diameter", "seconds"}
    assert keys <= set(first.derived)
    assert set(first.derived["seconds"]) == {"spectrum", "diameter", "lambda2"}
    assert first.derived["spectrum_path"] == "slq"
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert strip(first.derived) == strip(second.derived) and first.d == second.d


def test_bad_input_lists_every_problem() -> None:
    with pytest.raises(GraftError) as err:
        arch.derive_arch(sp.csr_array((3, 4)), np.ones((2, 2)), 0, CompileConfig(), 1.5)
    text = str(err.value)
    for word in ("square", "n_semcons", "seed", "pi must have shape"):
        assert word in text


@pytest.mark.parametrize("stake, pi, word", [
    (-1.0, np.full(3, 1 / 3), "negative"),
    (np.nan, np.full(3, 1 / 3), "not finite"),
    (np.inf, np.full(3, 1 / 3), "1 entries that are negative or not finite"),
    (1.0, np.array([0.5, np.nan, 0.5]), "pi must be finite"),
    (1.0, np.zeros(3), "not all zero"),
])
def test_bad_values(stake: float, pi: np.ndarray, word: str) -> None:
    a = _adj(3, [0, 1], [1, 2], [1.0, stake])
    with pytest.raises(GraftError, match=word):
        arch.derive_arch(a, pi, 1, CompileConfig(), 0)
