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

from graph.errors import GraftError
from loop import evaluate
from loop.fit import FitQueries, fit_kind
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
