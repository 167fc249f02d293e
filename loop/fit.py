"""Fitting the extractor's ranker (loop/rank.py) on a fold's hidden links: each hidden (p, q)
is a query whose target q must win a softmax over p's candidates — a listwise preference for
the links curators made over the mentions they left unlinked — and the choice between that
linear fit and a boosted one (loop/gbm.py).

On a graph beyond loop/candidates.py's CANDIDATES_ABOVE particles the softmax of each query
runs over its source's candidates (what extraction scores there) plus its hidden targets and
rejected pairs, and the second axis of the features is then each source's candidate slots
(FitQueries.columns says which particle each slot is).

Letters in shape comments: P particles in the index (or C candidate slots of a source),
S fitted sources, F features, n queries.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from graph.errors import GraftError
from graph.runtime import block_pool
from loop import candidates as cand
from loop.rank import BOUNDED, Features, Ranker

FIT_ENTRIES = 60_000_000          # score entries (sources × P × F) held while fitting
FIT_SOURCES = 2000                # sources fitted on their candidates (a large graph)


@dataclass(frozen=True)
class FitQueries:
    """The hidden links of a fold as fitting queries, with every feature computed once."""

    names: tuple[str, ...]
    x: torch.Tensor                 # (S, P, F) features of the fitted sources
    row: torch.Tensor               # (n,) each query's row of x
    target: torch.Tensor            # (n,) each query's target position
    mask: torch.Tensor              # (n, P) its candidates (the target included)
    hard: torch.Tensor | None = None    # (S, P) candidates a curator rejected
    hard_weight: float = 1.0        # how many candidates each rejected one counts as
    sources: np.ndarray | None = None   # (S,) index position of each fitted source
    columns: np.ndarray | None = None   # (S, C) the particle of each candidate slot (−1:
                                        # none); None: the slots are the whole index
    pages: np.ndarray | None = None     # (S,) each source's particle id: the same page
                                        # across pooled folds, whose indexes may differ

    def only(self, keep) -> FitQueries:
        """The queries `keep` (n,) bool selects, over the same features and sources."""
        from dataclasses import replace
        keep = torch.as_tensor(keep)
        return replace(self, row=self.row[keep], target=self.target[keep], mask=self.mask[keep])


def pooled(parts: list[FitQueries]) -> FitQueries:
    """One FitQueries of several folds' queries, each fold's sources kept apart (a page that
    two folds fit on is two sources, each with its own fold's features and candidates);
    candidate slots, or index positions, are padded to the widest fold's (no query's
    candidate). A fold's index may be shorter than another's (a link type that is no
    link's end there is no particle), so `sources` and `columns` are positions in each
    source's own fold; `pages` names the page."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if any(q.names != first.names for q in parts):
        raise GraftError(f"folds computed different features: {[q.names for q in parts]}")
    if len({q.columns is None for q in parts}) > 1:
        raise GraftError("folds disagree on candidate slots (dense and candidate scans)")
    if len({q.hard_weight for q in parts}) > 1:
        raise GraftError("folds weigh rejected pairs differently")
    width = max(q.x.shape[1] for q in parts)

    def pad(t: torch.Tensor, value) -> torch.Tensor:        # (·, C, …) → (·, width, …)
        shape = (t.shape[0], width - t.shape[1], *t.shape[2:])
        return torch.cat([t, torch.full(shape, value, dtype=t.dtype)], 1)

    offsets = np.cumsum([0] + [q.x.shape[0] for q in parts])
    hard = None
    if any(q.hard is not None for q in parts):
        hard = torch.cat([pad(q.hard if q.hard is not None else
                              torch.zeros(q.x.shape[:2], dtype=torch.bool), False)
                          for q in parts])
    def joined(arrays: list) -> np.ndarray | None:         # (S, …) per fold, or None
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    return FitQueries(
        first.names, torch.cat([pad(q.x, 0.0) for q in parts]),
        torch.cat([q.row + int(o) for q, o in zip(parts, offsets)]),
        torch.cat([q.target for q in parts]), torch.cat([pad(q.mask, False) for q in parts]),
        hard, first.hard_weight, joined([q.sources for q in parts]),
        joined([None if q.columns is None else np.pad(
            q.columns, ((0, 0), (0, width - q.columns.shape[1])), constant_values=-1)
            for q in parts]),
        joined([q.pages for q in parts]))


def source_lists(q: FitQueries):
    """(row of q.x, candidates (P,) bool, hidden targets (k,)) of each fitted source, the
    targets being candidates too."""
    rows = q.row.numpy()
    for s in np.unique(rows):
        mine = np.flatnonzero(rows == s)
        yield int(s), q.mask[mine].any(0).numpy(), np.unique(q.target.numpy()[mine])


def fit_queries(features: Features, known: sp.csr_array, pairs: np.ndarray, seed: int = 0,
                say: Callable[[str], None] = lambda _: None, hard: np.ndarray | None = None,
                hard_weight: float = 1.0, scan: str = "auto") -> FitQueries:
    """The queries of `pairs` (hidden (p, q) index positions) with all of `features`.

    Candidates of p are every particle but p and p's `known` targets; sources beyond
    FIT_ENTRIES score entries are dropped at random (seeded). `hard`: (m, 2) pairs a curator
    rejected — hard negatives, each counting as `hard_weight` candidates in its source's
    softmax (only sources with a hidden link have queries). `scan`: every particle a
    candidate, or each source's candidates (loop/candidates.py scan_kind)."""
    names = tuple(features.names)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        raise GraftError("no hidden link to fit the ranker on")
    size = len(features.graph.index)
    if cand.scan_kind(scan, size) == "candidates":
        return _candidate_queries(features, known, pairs, seed, say, hard, hard_weight)
    sources = np.unique(pairs[:, 0])
    cap = max(1, FIT_ENTRIES // (size * len(names)))
    if len(sources) > cap:
        sources = np.sort(np.random.default_rng(seed).choice(sources, cap, replace=False))
        pairs = pairs[np.isin(pairs[:, 0], sources)]
    say(f"ranker: {len(names)} features of {len(pairs)} hidden links ({len(sources)} sources)")
    x = torch.from_numpy(np.concatenate([features.block(sources[i:i + 256], names)
                                         for i in range(0, len(sources), 256)]))  # (S, P, F)
    row = torch.as_tensor(np.searchsorted(sources, pairs[:, 0]))                # (n,)
    target = torch.as_tensor(pairs[:, 1])                                      # (n,)
    candidates = torch.ones(len(sources), size, dtype=torch.bool)              # (S, P)
    candidates[torch.arange(len(sources)), torch.as_tensor(sources)] = False
    r, c = known[sources].nonzero()
    candidates[torch.as_tensor(r), torch.as_tensor(c)] = False
    mask = candidates[row]                                                     # (n, P)
    mask[torch.arange(len(row)), target] = True
    rejected = None
    if hard is not None and len(hard) and hard_weight != 1.0:
        hard = np.asarray(hard, dtype=np.int64).reshape(-1, 2)
        hard = hard[np.isin(hard[:, 0], sources)]
        rejected = torch.zeros(len(sources), size, dtype=torch.bool)           # (S, P)
        rejected[torch.as_tensor(np.searchsorted(sources, hard[:, 0])),
                 torch.as_tensor(hard[:, 1])] = True
        rejected &= candidates
        say(f"ranker: {int(rejected.sum())} rejected pairs as hard negatives "
            f"(× {hard_weight:g})")
    return FitQueries(names, x, row, target, mask, rejected, hard_weight, sources,
                      pages=_pages(features, sources))


def _candidate_queries(features: Features, known: sp.csr_array, pairs: np.ndarray, seed: int,
                       say: Callable[[str], None], hard: np.ndarray | None,
                       hard_weight: float) -> FitQueries:
    """fit_queries over candidate slots: each fitted source's candidates (of_sources, less
    its `known` targets), its hidden targets and its rejected pairs; up to FIT_SOURCES
    sources (seeded)."""
    names = tuple(features.names)
    sources = np.unique(pairs[:, 0])
    if len(sources) > FIT_SOURCES:
        sources = np.sort(np.random.default_rng(seed).choice(sources, FIT_SOURCES,
                                                             replace=False))
    pairs = pairs[np.isin(pairs[:, 0], sources)]
    hard = (np.zeros((0, 2), np.int64) if hard is None or hard_weight == 1.0
            else np.asarray(hard, dtype=np.int64).reshape(-1, 2))
    hard = hard[np.isin(hard[:, 0], sources)]
    masked = sp.csr_array(known, dtype=bool)

    def block(lo: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The candidate lists of 256 sources from `lo`, and their pairs' features."""
        rows = sources[lo:lo + 256]
        r, q = cand.of_sources(features, rows, masked)                        # by source
        lists = []
        for s, mine in zip(rows, np.split(q, np.searchsorted(r, np.arange(1, len(rows))))):
            own = np.concatenate([mine, pairs[pairs[:, 0] == s, 1], hard[hard[:, 0] == s, 1]])
            lists.append(np.unique(own[own != s]))
        src = np.repeat(rows, [len(c) for c in lists])
        return lists, features.pairs(src, np.concatenate(lists), names)        # (n, F)

    with block_pool() as blocks_map:
        done = list(blocks_map(block, range(0, len(sources), 256)))
    lists = [c for part, _ in done for c in part]
    width = max(map(len, lists))
    columns = np.full((len(sources), width), -1, dtype=np.int64)               # (S, C)
    for i, c in enumerate(lists):
        columns[i, :len(c)] = c
    slot_s, slot_c = np.nonzero(columns >= 0)
    x = np.zeros((len(sources), width, len(names)), dtype=np.float32)          # (S, C, F)
    x[slot_s, slot_c] = np.concatenate([f for _, f in done])   # slots in source-major order
    say(f"ranker: {len(names)} features of {len(pairs)} hidden links ({len(sources)} sources, "
        f"{len(slot_s) / len(sources):.0f} candidates each)")
    row = np.searchsorted(sources, pairs[:, 0])                                # (n,)
    target = np.array([np.searchsorted(lists[i], t) for i, t in zip(row, pairs[:, 1])])
    valid = torch.as_tensor(columns >= 0)
    rejected = None
    if len(hard):
        rejected = torch.zeros(len(sources), width, dtype=torch.bool)          # (S, C)
        at = np.searchsorted(sources, hard[:, 0])
        rejected[torch.as_tensor(at), torch.as_tensor(
            [np.searchsorted(lists[i], t) for i, t in zip(at, hard[:, 1])])] = True
        say(f"ranker: {int(rejected.sum())} rejected pairs as hard negatives "
            f"(× {hard_weight:g})")
    return FitQueries(names, torch.from_numpy(x), torch.as_tensor(row),
                      torch.as_tensor(target), valid[torch.as_tensor(row)], rejected,
                      hard_weight, sources, columns, _pages(features, sources))


def _pages(features: Features, sources: np.ndarray) -> np.ndarray:
    """(S,) the particle id of each fitted source (FitQueries.pages)."""
    return np.asarray(features.graph.index, dtype=object)[sources]


def fit_ranker(features: Features, known: sp.csr_array, pairs: np.ndarray,
               names: tuple[str, ...] | None = None, l2: float = 1e-3, seed: int = 0,
               say: Callable[[str], None] = lambda _: None) -> Ranker:
    """Fit the weights on hidden links: each (p, q) of `pairs` is a query whose target q must
    win a softmax over p's candidates (every particle but p and p's `known` targets).

    Args:
        features: over the fold's EvalGraph, with the fold's checkpoint and adapter.
        known: (P, P) the fold's ground-truth links (not candidates).
        pairs: (n, 2) index positions of the hidden links.
        names: the features used (default: all `features` has).
        l2: ridge on the standardised weights.
        seed: which queries are kept when they exceed FIT_ENTRIES.

    Returns:
        The Ranker, in raw feature units, with fit statistics (queries, loss, in-sample MRR
        and the MRR each feature alone gives on the same queries).
    """
    return fit_on(fit_queries(features, known, pairs, seed, say), names, l2, say)


def fit_on(q: FitQueries, names: tuple[str, ...] | None = None, l2: float = 1e-3,
           say: Callable[[str], None] = lambda _: None) -> Ranker:
    """The listwise linear fit of fit_ranker on prepared queries, with the features `names`
    (a subset of q.names; default all)."""
    names = tuple(names or q.names)
    unknown = [n for n in names if n not in q.names]
    if unknown:
        raise GraftError(f"features {unknown} were not computed; have {list(q.names)}")
    x = q.x[..., [q.names.index(n) for n in names]]                            # (S, P, F')
    offset = (None if q.hard is None else                                      # (S, P)
              q.hard.to(torch.float32) * float(np.log(q.hard_weight)))
    objective = _slot_objective if _packed(q) else _dense_objective
    std, loss_of, mrr_of = objective(x, q, offset)
    w = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of(w) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = (w.detach() / std).numpy().astype(np.float64)
    with torch.no_grad():
        raw = x @ torch.as_tensor(weights, dtype=torch.float32)                 # (S, P)
        fit = {"queries": len(q.row), "sources": int(x.shape[0]),
               "loss": round(float(loss_of(w.detach())), 5),
               "mrr": round(mrr_of(raw), 5),
               "mrr_alone": {n: round(mrr_of(x[..., i]), 5) for i, n in enumerate(names)}}
    say(f"ranker: fitted {len(names)} features, MRR on the fold {fit['mrr']:.4f}")
    return Ranker(names, tuple(float(v) for v in weights), fit,
                  bounds=feature_bounds(q, names))


def feature_bounds(q: FitQueries, names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """{feature: (least, greatest)} of each BOUNDED feature of `names` over the candidates
    of q's fitted sources (their targets among them): the range a ranker fitted on q saw."""
    if q.columns is not None:
        seen = torch.as_tensor(q.columns >= 0)                                 # (S, C)
    else:
        seen = torch.zeros(q.x.shape[:2], dtype=torch.int32).index_add_(
            0, q.row, q.mask.to(torch.int32)) > 0                              # (S, P)
    out = {}
    for name in names:
        if name in BOUNDED:
            v = q.x[..., q.names.index(name)][seen]
            out[name] = (float(v.min()), float(v.max()))
    return out


def _packed(q: FitQueries) -> bool:
    """Whether q's candidate slots are filled from the left in each source and every query
    ranks its target among its source's filled slots (as _candidate_queries makes them)."""
    if q.columns is None:
        return False
    slots = torch.as_tensor(q.columns >= 0)                                   # (S, C)
    filled = torch.arange(slots.shape[1])[None] < slots.sum(1, keepdim=True)
    return torch.equal(slots, filled) and torch.equal(q.mask, slots[q.row])


def _slot_objective(x: torch.Tensor, q: FitQueries, offset: torch.Tensor | None):
    """(feature scales (F,), loss(weights), MRR of (S, C) values) over the filled slots only:
    WordNet's slots are padded to the widest source's, 40× the mean. Each source's softmax
    runs over its own slots, which lie at starts[s]:starts[s] + counts[s] of the flat list."""
    slots = torch.as_tensor(q.columns >= 0)                                   # (S, C)
    filled = slots.nonzero(as_tuple=True)                                     # source-major
    counts = slots.sum(1)                                                     # (S,)
    starts = torch.cumsum(counts, 0) - counts                                 # (S,)
    seg, flat = filled[0], x[filled]                                          # (N,), (N, F)
    extra = None if offset is None else offset[filled]                        # (N,)
    hit = starts[q.row] + q.target                                            # (n,)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)                     # (F,)
    z = (flat - mean) / std                                                   # (N, F)
    # every (query, slot of its source) pair, for the MRRs: (M,) each
    width = counts[q.row]                                                     # (n,)
    pair_q = torch.repeat_interleave(torch.arange(len(q.row)), width)
    pair_f = torch.arange(len(pair_q)) + torch.repeat_interleave(
        starts[q.row] - (torch.cumsum(width, 0) - width), width)

    def loss_of(weights: torch.Tensor) -> torch.Tensor:
        s = z @ weights if extra is None else z @ weights + extra             # (N,)
        top = torch.zeros(x.shape[0]).scatter_reduce(0, seg, s.detach(), "amax",
                                                     include_self=False)      # (S,)
        total = torch.zeros(x.shape[0]).index_add(0, seg, torch.exp(s - top[seg]))
        lse = top + torch.log(total.clamp_min(1e-30))                         # (S,)
        return -(s[hit] - lse[q.row]).mean()

    def mrr_of(values: torch.Tensor) -> float:
        v = values[filled]                                                    # (N,)
        return _mrr_pairs(v[pair_f], v[hit][pair_q], pair_q, len(q.row))

    return std, loss_of, mrr_of


def _dense_objective(x: torch.Tensor, q: FitQueries, offset: torch.Tensor | None):
    """_slot_objective over the whole (S, P) block, each query's `mask` its candidates."""
    flat = (x.reshape(-1, x.shape[-1]) if q.columns is None
            else x[torch.as_tensor(q.columns >= 0)])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)                     # (F,)
    z = (x - mean) / std                                                      # (S, P, F)
    rows = torch.arange(len(q.row))

    def loss_of(weights: torch.Tensor) -> torch.Tensor:
        s = z @ weights if offset is None else z @ weights + offset          # (S, P)
        s = s[q.row].masked_fill(~q.mask, float("-inf"))                      # (n, P)
        return -(s[rows, q.target] - torch.logsumexp(s, 1)).mean()

    def mrr_of(values: torch.Tensor) -> float:
        return _mrr(values[q.row], q.target, q.mask)

    return std, loss_of, mrr_of


def _mrr_pairs(values: torch.Tensor, at_target: torch.Tensor, query: torch.Tensor,
               n: int) -> float:
    """_mrr over (query, candidate) pairs: each candidate's value, its query's target's
    value and the query (M,) each — the target among its own candidates."""
    above = torch.bincount(query, weights=(values > at_target).double(), minlength=n)
    ties = torch.bincount(query, weights=(values == at_target).double(), minlength=n) - 1
    return float((1.0 / (1.0 + above + 0.5 * ties)).mean())


def _mrr(scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean reciprocal expected rank (ties half) of each row's target among its candidates."""
    t = scores[torch.arange(len(target)), target][:, None]
    above = ((scores > t) & mask).sum(1)
    ties = ((scores == t) & mask).sum(1) - 1
    return float((1.0 / (1.0 + above + 0.5 * ties).double()).mean())


def fit_kind(q: FitQueries, names: tuple[str, ...] | None = None, kind: str = "auto",
             seed: int = 0, say: Callable[[str], None] = lambda _: None) -> Ranker:
    """fit_on (kind "linear"), a LightGBM lambdarank booster over the same features ("lgbm",
    loop/gbm.py), or whichever of the two ranks a held-back quarter of the fold's sources
    better ("auto"; linear when LightGBM is not installed)."""
    from dataclasses import replace

    from loop import gbm
    if kind not in ("auto", "linear", "lgbm"):
        raise GraftError(f"ranker kind {kind!r}: expected auto, linear or lgbm")
    names = tuple(names or q.names)
    linear = fit_on(q, names, say=say)
    if kind == "linear" or (kind == "auto" and not gbm.available()):
        return linear
    choice = {"kind": "lgbm", "mrr": {}}
    if kind == "auto":
        choice = gbm.choose(q, lambda sub, n: fit_on(sub, n), names, seed, say=say)
        if choice["kind"] == "linear":
            return replace(linear, fit={**linear.fit, "chosen_over_lgbm": choice["mrr"]})
    cols = [q.names.index(n) for n in names]
    scores = (q.x[..., cols] @ torch.as_tensor(linear.weights, dtype=torch.float32)).numpy()
    model = gbm.fit_booster(q, names, scores, np.arange(q.x.shape[0]), seed)
    boosted = torch.as_tensor(gbm.predict(model, q.x[..., cols].numpy()))
    fit = {**linear.fit, "kind": "lgbm", "validation_mrr": choice["mrr"],
           "mrr": round(_mrr(boosted[q.row], q.target, q.mask), 5)}
    say(f"ranker: lambdarank booster, MRR on the fold {fit['mrr']:.4f} (in sample)")
    return replace(linear, fit=fit, model=model)
