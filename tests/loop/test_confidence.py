"""Calibrated confidence: monotone and within [0, 1], the fold's top candidates labelled by
hand, acceptance by estimated precision, and a cycle that accepts at a precision."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loop.calibrate import (accept_count, apply, fit_calibration, fold_pairs,
                            isotonic_calibration, reliability)
from loop.fit import FitQueries
from loop.rank import Ranker


@pytest.mark.parametrize("fit", [fit_calibration, isotonic_calibration])
def test_the_fold_map_is_monotone_and_bounded(fit):
    rng = np.random.default_rng(0)
    prob = rng.random(2000)
    label = (rng.random(2000) < prob ** 2).astype(float)      # truth: P(link) = p²
    cal = fit(prob, label)
    grid = np.linspace(-0.5, 1.5, 201)
    est = apply(cal, grid)
    assert (np.diff(est) >= 0).all() and est.min() >= 0 and est.max() <= 1
    assert abs(apply(cal, np.array([0.5]))[0] - 0.25) < 0.08
    table = reliability(prob, label, cal)
    assert sum(b["count"] for b in table) == 2000
    assert all(abs(b["estimated"] - b["observed"]) < 0.05 for b in table if b["count"] > 100)
    np.testing.assert_array_equal(apply(None, grid), grid)    # no calibration: as given


def test_fold_pairs_label_each_sources_top_candidates():
    # two sources over 5 particles; feature = the score; source 0's hidden target is 3
    x = torch.tensor([[[0.], [1.], [5.], [4.], [2.]],
                      [[3.], [0.], [1.], [2.], [9.]]])
    mask = torch.tensor([[False, True, True, True, True], [True, True, True, True, False]])
    q = FitQueries(("indegree",), x, row=torch.tensor([0, 1]), target=torch.tensor([3, 0]),
                   mask=mask)
    prob, label, src = fold_pairs(q, Ranker(("indegree",), (1.0,)), top=2)
    assert (src == -1).all()                                   # the queries record no sources
    # source 0: candidates 1..4, best 2 (5) then 3 (4); source 1: 0..3 (4 is not a candidate)
    e = np.exp([5., 4., 2., 1.])
    f = np.exp([3., 2., 1., 0.])
    np.testing.assert_allclose(prob, [e[0] / e.sum(), e[1] / e.sum(), f[0] / f.sum(),
                                      f[1] / f.sum()], rtol=1e-6)
    np.testing.assert_array_equal(label, [0, 1, 1, 0])


def test_accept_while_the_estimated_precision_holds():
    assert accept_count([0.95, 0.9, 0.7, 0.6, 0.1], 0.8) == 3       # mean .85, then .7875
    assert accept_count([0.95, 0.9, 0.7, 0.6, 0.1], 0.99) == 0
    assert accept_count([], 0.8) == 0
    assert accept_count([0.5, 0.9], 0.6) == 2                        # the whole prefix's mean


def test_a_cycle_accepts_at_a_precision_and_shows_its_estimate(tmp_path):
    from tests.conftest import write_wiki
    from tests.loop.test_cycle import graft
    particles, links, corpus = write_wiki(tmp_path, pages=50)
    for kind, path in (("particles", particles), ("links", links)):
        assert graft(tmp_path, "ingest", kind, str(path)).returncode == 0
    run = graft(tmp_path, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "200",
                "--d", "16", "--layers", "1", "--accept-precision", "0.05",
                "--out", str(tmp_path / "out"), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout)["cycles"][0]
    ranker = json.loads((tmp_path / "out" / "cycle-1" / "ranker.json").read_text())
    cal = ranker["fit"]["calibration"]
    assert cal["pairs"] > 0 and row["reliability"] == cal["reliability"]
    assert (tmp_path / "out" / "cycle-1" / "reliability.png").exists()
    from graph.store import Store
    with Store(tmp_path / "g.duckdb", create=False, read_only=True) as store:
        conf = [c for (c,) in store.query("SELECT confidence FROM proposals ORDER BY "
                                          "confidence DESC")]
        taken = [c for (c,) in store.query("SELECT confidence FROM proposals WHERE status = "
                                           "'accepted' ORDER BY confidence DESC")]
    assert all(0 <= c <= 1 for c in conf)
    assert len(taken) == accept_count(conf, 0.05) == row["accepted"]
    assert taken
    assert row["estimated_precision"] == round(float(np.mean(taken)), 4) >= 0.05


def test_pages_without_links_get_their_own_map():
    rng = np.random.default_rng(0)
    prob = rng.random(4000)
    cold = np.arange(4000) < 1000
    # linked pages: P(link) = p²/2; pages without links: P(link) = p (far likelier)
    label = (rng.random(4000) < np.where(cold, prob, prob ** 2 / 2)).astype(float)
    cal = fit_calibration(prob[~cold], label[~cold])              # as calibrate() splits
    cal["cold"] = fit_calibration(prob[cold], label[cold])
    at = np.array([0.9, 0.9])
    warm_est, cold_est = apply(cal, at, cold=np.array([False, True]))
    assert abs(cold_est - 0.9) < 0.1 and warm_est < 0.5
    assert apply(cal, at, cold=True)[0] == cold_est          # one flag for every pair
    np.testing.assert_array_equal(apply(cal, at), apply(cal, at, cold=False))


def test_gaps_measure_each_candidate_from_its_pages_best():
    from loop.calibrate import gaps
    src = np.array([3, 3, 5, 5, 5, 9])
    logp = np.array([-1.0, -2.0, -0.5, -3.0, -0.5, -4.0])
    np.testing.assert_array_equal(gaps(src, logp), [0.0, -1.0, 0.0, -2.5, 0.0, 0.0])
    assert gaps(np.zeros(0), np.zeros(0)).shape == (0,)


def test_the_new_note_map_weighs_the_gap_and_stays_monotone_within_a_page():
    """A note lacking many links spreads its softmax: its 10th candidate has a small share and
    is still a link. The map learns that from the gap to the page's best (an exact answer on
    data drawn from the model), orders each page's candidates as the ranker does, asks for
    the gap it was fitted with, and drops a gap that would invert a page's order."""
    from loop.calibrate import _logit, _sigmoid, gaps
    rng = np.random.default_rng(2)
    pages, per = 4000, 5
    src = np.repeat(np.arange(pages), per)
    logp = np.sort(np.log(rng.dirichlet(np.full(30, 0.3), pages)[:, :per]), axis=1)[:, ::-1]
    logp = logp.ravel()
    prob, gap = np.exp(logp), gaps(src, logp)
    names = np.log1p(rng.integers(0, 40, pages * per))
    label = (rng.random(pages * per) < _sigmoid(0.5 * _logit(prob) + 0.5 * names
                                                + 1.5 * gap - 0.5)).astype(float)
    own = fit_calibration(prob, label, context=names, gap=gap)
    assert abs(own["a"] - 0.5) < 0.1 and abs(own["c"] - 0.5) < 0.1
    assert abs(own["g"] - 1.5) < 0.2 and abs(own["b"] + 0.5) < 0.3
    cal = {**fit_calibration(prob, label), "new": own, "cold": own}
    est = apply(cal, prob, cold=True, new=True, context=names[0], gap=gap).reshape(pages, per)
    assert (np.diff(est, axis=1) <= 0).all()                # each page best first, as ranked
    with pytest.raises(ValueError, match="gap"):
        apply(cal, prob, cold=True, new=True, context=names)
    flipped = fit_calibration(prob, label, context=names, gap=-4 * gap)
    assert "g" not in flipped and set(flipped) >= {"a", "b", "c"}
    # a fold where, once the gap is in, the share counts against a link (a free fit: a < 0):
    # the map constrained to a ≥ 0 keeps the gap and the names, not an isotonic map of p alone
    against = (rng.random(pages * per) < _sigmoid(-0.4 * _logit(prob) + 0.5 * names
                                                  + 1.5 * gap - 2)).astype(float)
    held = fit_calibration(prob, against, context=names, gap=gap)
    assert held["a"] == 0 and held["g"] > 1 and held["c"] > 0.3
    est = apply({**cal, "new": held}, prob, cold=True, new=True, context=names[0], gap=gap)
    assert (np.diff(est.reshape(pages, per), axis=1) <= 0).all()


def test_a_new_note_gets_the_map_of_the_pages_the_fold_emptied():
    """A page without links that was already one (a tag page) reads low on the cold map;
    the same probability on a new note reads what the emptied pages showed."""
    rng = np.random.default_rng(1)
    prob = rng.random(3000)
    label = (rng.random(3000) < prob).astype(float)            # emptied pages: P(link) = p
    # linked pages: p / 10; pages without links: p / 5 (most of them have nothing to link)
    cal = fit_calibration(prob, (rng.random(3000) < prob / 10).astype(float))
    cal["cold"] = fit_calibration(prob, (rng.random(3000) < prob / 5).astype(float))
    cal["new"] = fit_calibration(prob, label)
    at = np.array([0.9, 0.9, 0.9])
    linked, old, new = apply(cal, at, cold=np.array([False, True, True]),
                             new=np.array([False, False, True]))
    assert abs(new - 0.9) < 0.1 and old < 0.35 and linked < 0.2
    without = {k: v for k, v in cal.items() if k != "new"}   # no emptied pages: the cold map
    assert apply(without, at[:1], cold=True, new=True)[0] == old


def test_calibrate_fits_the_new_note_map_on_the_pages_the_fold_emptied(tmp_path):
    """calibrate() on a fold that emptied pages (fold_pages): the "new" map is fitted only on
    the top candidates of fold sources without links that had hidden ones."""
    from loop.calibrate import Fold, calibrate, fold_pairs
    from loop.fit import fit_on, fit_queries
    from graph.store import Store
    from loop.fold import not_candidates
    from tests.loop.test_rank import fold_features
    graph, feats, pairs = fold_features(tmp_path, pages=60, fold_pages=0.3)
    with Store(tmp_path / "fold.duckdb", read_only=True) as fs:
        known = not_candidates(graph, fs)
    q = fit_queries(feats, known, pairs)
    ranker = fit_on(q)
    sources = np.setdiff1d(np.arange(len(graph.index)), pairs[:, 0])
    cal = calibrate([Fold(q, feats, known, sources)], ranker, tmp_path, say=print, top=3)
    prob, label, src = fold_pairs(q, ranker, 3)
    emptied = graph.cold()[src]
    assert emptied.any() and (~emptied).any()
    assert "new" in cal and cal["new"]["pairs"] == emptied.sum()
    assert cal["new"]["positives"] == label[emptied].sum()
    twice = calibrate([Fold(q, feats, known, sources)] * 2, ranker, tmp_path, top=3)
    assert twice["new"]["pairs"] == 2 * cal["new"]["pairs"]      # folds pool their pairs
    assert twice["new"]["positives"] == 2 * cal["new"]["positives"]


def test_the_fold_map_recovers_a_logistic_truth():
    from loop.calibrate import _logit, _sigmoid
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.01, 0.99, 20000)
    label = (rng.random(20000) < _sigmoid(2 * _logit(prob) - 1)).astype(float)
    cal = fit_calibration(prob, label)
    assert abs(cal["a"] - 2) < 0.15 and abs(cal["b"] + 1) < 0.15
    grid = np.linspace(0, 1, 201)
    est = apply(cal, grid)
    assert (np.diff(est) > 0).all() and 0 < est.min() and est.max() < 1   # strictly: no ties
    # a weight counts as that many copies of the pair
    twice = fit_calibration(np.r_[prob[:500], prob[:500]], np.r_[label[:500], label[:500]])
    weighted = fit_calibration(prob[:500], label[:500], np.full(500, 2.0))
    assert abs(twice["a"] - weighted["a"]) < 1e-3 and abs(twice["b"] - weighted["b"]) < 1e-3


def test_a_fold_without_an_increasing_relation_gets_the_isotonic_map():
    rng = np.random.default_rng(0)
    prob = rng.random(2000)
    label = (rng.random(2000) < 0.5 - prob / 4).astype(float)   # likelier at low probability
    cal = fit_calibration(prob, label)
    assert "a" not in cal and cal["x"]
    est = apply(cal, np.linspace(0, 1, 101))
    assert (np.diff(est) >= 0).all() and 0 <= est.min() and est.max() <= 1


def test_review_re_estimates_a_cycles_queue_from_the_decisions_on_it(tmp_path):
    from graph.store import Store
    from loop.calibrate import corrected, curator_correction
    from loop.extract import Proposal
    from loop.review import add_proposals, decide, pending_confidence
    fold = np.linspace(0.30, 0.05, 100)                 # the fold's estimates, best first
    props = [Proposal(f"s{i:03d}", f"t{i:03d}", -i / 100, float(f), 0.0, 0.0, None, None,
                      {"fold_confidence": float(f)}) for i, f in enumerate(fold)]
    with Store(tmp_path / "g.duckdb") as store:
        add_proposals(store, props, 1, "model", None)
        ids = [i for (i,) in store.query("SELECT id FROM proposals ORDER BY score DESC")]
        assert pending_confidence(store, 1)[1] == {}          # no decision yet: as stored
        # the curator works the top 40: 30 of them are links (the fold said 0.25)
        decide(store, accept=ids[:40:4] + ids[1:40:4] + ids[2:40:4], reject=ids[3:40:4],
               at=1)
        ranked, fixes = pending_confidence(store, 1)
        fix = fixes[1]
        assert fix == curator_correction(fold[:40], np.array([1., 1., 1., 0.] * 10))
        assert fix["a"] == 1.0 and fix["observed"] == 0.75   # 40 decisions: the level only
        assert [i for i, _ in ranked] == ids[40:]             # the fold's order kept
        np.testing.assert_allclose([c for _, c in ranked], corrected(fix, fold[40:]))
        # the next cycle's queue keeps its own fold's estimates: no decision was made on it
        add_proposals(store, [Proposal("n0", "m0", 0.0, 0.2, 0.0, 0.0, None, None,
                                       {"fold_confidence": 0.2})], 2, "model", None)
        every, fixes = pending_confidence(store)
        assert set(fixes) == {1} and dict(every)[max(dict(every))] == 0.2
        result = decide(store, accept_precision=0.6, cycle=1, at=2)
        assert result.reestimated == {1: fix}
        taken = accept_count([c for _, c in ranked], 0.6)
        assert 0 < taken < 60 and result.decided == sorted(ids[40:40 + taken])
        stored = dict(store.query("SELECT id, confidence FROM proposals WHERE id IN "
                                  f"({', '.join(map(str, ids[40:]))})"))
        np.testing.assert_allclose([stored[i] for i in ids[40:]], corrected(fix, fold[40:]))


def test_the_cold_map_weighs_how_much_a_page_names():
    from loop.calibrate import _logit, _sigmoid
    rng = np.random.default_rng(1)
    prob = rng.uniform(0.01, 0.99, 20000)
    names = np.log1p(rng.integers(0, 40, 20000))          # log(1 + particles the text names)
    # a page naming nothing has nothing to link; one naming many lacks its links
    label = (rng.random(20000) < _sigmoid(_logit(prob) + 1.5 * names - 4)).astype(float)
    own = fit_calibration(prob, label, context=names)
    assert abs(own["a"] - 1) < 0.15 and abs(own["c"] - 1.5) < 0.15 and abs(own["b"] + 4) < 0.3
    cal = {**fit_calibration(prob, label), "cold": own}
    at = np.array([0.9, 0.9, 0.9])
    tag_page, note, linked = apply(cal, at, cold=np.array([True, True, False]),
                                   context=np.log1p([0, 30, 30]))
    assert tag_page < 0.2 < 0.8 < note and linked == apply(cal, at[:1])[0]
    with pytest.raises(ValueError, match="context"):
        apply(cal, at, cold=True)
