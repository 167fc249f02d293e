"""Curator decisions feed the next cycle: accepted pairs become hidden labels of the fold,
rejected ones hard negatives of the fit, both correct the calibration; the loop's own
acceptances stay predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graph.store import Store
from loop.calibrate import apply, curator_correction
from loop.fit import FitQueries, fit_on


def _queries(hard=None, weight=1.0):
    # 4 sources over 6 particles, features (mention, indegree); every target (0) is
    # mentioned, half of them linked often, and each source has one mentioned, often linked
    # decoy (5) the curator rejected
    x = torch.zeros(4, 6, 2)
    x[:, :, 1] = torch.tensor([0., 1., 0., 1., 0., 1.])
    x[:2, 0, 1] = 1.0
    x[:, 0, 0] = x[:, 5, 0] = 1.0
    x[:, 2, 0] = 0.5                         # a half-mention that is not a link
    x[:, 1, 0] = 0.2
    mask = torch.ones(4, 6, dtype=torch.bool)
    return FitQueries(("mention", "indegree"), x, torch.arange(4), torch.zeros(4, dtype=torch.long),
                      mask, hard, weight)


def test_rejected_pairs_weigh_as_hard_negatives():
    hard = torch.zeros(4, 6, dtype=torch.bool)
    hard[:, 5] = True
    plain = fit_on(_queries())
    same = fit_on(_queries(hard, 1.0))
    assert plain.weights == same.weights                        # weight 1: any candidate
    heavy = fit_on(_queries(hard, 20.0))
    # the rejected decoy is mentioned and linked often: counting it 20 times pushes indegree down
    assert heavy.weights[1] < plain.weights[1]


def test_the_curators_correction_maps_the_fold_to_what_they_accept():
    rng = np.random.default_rng(0)
    est = rng.uniform(0.05, 0.35, 400)
    label = (rng.random(400) < 2 * est).astype(float)           # curators accept twice as often
    fix = curator_correction(est, label)
    assert fix["reviewed"] == 400 and fix["a"] > 0
    cal = {"x": [0.0, 1.0], "y": [0.0, 1.0], "curator": fix}     # fold map: the identity
    grid = np.linspace(0, 1, 101)
    out = apply(cal, grid)
    assert (np.diff(out) >= 0).all() and 0 <= out.min() and out.max() <= 1
    for p in (0.1, 0.2, 0.3):
        assert abs(apply(cal, np.array([p]))[0] - 2 * p) < 0.08
    np.testing.assert_allclose(apply(cal, grid, curator=False), grid)
    assert curator_correction(est[:19], label[:19]) is None            # too few decisions
    assert curator_correction(est, np.zeros(400)) is None                # one kind only


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Cycle 1 accepts nothing (--curator); a curator accepts 10 proposals and rejects 30;
    the loop auto-accepts one more pair; cycle 2 runs, with DPO on the curator's pairs."""
    from loop.review import decide
    from tests.conftest import write_wiki
    from tests.loop.test_cycle import graft
    root = tmp_path_factory.mktemp("curated")
    particles, links, _ = write_wiki(root, pages=50)
    for kind, path in (("particles", particles), ("links", links)):
        assert graft(root, "ingest", kind, str(path)).returncode == 0
    args = ["cycle", "--max-steps", "5", "--top-k", "200", "--d", "16", "--layers", "1",
            "--curator", "--out", str(root / "out"), "--json", "--hard-negative", "4",
            "--device", "cpu"]
    run = graft(root, *args, "--cycles", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    with Store(root / "g.duckdb") as store:
        assert store.scalar("SELECT count(*) FROM proposals WHERE status <> 'pending'") == 0
        ids = [i for (i,) in store.query("SELECT id FROM proposals ORDER BY score DESC, id")]
        pairs = dict((i, (s, d)) for i, s, d in store.query("SELECT id, src, dst FROM proposals"))
        # the best proposal of 10 sources accepted, their second best and 20 more rejected:
        # each of those sources gives DPO a preference pair
        by_source: dict[str, list[int]] = {}
        for i in ids:
            by_source.setdefault(pairs[i][0], []).append(i)
        two = [v[:2] for v in by_source.values() if len(v) >= 2][:10]
        accept = [a for a, _ in two]
        reject = [b for _, b in two]
        rest = [i for i in ids if i not in accept and i not in reject]
        reject += rest[:20]
        decide(store, accept=accept, reject=reject, reviewer="curator")
        decide(store, accept=rest[20:21], reviewer="auto")
    assert len(accept) == 10
    run = graft(root, *args, "--cycles", "2", "--dpo-pairs", "1", "--dpo-steps", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    return root, [pairs[i] for i in accept], pairs[rest[20]], json.loads(run.stdout)


def test_curator_decisions_tune_the_next_adapter_by_dpo(curated):
    # Cycle 2 goes on from its tuned adapter with DPO on the curators' pairs — each source's
    # accepted target, and its ground-truth (ingest) targets, over its rejected ones, as the
    # checkpoint's token strings — starting at the reference (the tuned adapter itself: loss
    # ln 2); the loop's own acceptance is no decision. The fold's model gets the rejections
    # under the fold's own links only: an accepted link is a hidden label there. Cycle 1
    # had no decisions to learn from.
    from finetune.trl_jobs import checkpoint_tokens, preference_pairs
    from graph import sql_loop
    root, accepted, auto, _ = curated
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        tune = {n: json.loads(store.query(sql_loop.STEP_DONE, {"cycle": n, "step": "tune"})[0][0])
                for n in (1, 2)}
        fit = {n: json.loads(store.query(sql_loop.STEP_DONE, {"cycle": n, "step": "fit"})[0][0])
               for n in (1, 2)}
        decided = store.query(sql_loop.CURATOR_DECISIONS)
        truth = store.query("SELECT DISTINCT src, dst FROM cyberlinks WHERE origin = 'ingest'")
    folder = root / "out" / "cycle-2"
    with Store(folder / "fold" / "fold.duckdb", create=False, read_only=True) as fs:
        fold_truth = fs.query("SELECT DISTINCT src, dst FROM cyberlinks WHERE origin = 'ingest'")
    assert "dpo" not in tune[1] and "fold_dpo" not in fit[1]
    links: dict[str, list[str]] = {}
    for s, t in truth + [(s, t) for s, t, st in decided if st == "accepted"]:
        links.setdefault(s, []).append(t)
    decisions = [{"source": s, "target": t, "status": st} for s, t, st in decided]
    want = preference_pairs(decisions, links=links)
    assert tune[2]["dpo"]["pairs"] == len(want)
    assert any((r["prompt"], r["chosen"]) in set(accepted) for r in want)
    assert not any((r["prompt"], r["chosen"]) == auto for r in want)
    fold_links: dict[str, list[str]] = {}
    for s, t in fold_truth:
        fold_links.setdefault(s, []).append(t)
    fold_want = preference_pairs([d for d in decisions if d["status"] == "rejected"],
                                 links=fold_links)
    assert fit[2]["fold_dpo"]["pairs"] == len(fold_want) > 0
    assert not any((r["prompt"], r["chosen"]) in set(accepted) for r in fold_want)
    trained = tune[2]["dpo"]["adapter"]
    assert trained["steps"] == 2 and trained["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    tokens = checkpoint_tokens(folder / "model")
    rows = [json.loads(line) for line in (folder / "preference.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": tokens[r["prompt"]], "chosen": " " + tokens[r["chosen"]],
                     "rejected": " " + tokens[r["rejected"]]} for r in want]
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    assert not (folder / "adapter-dpo").exists()


def test_accepted_pairs_are_hidden_labels_of_the_next_fold(curated):
    root, accepted, auto, out = curated
    hidden = {tuple(p) for p in json.loads(
        (root / "out" / "cycle-2" / "fold" / "hidden.json").read_text())}
    assert set(accepted) <= hidden                   # a curator's acceptance: always a label
    assert auto not in hidden                        # the loop's own: a prediction, never
    row = out["cycles"][1]
    assert row["curator_accepted_hidden"] == 10 and row["curator_rejected"] == 30
    with Store(root / "out" / "cycle-2" / "fold" / "fold.duckdb", create=False,
               read_only=True) as fold:
        linked = set(fold.query("SELECT src, dst FROM cyberlinks"))
    assert not set(accepted) & linked and auto in linked


def test_curator_decisions_correct_their_own_queue_and_show_in_the_report(curated):
    # cycle 1's decisions re-estimate cycle 1's pending proposals; cycle 2's fold is
    # calibrated afresh (the accepted links are its labels), without cycle 1's correction
    from loop.review import pending_confidence
    root, _, _, out = curated
    fit = json.loads((root / "out" / "cycle-2" / "ranker.json").read_text())["fit"]
    assert "curator" not in fit["calibration"]
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        _, fixes = pending_confidence(store)
    assert set(fixes) == {1} and fixes[1]["reviewed"] == 40 and fixes[1]["accepted"] == 10
    first = out["cycles"][0]
    assert first["reviewed"] == 40 and first["curator_accepted"] == 10
    assert first["curator_precision"] == 0.25
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        cycle2 = [json.loads(e)["fold_confidence"] for (e,) in store.query(
            "SELECT CAST(evidence AS VARCHAR) FROM proposals WHERE cycle = 2")]
    assert cycle2 and all(0 <= c <= 1 for c in cycle2)


def test_decisions_that_do_not_order_the_estimates_move_only_their_level():
    rng = np.random.default_rng(1)
    est = rng.uniform(0.2, 0.3, 80)
    label = (rng.random(80) < 0.1).astype(float)                 # 10% accepted, whatever est
    fix = curator_correction(est, label)
    cal = {"x": [0.0, 1.0], "y": [0.0, 1.0], "curator": fix}
    out = apply(cal, est)
    from loop.calibrate import wilson_lower
    assert fix["a"] == 1.0 and fix["level"] < label.mean()     # less one standard error
    assert abs(fix["level"] - wilson_lower(label.sum(), 80)) < 1e-4
    assert abs(out.mean() - fix["level"]) < 1e-3                 # the curators' level
    assert (np.diff(out[np.argsort(est)]) > 0).all()            # the fold's order, strictly
    assert abs(wilson_lower(8, 10, z=1.96) - 0.4902) < 1e-4       # the textbook 95% interval
    assert wilson_lower(0, 10) == 0.0


def test_dpo_needs_a_lora_adapter_to_go_on_from(tmp_path):
    from finetune.tune import TuneConfig
    from graph.errors import GraftError
    from loop.cycle import CycleConfig, run_cycles
    cfg = CycleConfig(corpus=None, out=tmp_path / "out", dpo_pairs=1,
                      tune=TuneConfig(method="full"))
    with Store(tmp_path / "g.duckdb") as store, pytest.raises(GraftError, match="--method lora"):
        run_cycles(store, cfg)
    assert not (tmp_path / "out").exists()
