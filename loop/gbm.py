"""A gradient-boosted ranker (LightGBM's lambdarank) beside the listwise linear fit of
loop/rank.py, fitted on the same fold queries; `choose` keeps whichever ranks a held-back
share of the fold's sources better (the issue asked to try it and keep the better).

Lambdarank needs candidate lists, not all P particles per source: each source's list is its
hidden targets, its hardest negatives under the linear ranker (the candidates a linear fit
confuses with links) and a seeded sample of the rest. The booster is kept as LightGBM's own
text model format inside the ranker's JSON — never a pickle.

Letters in shape comments: S fitted sources, P particles, F features, n queries, c candidates
kept per source.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from graph.errors import GraftError

PARAMS = {"objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 15,
          "min_data_in_leaf": 40, "feature_fraction": 0.9, "lambdarank_truncation_level": 20,
          "num_threads": 1, "deterministic": True, "force_row_wise": True, "verbosity": -1}
ROUNDS = 200
HARD, RANDOM = 200, 100          # negatives per source


def available() -> bool:
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return False
    return True


def lists(q, names: tuple[str, ...], linear: np.ndarray, sources: np.ndarray, seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows (N, F), labels (N,), group sizes) of the candidate lists of `sources` (rows of
    q.x): each source's hidden targets (label 1), its HARD best-scored other candidates under
    `linear` (S, P) and RANDOM others."""
    from loop.fit import source_lists
    cols = [q.names.index(n) for n in names]
    rng = np.random.default_rng(seed)
    wanted = set(int(s) for s in sources)
    xs, ys, groups = [], [], []
    for s, cand, targets in source_lists(q):
        if s not in wanted:
            continue
        cand[targets] = False
        others = np.flatnonzero(cand)
        hard = others[np.argsort(-linear[s, others], kind="stable")[:HARD]]
        rest = np.setdiff1d(others, hard)
        easy = rng.choice(rest, min(RANDOM, len(rest)), replace=False) if len(rest) else rest
        keep = np.concatenate([targets, hard, np.sort(easy)])
        xs.append(q.x[s][keep][:, cols].numpy())
        ys.append(np.r_[np.ones(len(targets)), np.zeros(len(keep) - len(targets))])
        groups.append(len(keep))
    return np.concatenate(xs), np.concatenate(ys), np.array(groups)


def fit_booster(q, names: tuple[str, ...], linear: np.ndarray, sources: np.ndarray,
                seed: int = 0) -> str:
    """LightGBM's text model of a lambdarank booster fitted on `sources`' candidate lists."""
    import lightgbm as lgb
    x, y, groups = lists(q, names, linear, sources, seed)
    data = lgb.Dataset(x, y, group=groups, feature_name=list(names), free_raw_data=False)
    booster = lgb.train({**PARAMS, "seed": seed}, data, num_boost_round=ROUNDS)
    return booster.model_to_string()


def predict(model: str, x: np.ndarray) -> np.ndarray:
    """(S, P) scores of (S, P, F) features."""
    s, p, f = x.shape
    with _LOCK:
        out = _booster(model).predict(x.reshape(-1, f), num_threads=1)
    return out.reshape(s, p).astype(np.float32)


def contributions(model: str, x: np.ndarray) -> np.ndarray:
    """(n, F) each feature's share of each row's score (LightGBM's TreeSHAP; the last column,
    the expected value, is dropped)."""
    with _LOCK:
        return _booster(model).predict(x, pred_contrib=True, num_threads=1)[:, :-1]


_CACHE: dict[int, object] = {}
# Blocks may be scored on threads (graph.runtime.block_pool): the cache and a Booster shared
# by threads are used by one at a time (a shared Booster races: LightGBM issue 6142).
_LOCK = threading.Lock()


def _booster(model: str):
    """The Booster of `model`, the last one kept (call with _LOCK held)."""
    import lightgbm as lgb
    key = hash(model)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = lgb.Booster(model_str=model)
    return _CACHE[key]


def choose(q, linear_fit: Callable, names: tuple[str, ...], seed: int = 0, share: float = 0.25,
           say: Callable[[str], None] = lambda _: None) -> dict:
    """Fit the linear ranker and the booster on (1 − share) of the fold's sources, score both
    on the rest, and say which ranks better: {"kind", "mrr": {"linear", "lgbm"}}."""
    from loop.fit import _mrr
    if not available():
        raise GraftError("--ranker-kind lgbm needs lightgbm: pip install lightgbm")
    rng = np.random.default_rng(seed)
    n_src = q.x.shape[0]
    back = np.zeros(n_src, dtype=bool)
    back[rng.choice(n_src, max(1, int(share * n_src)), replace=False)] = True
    rows = q.row.numpy()
    fit_rows, val_rows = ~back[rows], back[rows]
    ranker = linear_fit(q.only(fit_rows), names)
    cols = [q.names.index(n) for n in names]
    linear = ranker.score(q.x[..., cols].numpy())     # (S, P), clipped to its fit's bounds
    model = fit_booster(q, names, linear, np.flatnonzero(~back), seed)
    boosted = predict(model, q.x[..., cols].numpy()[back])                   # (S_val, P)
    val_row = torch.as_tensor(np.searchsorted(np.flatnonzero(back), rows[val_rows]))
    target, mask = q.target[val_rows], q.mask[val_rows]
    mrr = {"linear": _mrr(torch.as_tensor(linear[back])[val_row], target, mask),
           "lgbm": _mrr(torch.as_tensor(boosted)[val_row], target, mask)}
    kind = "lgbm" if mrr["lgbm"] > mrr["linear"] else "linear"
    say(f"ranker: on {int(back.sum())} held-back fold sources, MRR linear {mrr['linear']:.4f}, "
        f"lgbm {mrr['lgbm']:.4f} → {kind}")
    return {"kind": kind, "mrr": {k: round(v, 5) for k, v in mrr.items()}}
