"""bench/curator.py: the key/test split and the simulated curator are deterministic."""
from __future__ import annotations

from bench.curator import abstainer, curator_review, key_side, split_key, which_ranker
from graph.store import Store
from loop.extract import Proposal
from loop.review import add_proposals


def test_the_key_and_the_test_are_disjoint_and_seeded():
    rows = [{"from": f"s{i % 7}", "to": f"t{i}"} for i in range(40)]
    rows.append(dict(rows[0]))                       # a duplicate pair goes with its twin
    key, test = split_key(rows, seed=3)
    pairs = lambda rs: {(r["from"], r["to"]) for r in rs}   # noqa: E731
    assert not pairs(key) & pairs(test) and len(key) + len(test) == len(rows)
    assert len(pairs(key)) == 20
    assert split_key(rows, seed=3) == (key, test) and split_key(rows, seed=4) != (key, test)


def _store(path):
    store = Store(path)
    props = [Proposal(src=f"s{i % 3}", dst=f"t{i}", score=float(i % 5), confidence=0.1 * (i % 5),
                      tuned=0.0, compiled=0.0, head=None, semcon=None, evidence={})
             for i in range(12)]
    add_proposals(store, props, 1, "model", None)
    return store


def test_the_curator_works_the_queue_the_same_way_every_time(tmp_path):
    key = {("s0", "t3"), ("s1", "t4"), ("s2", "t8"), ("s0", "t0")}
    out = []
    for name in ("a", "b"):
        with _store(tmp_path / f"{name}.duckdb") as store:
            out.append(curator_review(store, 1, key, k=5, hidden=key | {("s0", "t9")}))
            status = store.query("SELECT src, dst, status, reviewer FROM proposals ORDER BY id")
            out[-1]["status"] = status
    assert out[0] == out[1]
    review = out[0]
    # the queue: score 4 (t4, t9), 3 (t3, t8), 2 (t2) — by score, then id
    assert review["reviewed"] == 5 and review["accepted"] == 3
    assert review["measured"] == 0.6
    assert review["hidden_share"] == 0.8             # t9 is hidden too, in the test half
    assert review["estimated"] == round((0.4 + 0.4 + 0.3 + 0.3 + 0.2) / 5, 4)
    decided = {(s, d): st for s, d, st, _ in review["status"] if st != "pending"}
    assert decided == {("s1", "t4"): "accepted", ("s0", "t9"): "rejected",
                       ("s0", "t3"): "accepted", ("s2", "t8"): "accepted",
                       ("s2", "t2"): "rejected"}


def test_a_curator_who_abstains_on_test_pairs_leaves_them_pending(tmp_path):
    key = {("s0", "t3"), ("s1", "t4"), ("s2", "t8"), ("s0", "t0")}
    test = {("s0", "t9")}
    with _store(tmp_path / "g.duckdb") as store:
        review = curator_review(store, 1, key, k=5, hidden=key | test,
                                abstain=abstainer("abstain", key, key | test, seed=0))
        status = dict(((s, d), st) for s, d, st in store.query(
            "SELECT src, dst, status FROM proposals"))
    assert review["reviewed"] == 5 and review["decided"] == 4 and review["accepted"] == 3
    assert review["measured"] == 0.75                  # 3 of the 4 decided, not 3 of 5
    assert review["estimated"] == round((0.4 + 0.3 + 0.3 + 0.2) / 4, 4)
    assert status[("s0", "t9")] == "pending" and status[("s2", "t2")] == "rejected"


def test_a_balanced_curator_decides_a_seeded_half_of_the_wrong_pairs_too():
    pairs = [(f"s{i}", f"t{i}") for i in range(4000)]
    side = [key_side(p, seed=1) for p in pairs]
    assert side == [key_side(p, seed=1) for p in pairs] != [key_side(p, seed=2) for p in pairs]
    assert abs(sum(side) / len(side) - 0.5) < 0.03
    key, test = {pairs[0], pairs[1]}, {pairs[2]}
    leave = abstainer("balanced", key, key | test, seed=1)
    assert not leave(pairs[0]) and leave(pairs[2])            # the key decided, the test left
    assert [leave(p) for p in pairs[3:]] == [not s for s in side[3:]]
    assert not any(abstainer("reject", key, key | test, seed=1)(p) for p in pairs[:10])


def test_a_skipping_curator_decides_k_down_the_queue(tmp_path):
    key = {("s0", "t3"), ("s1", "t4"), ("s2", "t8"), ("s0", "t0")}
    test = {("s0", "t9"), ("s2", "t2")}
    with _store(tmp_path / "g.duckdb") as store:
        review = curator_review(store, 1, key, k=3, hidden=key | test,
                                abstain=test.__contains__, skip=True)
        status = dict(((s, d), st) for s, d, st in store.query(
            "SELECT src, dst, status FROM proposals"))
    # the queue: t4, t9, t3, t8, t2, ... — t9 passed over, t4 t3 t8 decided
    assert review["decided"] == 3 and review["reviewed"] == 4 and review["accepted"] == 3
    assert status[("s0", "t9")] == "pending" and status[("s2", "t8")] == "accepted"


def test_the_table_names_the_ranker_each_cycle_extracted_with():
    kept = {"mode": "keep", "kept": True, "from_cycle": 1, "challenger_subset": "all"}
    assert which_ranker({"ranker_subset": "text"}) == "new text"
    assert which_ranker({"ranker_subset": "text", "incumbent": kept}) == "kept from cycle 1"
    assert which_ranker({"ranker_subset": "all", "incumbent": {**kept, "kept": False}}) == "new all"
    assert which_ranker({"incumbent": {**kept, "mode": "average", "kept": False}}) == \
        "average of cycle 1's and new all"
