"""Pass 4: the factorisation reproduces M, fills empty rows, and P-EMBED is the true residual."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from compiler.embedding import build_embedding, focus_weighted, relative_residual
from compiler.types import Arch, CompileConfig
from compiler.vocab import build_vocab
from graph.focus import compute_focus
from graph.snapshot import take_snapshot
from tests.conftest import ingest_fixture


def arch(d: int) -> Arch:
    return Arch(derived={}, d=d, heads=1, head_dim=d, layers=1, intermediate=d)


def test_star_is_reproduced_exactly(store):
    ingest_fixture(store, "star")
    vocab = build_vocab(store, take_snapshot(store))
    emb = build_embedding(vocab, compute_focus(vocab.adjacency).pi, arch(4), CompileConfig(), 1)
    # M has one non-zero row (hub → leaf_i with stake i): rank 1, so P-EMBED is 0 ...
    assert emb.stats["p_embed"] < 1e-6 and emb.stats["rank"] == 1
    # ... and the hub's logits E_hub·H_q are proportional to the stakes 1..5.
    logits = emb.H @ emb.E[0]
    np.testing.assert_allclose(logits[1:] / logits[1], [1, 2, 3, 4, 5], rtol=1e-5)
    # Leaves have no out-links: their rows are filled with their own output vector.
    assert emb.filled.tolist() == [False, True, True, True, True, True]
    np.testing.assert_allclose(np.sqrt((emb.E.astype(float) ** 2).mean(axis=1)), 1, rtol=1e-5)


def test_relative_residual_matches_a_dense_computation():
    rng = np.random.default_rng(3)
    m = sp.random_array((40, 30), density=0.2, rng=rng, format="csr")
    dense = m.toarray()
    u, s, vt = np.linalg.svd(dense)
    k = 7
    approx = (u[:, :k] * s[:k]) @ vt[:k]
    truth = np.linalg.norm(dense - approx) / np.linalg.norm(dense)
    assert np.isclose(relative_residual(m, s[:k]), truth, rtol=1e-9)


def test_focus_weighting_is_sqrt_pi_on_both_sides():
    a = sp.csr_array(np.array([[0, 2.0], [1.0, 0]]))
    pi = np.array([0.25, 0.75])
    np.testing.assert_allclose(focus_weighted(a, pi).toarray(),
                               [[0, 2 * 0.5 * np.sqrt(0.75)], [np.sqrt(0.75) * 0.5, 0]])
