"""Tests for graph/focus.py: PageRank against networkx, exact small cases, invariants, errors."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from graph.errors import GraftError
from graph.focus import Focus, compute_focus

Edge = tuple[int, int, float]

# Tiny named graphs: (V, [(src, dst, stake), ...]). Repeated (src, dst) pairs are parallel
# links whose stakes sum; node ids with no edge at all are isolated.
GRAPHS: dict[str, tuple[int, list[Edge]]] = {
    "chain": (5, [(0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 4, 1.0)]),
    "star_out": (6, [(0, k, 1.0) for k in range(1, 6)]),
    "star_in": (6, [(k, 0, float(k)) for k in range(1, 6)]),
    "two_communities": (8, [(i, j, 1.0) for i in range(4) for j in range(4) if i != j]
                        + [(i, j, 2.0) for i in range(4, 8) for j in range(4, 8) if i != j]
                        + [(3, 4, 0.5)]),
    "parallel_weights": (4, [(0, 1, 3.0), (0, 1, 2.0), (0, 2, 1.0), (1, 2, 4.0), (2, 0, 1.0),
                             (2, 0, 1.5), (2, 3, 0.25), (3, 3, 2.0)]),
    "dangling_and_isolated": (7, [(0, 1, 1.0), (1, 2, 2.0), (1, 3, 1.0), (3, 0, 5.0),
                                  (4, 2, 1.0)]),  # 2 dangling; 5, 6 isolated
    "no_links": (3, []),
}


def _adj(v: int, edges: list[Edge]) -> sp.csr_array:
    """(V, V) CSR adjacency with parallel links summed."""
    if not edges:
        return sp.csr_array((v, v))
    src, dst, w = (np.array(col) for col in zip(*edges))
    return sp.csr_array(sp.coo_array((w, (src, dst)), shape=(v, v)))


def _networkx(v: int, edges: list[Edge]) -> np.ndarray:
    """networkx's PageRank of the same graph, as a (V,) vector."""
    g = nx.MultiDiGraph()  # networkx sums parallel edge weights into the transition matrix
    g.add_nodes_from(range(v))
    g.add_weighted_edges_from(edges)
    pr = nx.pagerank(g, alpha=0.85, weight="weight", tol=1e-12, max_iter=10_000)
    return np.array([pr[i] for i in range(v)])


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_matches_networkx(name: str) -> None:
    v, edges = GRAPHS[name]
    focus = compute_focus(_adj(v, edges))
    # L1 error ≤ delta · d/(1−d) < 1e-8 · 5.7 with the default tol, so 1e-7 per entry holds.
    np.testing.assert_allclose(focus.pi, _networkx(v, edges), rtol=0, atol=1e-7)
    assert focus.pi.dtype == np.float64
    assert focus.delta < 1e-8 and focus.iterations >= 1


def test_two_nodes_one_link_exact() -> None:
    # 0 → 1, node 1 dangling; d = 0.85, V = 2. Node 1 spreads its mass over both nodes:
    #   π0 = (1−d)/2 + d·π1/2          π1 = (1−d)/2 + d·(π0 + π1/2)
    # With π0 + π1 = 1: π0 = 0.075 + 0.425(1 − π0)  ⇒  1.425 π0 = 0.5  ⇒  π0 = 20/57,
    # π1 = 37/57. Check: 0.075 + 0.85·20/57 + 0.425·37/57 = (4.275 + 17 + 15.725)/57 = 37/57.
    focus = compute_focus(_adj(2, [(0, 1, 7.0)]), tol=1e-14)
    np.testing.assert_allclose(focus.pi, [20 / 57, 37 / 57], rtol=0, atol=1e-13)


def test_three_nodes_weighted_exact() -> None:
    # 0 → 1 (stake 1), 0 → 2 (stake 3), 1 → 0, 2 → 0; nobody dangles; d = 0.85, V = 3.
    #   π0 = 0.05 + 0.85(π1 + π2) = 0.05 + 0.85(1 − π0)  ⇒  π0 = 0.9/1.85 = 720/1480
    #   π1 = 0.05 + 0.85 · π0 · 1/4 = (74 + 153)/1480 = 227/1480
    #   π2 = 0.05 + 0.85 · π0 · 3/4 = (74 + 459)/1480 = 533/1480;  720 + 227 + 533 = 1480.
    adj = _adj(3, [(0, 1, 1.0), (0, 2, 3.0), (1, 0, 1.0), (2, 0, 1.0)])
    focus = compute_focus(adj, tol=1e-14)
    np.testing.assert_allclose(focus.pi, np.array([720, 227, 533]) / 1480, rtol=0, atol=1e-13)


def _random_adj(v: int, m: int, seed: int) -> sp.csr_array:
    """A seeded random stake graph with some dangling and isolated nodes."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, v - v // 5, m)  # the last fifth never links out: dangling
    dst = rng.integers(0, v, m)
    w = rng.integers(1, 100, m).astype(np.float64)
    return sp.csr_array(sp.coo_array((w, (src, dst)), shape=(v, v)))


def test_sums_to_one_and_positive() -> None:
    pi = compute_focus(_random_adj(300, 900, seed=1)).pi
    assert abs(pi.sum() - 1.0) < 1e-12
    assert (pi > 0).all()  # teleport gives every node at least (1 − d)/V
    assert pi.min() >= 0.15 / 300 - 1e-15


def test_permutation_equivariant() -> None:
    adj = _random_adj(200, 700, seed=2)
    perm = np.random.default_rng(3).permutation(200)  # new node k is old node perm[k]
    permuted = sp.csr_array(adj[perm][:, perm])
    np.testing.assert_allclose(compute_focus(permuted).pi, compute_focus(adj).pi[perm],
                               rtol=0, atol=1e-12)


def test_invariant_to_scaling_one_nodes_out_stakes() -> None:
    # Out-strength normalisation: multiplying all of one node's out-links (or the whole
    # graph) by a constant leaves the walk, hence π, unchanged.
    adj = _random_adj(100, 400, seed=4)
    base = compute_focus(adj).pi
    scaled = sp.csr_array(sp.diags_array(np.r_[1000.0, np.ones(99)]) @ adj * 3.0)
    np.testing.assert_allclose(compute_focus(scaled).pi, base, rtol=0, atol=1e-12)
    # ... while moving stake between a node's targets does change it.
    changed = adj.copy()
    changed.data[0] *= 50.0
    assert np.abs(compute_focus(changed).pi - base).sum() > 1e-4


def test_accepts_matrix_and_duplicate_coo_without_mutating() -> None:
    edges = GRAPHS["parallel_weights"][1]
    src, dst, w = (np.array(col) for col in zip(*edges))
    coo = sp.coo_matrix((w, (src, dst)), shape=(4, 4))  # duplicates not yet summed
    before = coo.copy()
    csr = sp.csr_array(coo)
    data = csr.data.copy()
    expected = _networkx(4, edges)
    np.testing.assert_allclose(compute_focus(coo).pi, expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(compute_focus(csr).pi, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(csr.data, data)
    assert (coo != before).nnz == 0


def test_single_node_and_zero_damping() -> None:
    assert compute_focus(sp.csr_array((1, 1))).pi.tolist() == [1.0]
    focus = compute_focus(_random_adj(50, 200, seed=5), damping=0.0)
    np.testing.assert_allclose(focus.pi, np.full(50, 1 / 50), rtol=0, atol=1e-15)
    assert focus.iterations == 1


def test_returns_focus_with_iteration_count() -> None:
    focus = compute_focus(_adj(*GRAPHS["two_communities"]))
    assert isinstance(focus, Focus)
    tighter = compute_focus(_adj(*GRAPHS["two_communities"]), tol=1e-12)
    assert tighter.iterations > focus.iterations and tighter.delta < 1e-12


def test_not_converging_raises() -> None:
    with pytest.raises(GraftError, match="did not converge.*after 2 iterations"):
        compute_focus(_adj(*GRAPHS["two_communities"]), max_iter=2)


@pytest.mark.parametrize("adj, match", [
    (np.eye(3), "scipy sparse array, got ndarray"),
    (sp.csr_array((2, 3)), r"square V×V with V ≥ 1, got shape \(2, 3\)"),
    (sp.csr_array((0, 0)), r"V ≥ 1, got shape \(0, 0\)"),
    (sp.csr_array(np.array([[0.0, -1.0], [1.0, 0.0]])), r"1 negative entries \(first at \[0, 1\]"),
    (sp.csr_array(np.array([[0.0, np.inf], [np.nan, 0.0]])), "2 non-finite entries"),
])
def test_bad_adjacency(adj: object, match: str) -> None:
    with pytest.raises(GraftError, match=match):
        compute_focus(adj)


def test_bad_parameters_all_reported() -> None:
    bad = sp.csr_array(np.array([[0.0, -2.0], [np.nan, 0.0]]))
    with pytest.raises(GraftError) as err:
        compute_focus(bad, damping=1.0, tol=0.0, max_iter=0)
    message = str(err.value)
    for part in ("damping must be in [0, 1)", "tol must be", "max_iter must be",
                 "non-finite", "negative"):
        assert part in message
