"""Sentence embeddings of particles: unit rows (zero for empty particles), meaning-bearing
similarities, equality with sentence-transformers' own encode, and a cache that is reused only
for the exact texts it was made from."""
from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.sparse as sp

from graph.errors import GraftError
from loop import embed
from loop.evaluate import EvalGraph

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NAMES = {0: ["cat", "cats"], 1: ["kitten"], 2: ["volcano"], 4: ["lava"]}
TEXTS = {0: "a small domesticated feline", 1: "a young cat",
         2: "a mountain that erupts lava", 5: "molten rock that flows from a volcano"}
EMPTY = 3                        # neither name nor text


def tiny_graph(texts: dict[int, str] = TEXTS) -> EvalGraph:
    size = 6
    return EvalGraph(index=[f"p{i}" for i in range(size)], adjacency=sp.csr_array((size, size)),
                     known=sp.csr_array((size, size)), link_indegree=np.zeros(size),
                     names=NAMES, texts=dict(texts))


@pytest.fixture(scope="module")
def emb():
    pytest.importorskip(embed.PACKAGE)
    return embed.particle_embeddings(tiny_graph())


def test_particle_texts():
    assert embed.particle_texts(tiny_graph()) == [
        "cat: a small domesticated feline", "kitten: a young cat",
        "volcano: a mountain that erupts lava", "", "lava",
        "molten rock that flows from a volcano"]


def test_cosine_by_hand():
    e = np.array([[1, 0], [0.6, 0.8], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(embed.cosine(e, [1, 0]), [[0.6, 1, 0], [1, 0.6, 0]], atol=1e-7)
    with pytest.raises(GraftError, match="outside"):
        embed.cosine(e, [3])


def test_neighbour_links_by_hand():
    # four pages on a circle: 0's nearest are 1 (cos 0.8) and 2 (cos 0.6); 3 points away
    e = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    known = sp.csr_array(np.array([[0, 0, 0, 1],        # 0 → 3 (0's own link: not counted)
                                   [0, 0, 1, 1],        # 1 → 2, 3
                                   [0, 0, 0, 1],        # 2 → 3
                                   [1, 1, 0, 0]], dtype=np.float32))
    x = embed.neighbour_links(e, known, [0], k=2, floor=0.01)
    share = np.array([0, 0, 0.8, 0.8 + 0.6]) / 1.4      # weights 0.8/1.4 and 0.6/1.4
    np.testing.assert_allclose(x[0], np.log(0.01 + share), rtol=1e-6)
    # page 3's nearest are 2 (cos −0.6) and 1 (−0.8): negative cosines weigh nothing
    np.testing.assert_allclose(embed.neighbour_links(e, known, [3], k=2), np.log(0.01), rtol=1e-6)
    # k beyond P − 1 takes every other page
    assert embed.neighbour_links(e, known, [0], k=10).shape == (1, 4)


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embed, "PACKAGE", "gt_no_such_package_for_graft_tests")
    assert not embed.available()
    with pytest.raises(GraftError, match="pip install"):
        embed.particle_embeddings(tiny_graph())


def test_bad_arguments_are_all_reported():
    with pytest.raises(GraftError, match="batch.*max_tokens"):
        embed.particle_embeddings(tiny_graph(), batch=0, max_tokens=600)


def test_shape_unit_rows_and_zero_rows(emb):
    assert emb.shape == (6, embed.DIM) and emb.dtype == np.float32
    norms = np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(np.delete(norms, EMPTY), 1.0, atol=1e-5)
    assert not emb[EMPTY].any()
    assert not embed.cosine(emb, [0])[0, EMPTY]


def test_similar_meanings_are_closer(emb):
    sim = embed.cosine(emb, [0, 2])                                  # (2, P)
    assert sim[0, 1] > sim[0, 2] + 0.2                               # cat ~ kitten, not volcano
    assert sim[1, 5] > sim[1, 1]                                     # volcano ~ molten rock
    np.testing.assert_allclose(np.diag(sim[:, [0, 2]]), 1.0, atol=1e-5)


def test_equals_sentence_transformers(emb):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(embed.model_dir()), device="cpu")
    model.max_seq_length = 128
    texts = embed.particle_texts(tiny_graph()) + ["word " * 300]     # the last one truncated
    want = model.encode([t for t in texts if t], convert_to_numpy=True)
    got = embed.embed_texts(texts, max_tokens=128, progress=False)
    np.testing.assert_allclose(np.delete(got, EMPTY, axis=0), want, atol=1e-5)
    np.testing.assert_allclose(got[:6], emb, atol=1e-6)


def test_cache_round_trip_and_invalidation(emb, tmp_path, monkeypatch):
    cache = tmp_path / "sub" / "emb.safetensors"
    first = embed.particle_embeddings(tiny_graph(), cache=cache)
    np.testing.assert_array_equal(first, emb)                        # deterministic
    assert cache.exists() and not list(cache.parent.glob("*.part"))

    real = embed.embed_texts

    def no_model(*a, **k):
        raise AssertionError("recomputed although the cache matched")
    monkeypatch.setattr(embed, "embed_texts", no_model)
    np.testing.assert_array_equal(embed.particle_embeddings(tiny_graph(), cache=cache), first)
    with pytest.raises(AssertionError, match="recomputed"):           # another max_tokens
        embed.particle_embeddings(tiny_graph(), cache=cache, max_tokens=64)

    monkeypatch.setattr(embed, "embed_texts", real)
    changed = {**TEXTS, 1: "an erupting mountain"}
    again = embed.particle_embeddings(tiny_graph(changed), cache=cache)
    assert not np.allclose(again[1], first[1])
    np.testing.assert_allclose(np.delete(again, 1, axis=0), np.delete(first, 1, axis=0),
                               atol=1e-6)
    monkeypatch.setattr(embed, "embed_texts", no_model)              # the new texts now cached
    np.testing.assert_array_equal(embed.particle_embeddings(tiny_graph(changed), cache=cache),
                                  again)


def test_unreadable_cache_is_recomputed(emb, tmp_path):
    cache = tmp_path / "emb.safetensors"
    cache.write_bytes(b"not a safetensors file")
    said = []
    out = embed.particle_embeddings(tiny_graph(), cache=cache, say=said.append)
    np.testing.assert_array_equal(out, emb)
    assert any("unreadable" in s for s in said)


def test_nearest_top_k_is_the_stable_sort_ties_included():
    from loop.embed import top_stable
    rng = np.random.default_rng(0)
    for trial in range(200):
        s, p = rng.integers(1, 6), rng.integers(2, 30)
        sim = (rng.integers(0, 4, (s, p)) if trial % 2 else rng.normal(size=(s, p)))
        sim = sim.astype(np.float32)
        sim[0, 0] = -np.inf                                   # a source's own column
        for k in range(p + 1):
            np.testing.assert_array_equal(top_stable(sim, k),
                                          np.argsort(-sim, axis=1, kind="stable")[:, :k])
