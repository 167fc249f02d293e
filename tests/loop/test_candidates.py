"""Candidate targets for a large graph's extractor: each kind by hand on a 4-particle graph,
the exact top-k against a full sort, faiss HNSW against the exact top-k, and recall counts."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from graph.errors import GraftError
from loop.candidates import candidates, recall, top_inner, union
from loop.evaluate import EvalGraph


def test_exact_top_k_is_a_full_sort_with_ties_by_position():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(37, 8)), rng.normal(size=(300, 8))
    s = (q.astype(np.float32) @ k.astype(np.float32).T)
    want = np.argsort(-s, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top_inner(q, k, 10, block=8), want)
    ties = top_inner(np.ones((1, 2)), np.array([[1, 0], [0, 1], [2, 0], [1, 0]]), 3)
    np.testing.assert_array_equal(ties, [[2, 0, 1]])       # 2, then 0, 1, 3 tied by position
    assert top_inner(q, k, 0).shape == (37, 0)


def test_the_norm_pruned_scan_is_the_full_sort():
    """Heavy-tailed key norms (most zero, a few large), as a compiled head has: scanning the
    largest-norm keys first and stopping at the Cauchy–Schwarz bound finds what a full
    stable sort does — negative and zero products, ties at the k-th value, zero queries."""
    from loop.candidates import InnerTop
    rng = np.random.default_rng(2)
    keys = (rng.normal(size=(3000, 8)) * rng.pareto(1.5, size=(3000, 1))).astype(np.float32)
    keys[rng.random(3000) < 0.5] = 0                         # nothing links to half of them
    keys[7] = keys[900] = keys[2000] = keys[11] = 3 * rng.normal(size=8)   # ties by position
    q = rng.normal(size=(60, 8)).astype(np.float32)
    q[3] = 0                                                 # a query of norm 0
    q[5] = keys[11] / np.linalg.norm(keys[11])               # ties at the top
    index = InnerTop(keys, first=16)                         # grows 16 → 64 → … → 3000
    for k in (1, 10, 50, 3000):
        want = np.argsort(-(q @ keys.T), axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(index.top(q, k), want)
    assert index.top(q[:0], 5).shape == (0, 5) and index.top(q, 0).shape == (60, 0)


def test_hnsw_finds_the_exact_top_k_on_a_small_set_and_is_repeatable():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(40, 16)), rng.normal(size=(500, 16))
    exact = top_inner(q, k, 10)
    approx = top_inner(q, k, 10, approximate=True)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)]) >= 0.95
    np.testing.assert_array_equal(approx, top_inner(q, k, 10, approximate=True))


def tiny() -> tuple[EvalGraph, sp.csr_array]:
    mention = sp.csr_array(np.array([[0, 1, 0, 0],          # a names b
                                     [0, 0, 0, 1],          # b names d
                                     [1, 0, 0, 0],          # c names a
                                     [0, 0, 0, 0]], dtype=np.float32))
    known = sp.csr_array(np.array([[0, 0, 1, 0],            # a → c
                                   [0, 0, 0, 0],
                                   [0, 0, 0, 1],            # c → d
                                   [0, 0, 0, 0]], dtype=np.float32))
    graph = EvalGraph(index=list("abcd"), adjacency=known, known=known,
                      link_indegree=np.array([0, 0, 1, 1.0]))
    return graph, mention


def test_each_kind_by_hand():
    graph, mention = tiny()
    # text vectors: b's nearest page is c (which links d); a's is b (links nothing)
    text = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 0]], dtype=np.float32)
    # model: E rows by checkpoint row, H of the positions the checkpoint has (all, in order)
    e = np.eye(4, dtype=np.float32)
    h = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [9, 9, 0, 0]], dtype=np.float32)
    sets = candidates(graph, np.array([0, 1]), mention=mention, text_vectors=text,
                      model=(e, h, np.arange(4)), k_text=1, k_model=1, k_popular=1)
    got = {k: v.toarray().astype(int).tolist() for k, v in sets.items()}
    assert got["mentioned"] == [[0, 1, 0, 0],    # a names b; c names a, but a → c is known
                                [1, 0, 0, 1]]    # b names d; a names b
    assert got["neighbours"] == [[0, 0, 0, 1],   # a → c → d (two hops)
                                 [0, 0, 0, 1]]   # b's nearest by text, c, links d
    assert got["model"] == [[0, 0, 0, 1], [0, 0, 0, 1]]     # d has the largest E_p · H_q
    assert got["popular"] == [[0, 0, 0, 0],      # c (first of the two in-degree 1) is a's own
                              [0, 0, 1, 0]]
    assert union(sets).toarray().astype(int).tolist() == [[0, 1, 0, 1], [1, 0, 1, 1]]
    r = recall(sets, np.array([0, 1]), np.array([[0, 3], [1, 2], [0, 2], [3, 0]]))
    # (0, 2) is a known link, never a candidate: a miss; (3, 0)'s source has no set: not counted
    assert r["pairs"] == 3 and r["recall"] == pytest.approx(2 / 3)
    assert r["per_source"] == 2.5
    assert r["by_kind"]["popular"]["recall"] == pytest.approx(1 / 3)
    with pytest.raises(GraftError, match="candidate kinds"):
        candidates(graph, np.array([0]), mention=mention, use=("mentions",))
