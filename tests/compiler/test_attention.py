"""Pass 5: compiled heads reproduce Eᵀ A_s^k E, leave RoPE's turning pair empty, gain 0 is off."""
from __future__ import annotations

import numpy as np

from compiler.attention import _head_slots, build_attention
from compiler.embedding import build_embedding
from compiler.semcons import build_semcons
from compiler.types import Arch, CompileConfig
from compiler.vocab import build_vocab
from graph.focus import compute_focus
from graph.snapshot import take_snapshot
from tests.conftest import ingest_fixture


def compiled(store, gain: float, layers: int = 3, diameter: int = 3):
    ingest_fixture(store, "typed")
    snap = take_snapshot(store)
    vocab = build_vocab(store, snap)
    semcons = build_semcons(store, snap, vocab)
    arch = Arch(derived={"diameter": diameter, "kappa": 0.5}, d=24, heads=3, head_dim=8,
                layers=layers, intermediate=24)
    cfg = CompileConfig(attn_gain=gain)
    emb = build_embedding(vocab, compute_focus(vocab.adjacency).pi, arch, cfg, seed=1)
    return semcons, emb, arch, build_attention(semcons, emb, arch, cfg)


def test_heads_reproduce_the_projected_adjacency(store):
    semcons, emb, arch, attn = compiled(store, gain=0.5)
    assert attn.powers == [1, 2, 3]                 # 1 + ⌊l·diam/L⌋ with diam = L = 3
    e = emb.E.astype(np.float64)
    for head, a in enumerate(semcons.adjacency):
        p = e.T @ (a @ e)                           # (d, d): layer 0, power 1
        if not p.any():
            continue
        rows = head * arch.head_dim + _head_slots(arch.head_dim)
        w = attn.q[0][rows].T.astype(np.float64) @ attn.k[0][rows].astype(np.float64)
        # rank(P) ≤ 3 links of a type < d_h − 2 = 6 slots: the head holds P exactly, scaled
        scale = (w * p).sum() / (p * p).sum()
        np.testing.assert_allclose(w, scale * p, atol=1e-5 * np.abs(w).max())
        assert attn.pearson[0, head] > 0.999


def test_rope_pair_left_empty_and_gain_decays(store):
    _, _, arch, attn = compiled(store, gain=0.5)
    dh = arch.head_dim
    for layer in range(arch.layers):
        for head in range(arch.heads):
            for dim in (0, dh // 2):
                assert not attn.q[layer][head * dh + dim].any()
                assert not attn.k[layer][head * dh + dim].any()
    norms = [np.abs(o).max() for o in attn.o]
    assert norms[0] > 0 and np.isclose(norms[1], 0.5 * norms[0], rtol=1e-5) or norms[1] == 0


def test_gain_zero_switches_attention_off(store):
    _, _, _, attn = compiled(store, gain=0.0)
    assert all(not o.any() for o in attn.o)
    assert any(q.any() for q in attn.q)            # the scores are still compiled


def test_head_size_two_leaves_heads_empty_instead_of_failing(store):
    """d_h = 2 is all RoPE pair 0: no room for a compiled score (was: dense_svd k=0 crash,
    hit by UMLS's 47 semcons before round_hidden kept d_h ≥ 4)."""
    ingest_fixture(store, "typed")
    snap = take_snapshot(store)
    vocab = build_vocab(store, snap)
    semcons = build_semcons(store, snap, vocab)
    arch = Arch(derived={"diameter": 2, "kappa": 0.5}, d=6, heads=3, head_dim=2, layers=2,
                intermediate=6)
    cfg = CompileConfig(attn_gain=1.0)
    emb = build_embedding(vocab, compute_focus(vocab.adjacency).pi, arch, cfg, seed=1)
    attn = build_attention(semcons, emb, arch, cfg)
    assert all(not w.any() for w in attn.q + attn.k + attn.v + attn.o)
    assert np.isnan(attn.pearson).all()
