"""What each part of the extractor is worth: the ranker refitted on a cycle's fold with feature
groups left out, and each fit ranking the same held-out links (the mission's claim — the
compiled-then-tuned model is *why* graft finds links — is measured here, not assumed).

Groups (loop/rank.py GROUPS): `text` — what the store says without a model (mentions, link
probability, in-degree, text embeddings, …); `compiled` — the compiled checkpoint's beliefs;
`tuned` — the checkpoint with its adapter. Subsets: text, text+compiled, text+tuned, all.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from graph.errors import GraftError
from loop import evaluate
from loop.fit import FitQueries, fit_kind, fit_on
from loop.rank import GROUPS, Ranker, ranker_scorer

SUBSETS = {"text": ("text",), "text+compiled": ("text", "compiled"),
           "text+tuned": ("text", "tuned"), "all": ("text", "compiled", "tuned")}
FOLDER = "ablation"             # cycle-N/ablation/SUBSET.json


def fit_subsets(queries: FitQueries, kind: str = "linear", seed: int = 0,
                say: Callable[[str], None] = lambda _: None) -> dict[str, Ranker]:
    """One ranker per subset whose features were computed (text+tuned and all need an
    adapter; `all` is left out when it would equal text+compiled), each of `kind`
    (loop/fit.py fit_kind)."""
    out = {}
    for name, groups in SUBSETS.items():
        names = tuple(f for f in queries.names if any(f in GROUPS[g] for g in groups))
        if not names or any(names == r.features for r in out.values()):
            continue
        out[name] = fit_kind(queries, names, kind, seed, say=say)
    return out


def choose_subset(queries: FitQueries, rankers: dict[str, Ranker], seed: int = 0,
                  folds: int = 2, say: Callable[[str], None] = lambda _: None) -> dict:
    """Which of the subsets' linear rankers (fit_subsets) the cycle should rank with,
    cross-validated on the fold: its sources are split into `folds` seeded parts, each
    subset is refitted without a part and ranks that part's hidden links, and the subset
    with the fewest features whose mean reciprocal rank is within one standard error of the
    best one's (paired, query by query) is chosen — a feature group must earn its place.

    Why: a group that adds nothing still gets a weight, and that weight swings with the
    fold's draw. On cyberwiki the tuned group's weight went +0.01 → +0.31 between two folds
    of one unchanged store, and the cycle's MRR fell 0.4617 → 0.4521 while text+compiled held
    0.4622 → 0.4612.

    Returns {"subset", "cv_mrr": {subset: mean}, "se": {subset: paired standard error
    against the best}, "folds"}."""
    rows = queries.row.numpy()
    # by page: a page that several folds fit on (loop/fit.py pooled) stays in one part
    pages = queries.pages if queries.pages is not None else np.arange(queries.x.shape[0])
    unique, page_of = np.unique(pages, return_inverse=True)
    part = (np.random.default_rng(seed).permutation(len(unique)) % folds)[page_of]
    recip = {name: np.zeros(len(rows)) for name in rankers}
    for k in range(folds):
        out = part[rows] == k
        if not out.any() or out.all():
            continue
        sub = queries.only(~out)
        sources = np.unique(rows[out])
        at = np.searchsorted(sources, rows[out])
        target = queries.target.numpy()[out]
        mask = queries.mask.numpy()[out]
        for name, ranker in rankers.items():
            fitted = fit_on(sub, ranker.features)
            cols = [queries.names.index(f) for f in ranker.features]
            score = fitted.score(queries.x[torch.as_tensor(sources)][..., cols].numpy())[at]
            recip[name][out] = 1.0 / evaluate.rank_targets(score, target, mask)[0]
    mean = {name: float(r.mean()) for name, r in recip.items()}
    best = max(mean, key=mean.get)
    se = {name: float(np.std(recip[best] - r, ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0
          for name, r in recip.items()}
    fewest = sorted(rankers, key=lambda n: (len(rankers[n].features), -mean[n]))
    chosen = next(n for n in fewest if mean[best] - mean[n] <= se[n])
    say(f"ranker: cross-validated on {folds} parts of the fold's sources, MRR "
        + ", ".join(f"{n} {m:.4f}" for n, m in mean.items()) + f" → {chosen}")
    return {"subset": chosen, "cv_mrr": {n: round(m, 5) for n, m in mean.items()},
            "se": {n: round(v, 5) for n, v in se.items()}, "folds": folds}


def fixed_mrr(queries: FitQueries, ranker: Ranker) -> float | None:
    """The mean reciprocal rank of the fold's hidden links under a ranker fitted elsewhere
    (no refit: every query is out of its sample), or None when the fold lacks one of its
    features."""
    if any(f not in queries.names for f in ranker.features):
        return None
    cols = [queries.names.index(f) for f in ranker.features]
    score = ranker.score(queries.x[..., cols].numpy())[queries.row.numpy()]       # (n, P)
    ranks = evaluate.rank_targets(score, queries.target.numpy(), queries.mask.numpy())[0]
    return float(np.mean(1.0 / ranks))


def save_rankers(rankers: dict[str, Ranker], folder: Path) -> Path:
    folder = Path(folder) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, ranker in rankers.items():
        ranker.save(folder / f"{name}.json")
    return folder


def load_rankers(folder: Path) -> dict[str, Ranker]:
    """The subsets' rankers saved under FOLDER of a cycle folder, in SUBSETS order."""
    folder = Path(folder) / FOLDER
    if not folder.is_dir():
        raise GraftError(f"{folder}: no ablation rankers (the cycle's fit step writes them)")
    return {name: Ranker.load(folder / f"{name}.json") for name in SUBSETS
            if (folder / f"{name}.json").exists()}


def rank_holdout(graph: evaluate.EvalGraph, queries: evaluate.Queries, features,
                 rankers: dict[str, Ranker]) -> dict:
    """{subset: {mrr, hits1, hits10, auc, weights, fold_mrr}} on the held-out queries, every
    subset scored from one computation of the features per batch."""
    return table(evaluate.evaluate(graph, queries, scorers(features, rankers)), rankers)


PREFIX = "ablate:"              # the subsets' method names among other scorers


def scorers(features, rankers: dict[str, Ranker]) -> dict:
    """The subsets' Scorers, named PREFIX + subset, to rank beside other methods."""
    return {PREFIX + name: ranker_scorer(features, r) for name, r in rankers.items()}


def table(result: evaluate.Result, rankers: dict[str, Ranker]) -> dict:
    """The ablation table of an evaluation that ranked `scorers(…, rankers)`."""
    return {name: {**{k: round(v, 5) for k, v in result.metrics(PREFIX + name).items()},
                   "weights": {f: round(w, 6) for f, w in zip(r.features, r.weights)},
                   "fold_mrr": r.fit.get("mrr")}
            for name, r in rankers.items()}


def format_ablation(table: dict) -> str:
    lines = [f"{'ranker features':<16}{'MRR':>8}{'Hits@1':>8}{'Hits@10':>9}{'AUC':>8}"
             f"{'fold MRR':>10}  tuned weights"]
    for name, m in table.items():
        tuned = {f: w for f, w in m["weights"].items() if f in GROUPS["tuned"]}
        lines.append(f"{name:<16}{m['mrr']:>8.4f}{m['hits1']:>8.4f}{m['hits10']:>9.4f}"
                     f"{m['auc']:>8.4f}{_f(m.get('fold_mrr')):>10}  "
                     + (json.dumps(tuned) if tuned else "–"))
    return "\n".join(lines)


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"
