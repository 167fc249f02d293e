"""Snapshots: content addresses, immutability, and the CSR / networkx exports."""
from __future__ import annotations

import random

import numpy as np
import pytest

from graph.errors import GraftError
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_tokens
from graph.snapshot import adjacency, get_snapshot, take_snapshot, to_networkx
from graph.store import Store
from tests.conftest import FIXTURES, ingest_fixture, link, pid, write_jsonl


def test_star_csr_is_exact(store):
    ingest_fixture(store, "star")
    adj = adjacency(store, take_snapshot(store))
    assert adj.index == [pid(n) for n in ("hub", "leaf1", "leaf2", "leaf3", "leaf4", "leaf5")]
    expected = np.zeros((6, 6))
    expected[0, 1:] = [1, 2, 3, 4, 5]  # hub → leaf_i with amount i
    np.testing.assert_array_equal(adj.matrix.toarray(), expected)


def test_effective_stake_clips_valence_and_scales_by_rho(store, tmp_path):
    write_jsonl(tmp_path / "tokens.jsonl", [{"token": "link", "rho": 0.5}])
    ingest_tokens(store, [tmp_path / "tokens.jsonl"])
    ingest_fixture(store, "communities")
    adj = adjacency(store, take_snapshot(store))
    pos = adj.position()
    m = adj.matrix.toarray()
    assert m[pos[pid("a1")], pos[pid("a2")]] == 1.0     # amount 2 · ρ 0.5
    assert m[pos[pid("a4")], pos[pid("b1")]] == 0.5     # the bridge, amount 1
    assert m[pos[pid("a1")], pos[pid("b4")]] == 0.0     # valence -1: clipped to 0
    assert m[pos[pid("b2")], pos[pid("a3")]] == 0.0     # valence 0: no stake
    assert adj.matrix.nnz == 13
    assert len(adj.index) == 8                          # zero-stake links still name their ends


def test_repeated_links_sum_and_label_links_stay_out(store, tmp_path):
    rows = [link("p", "q", amount=2, time=1), link("p", "q", amount=3, time=2),
            link("q", "r", semcon="is-a", time=3)]
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", rows)])
    adj = adjacency(store, take_snapshot(store))
    assert adj.index == [pid("p"), pid("q"), pid("r")]  # no semcon, no axon
    assert adj.matrix[0, 1] == 5 and adj.matrix.nnz == 2


def test_first_appearance_follows_canonical_order_not_ingest_order(tmp_path):
    rows = [link(a, b, time=t) for t, (a, b) in enumerate([("x", "y"), ("y", "z"), ("z", "w"),
                                                            ("w", "x"), ("x", "z")])]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    got = []
    for i, order in enumerate((rows, shuffled)):
        with Store(tmp_path / f"{i}.duckdb") as s:
            ingest_links(s, [write_jsonl(tmp_path / f"{i}.jsonl", order)])
            snap = take_snapshot(s)
            adj = adjacency(s, snap)
            got.append((snap.id, adj.index, adj.matrix.toarray().tolist()))
    assert got[0] == got[1]
    assert got[0][1] == [pid(n) for n in ("x", "y", "z", "w")]


def test_snapshot_is_content_addressed_idempotent_and_immutable(store, tmp_path):
    ingest_fixture(store, "chain")
    first = take_snapshot(store)
    assert take_snapshot(store) == first                       # nothing new: same snapshot
    before = adjacency(store, first).matrix.toarray()
    ingest_links(store, [write_jsonl(tmp_path / "more.jsonl", [link("e", "a", time=9)])])
    second = take_snapshot(store)
    assert second.id != first.id and second.links == first.links + 1
    np.testing.assert_array_equal(adjacency(store, first).matrix.toarray(), before)
    assert get_snapshot(store, first.id[:10]) == first
    assert get_snapshot(store) == second
    with pytest.raises(GraftError, match="no match"):
        get_snapshot(store, "ffff")


def test_networkx_export_matches_csr(store):
    ingest_fixture(store, "communities")
    snap = take_snapshot(store)
    adj, graph = adjacency(store, snap), to_networkx(store, snap)
    assert list(graph.nodes) == adj.index
    assert graph.nodes[pid("a1")]["name"] == "a1"
    m = adj.matrix.toarray()
    for u, v, w in graph.edges(data="weight"):
        assert m[adj.index.index(u), adj.index.index(v)] == w
    assert graph.number_of_edges() == adj.matrix.nnz


def test_empty_store_cannot_snapshot(store):
    with pytest.raises(GraftError, match="no links"):
        take_snapshot(store)


def test_fixture_files_exist():
    assert sorted(p.name for p in FIXTURES.glob("*.links.jsonl")) == [
        "chain.links.jsonl", "communities.links.jsonl", "star.links.jsonl", "typed.links.jsonl"]
