"""The boosted ranker: it finds a band a linear score cannot, `auto` keeps it only then, and it
survives a save and load as text (no pickle)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loop.fit import FitQueries, fit_kind
from loop.rank import Ranker

pytest.importorskip("lightgbm")


def queries(band: bool, seed: int = 0, sources: int = 120, size: int = 300) -> FitQueries:
    """Each source's hidden target is the candidate whose feature `a` is nearest 0.5 (band) or
    largest (monotone); `b` is noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((sources, size, 2)).astype(np.float32)                      # (S, P, F)
    target = (np.abs(x[..., 0] - 0.5).argmin(1) if band else x[..., 0].argmax(1))
    return FitQueries(names=("mention", "indegree"), x=torch.from_numpy(x),
                      row=torch.arange(sources), target=torch.as_tensor(target),
                      mask=torch.ones(sources, size, dtype=torch.bool))


def test_auto_keeps_the_booster_where_a_linear_score_cannot_rank():
    q = queries(band=True)
    ranker = fit_kind(q, kind="auto", seed=0)
    assert ranker.kind == "lgbm"
    val = ranker.fit["validation_mrr"]
    assert val["lgbm"] > val["linear"] + 0.1
    monotone = fit_kind(queries(band=False), kind="auto", seed=0)
    assert monotone.kind == "linear" and "chosen_over_lgbm" in monotone.fit


def test_booster_round_trips_as_text(tmp_path):
    q = queries(band=True, sources=60)
    ranker = fit_kind(q, kind="lgbm", seed=1)
    path = ranker.save(tmp_path / "ranker.json")
    raw = json.loads(path.read_text())
    assert raw["model"].startswith("tree")                    # LightGBM's text format
    again = Ranker.load(path)
    x = q.x[:5].numpy()
    np.testing.assert_array_equal(again.score(x), ranker.score(x))
    shares = again.contributions(x[0, :3].astype(np.float64))
    assert shares.shape == (3, 2)
    assert fit_kind(q, kind="lgbm", seed=1).model == ranker.model       # seeded, deterministic
