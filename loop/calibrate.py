"""Calibrated confidence: the probability that a proposal is a link a curator would make,
learned on the fold's hidden links (DESIGN §4).

The ranker's softmax probability P(q | p) says how q compares with p's other candidates, not
how likely q is a link at all: a page with one missing link and a page with none both give
their best candidate a high share. On the fold the answer is known, so every source's top
candidates — the pairs the extractor would propose — are labelled (is it a hidden link?) and
a logistic map of the probability's logit (Platt scaling, scikit-learn) gives the observed
share: smooth, strictly increasing, within (0, 1). Acceptance by estimated precision
(`accept_count`) then takes proposals best first while the mean confidence of those taken
stays at the target.

Why not an isotonic map (the first version): it is a step function, and the steps are
widest where proposals are — on cyberwiki the 200 most confident proposals of a cycle shared
one value (0.25) while their measured precision fell from 0.80 (best 10) to 0.40, so no
proposal could be told above another, and a correction fitted on curators' decisions about
one step had nothing to order them by (on WordNet it then put every pending proposal at the
curators' 0.77, where 0.36 were links).

Links still missing from the fold count as negatives there, as they do in the store, so the
fold's estimate is low by however many links the store itself lacks — which the fold cannot
know (cyberwiki: the most confident proposals read 0.28 where 0.60 of them were held-out
links). Curators can: once they have reviewed proposals, a correction fitted on what they
decided (`curator_correction`) maps the fold's estimate to the share curators accept, and
`graft review --accept-precision` re-estimates the pending proposals of each cycle with the
decisions made on that cycle's proposals (loop/review.py). Only that cycle's: each cycle's
fold is calibrated afresh — and the next fold holds the accepted links as labels, which
raises its own level — so a correction learnt on one cycle's fold over-corrects the next
(WordNet: cycle 1's decisions, 29 of 31 accepted where the fold estimated 0.50, carried into
cycle 2 accepted 161 proposals at an estimated 0.80 of which 0.59 were links; cycle 2's fold
alone read 0.72 where 0.80 of its best 25 were links).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

TOP = 5                        # candidates per fold source labelled (the extractor's per_source)
PER_BIN = 100                  # fold pairs pooled per isotonic input point
MIN_REVIEWED = 20              # curator decisions (of both kinds) before they correct the fold
MIN_SLOPE = 100                # ... before it may change the fold's spread, not just its level
MIN_COLD = 10                  # true links among a fold's pages without links for their own map


def fold_pairs(q, ranker, top: int = TOP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability (n,), label (n,), source (n,)) of each fold source's `top` best
    candidates under `ranker`: its softmax probability over the source's candidates, 1 when
    the pair is a hidden link of that source, and the source's index position (−1 where the
    queries do not record it)."""
    from loop.fit import source_lists
    cols = [q.names.index(n) for n in ranker.features]
    probs, labels, srcs = [], [], []
    for s, cand, targets in source_lists(q):
        p, best = _top(ranker.score(q.x[s][None, :, cols].numpy())[0], cand, top)
        probs.append(p)
        labels.append(np.isin(best, targets).astype(np.float64))
        srcs.append(np.full(len(p), -1 if q.sources is None else int(q.sources[s])))
    return np.concatenate(probs), np.concatenate(labels), np.concatenate(srcs)


def other_pairs(features, known, ranker, sources: np.ndarray, top: int = TOP,
                candidates: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probability (n,), source (n,)) of the `top` best candidates of fold sources without
    a hidden link (all negatives): most sources of a store have no missing link, and
    calibrating on the sources that do made every confident proposal look right (cyberwiki:
    estimated precision 0.90, measured 0.28). `candidates`: each source's softmax runs over
    its candidates only (loop/candidates.py), as when the ranker was fitted over candidate
    slots."""
    from graph.runtime import block_pool
    if candidates:                  # each source's candidates only, as a candidate scan
        from loop.extract import candidate_top
        masked = sp.csr_array(known, dtype=bool)
        with block_pool() as blocks_map:
            found = list(blocks_map(lambda i: candidate_top(
                features, ranker, sources[i:i + 256], masked, top), range(0, len(sources), 256)))
        if not found:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return (np.exp(np.concatenate([f[2] for f in found])),
                np.concatenate([f[0] for f in found]).astype(np.int64))

    def chunk_top(i: int) -> tuple[list, list]:
        chunk = sources[i:i + 256]
        scores = features.scores(chunk, ranker)                               # (B, P)
        out, srcs = [], []
        for j, s in enumerate(chunk):
            cand = np.ones(scores.shape[1], dtype=bool)
            cand[s] = False
            cand[known[[s]].nonzero()[1]] = False
            p = _top(scores[j], cand, top)[0]
            out.append(p)
            srcs.append(np.full(len(p), int(s)))
        return out, srcs

    with block_pool() as blocks_map:
        done = list(blocks_map(chunk_top, range(0, len(sources), 256)))
    out = [p for part, _ in done for p in part]
    srcs = [c for _, part in done for c in part]
    if not out:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(out), np.concatenate(srcs).astype(np.int64)


def named(graph) -> np.ndarray:
    """(P,) log(1 + how many distinct particles each page's text names): what tells a note
    that lacks its links from a page with nothing to link — on cyberwiki the pages without a
    link name a median 2 particles in 41 characters, those with 3 or more links 19 in 421."""
    from loop.textstats import mentions
    return np.log1p(np.diff(mentions(graph)[0].tocsr().indptr)).astype(np.float64)


def gaps(src: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """(n,) log p − log p_best of each pair's source among the pairs given (log-probabilities
    `logp`; a source's candidates are taken best first, so its best is among them): how far a
    candidate falls behind its page's best. A note lacking 15 links spreads its softmax over
    them, so its 10th candidate's share is small where its distance from the best is not
    (cyberwiki's new notes: see `calibrate`)."""
    src, logp = np.asarray(src), np.asarray(logp, dtype=np.float64)
    if not len(src):
        return logp
    _, at = np.unique(src, return_inverse=True)
    best = np.full(at.max() + 1, -np.inf)
    np.maximum.at(best, at, logp)
    return logp - best[at]


def context_of(calibration: dict | None, graph) -> np.ndarray | None:
    """(P,) the source context `apply` needs for `calibration` (its cold map's use of
    `named`), or None when it needs none."""
    maps = [(calibration or {}).get(key) or {} for key in ("cold", "new")]
    return named(graph) if any("c" in own for own in maps) else None


def _top(score: np.ndarray, cand: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, positions) of the `top` best candidates of one source."""
    score = np.where(cand, np.asarray(score, dtype=np.float64), -np.inf)
    if not np.isfinite(score).any():
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    p = np.exp(score - score.max())
    p /= p.sum()
    best = np.argsort(-p, kind="stable")[:min(top, int(cand.sum()))]
    return p[best], best


def fit_calibration(prob: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None,
                    per_bin: int = PER_BIN, context: np.ndarray | None = None,
                    gap: np.ndarray | None = None) -> dict:
    """{"a", "b"}: the share of true links at ranker probability p is σ(a·logit(p) + b),
    fitted by weighted logistic regression (scikit-learn) on the labelled pairs; `weight` per
    pair (default 1). With `context` (n,) — a property of each pair's source (`named`) — the
    map is σ(a·logit(p) + c·context + b) ({"a", "b", "c"}); with `gap` (n,) — each pair's
    log p − log p_best of its source (`gaps`) — also + g·gap ({"g"}). Where the fit finds no
    increasing relation with p (a ≤ 0), the isotonic map of `isotonic_calibration` instead
    ({"x", "y"}), so the map is monotone in p either way. With the gap, a page's candidates
    stay in the ranker's order when a ≥ 0 and g ≥ 0 (both rise with its score): where the
    free fit leaves that region, the fit constrained to it (`_fit_nonnegative`) — a = 0 is
    then a map that reads a note's candidates by their gap alone (a fold of cyberwiki's
    emptied pages did: the free fit gave the share a ≤ 0 once the gap was in, and the
    isotonic map of the share it fell back to lost both gap and names) — and where that
    puts no weight on the gap, the map without it."""
    from sklearn.linear_model import LogisticRegression
    prob, label = np.asarray(prob, dtype=np.float64), np.asarray(label, dtype=np.float64)
    weight = np.ones(len(prob)) if weight is None else np.asarray(weight, dtype=np.float64)
    if label.min(initial=0) == label.max(initial=0):
        return isotonic_calibration(prob, label, weight, per_bin)
    cols = [_logit(prob)] + [c for c in (context, gap) if c is not None]
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(np.c_[tuple(cols)], label,
                                                        sample_weight=weight)
    coef = [float(c) for c in fit.coef_[0]]
    a, b = coef[0], float(fit.intercept_[0])
    if gap is not None and (a <= 0 or coef[-1] < 0):
        coef, b = _fit_nonnegative(np.c_[tuple(cols)], label, weight, (0, len(cols) - 1))
        a = coef[0]
        if coef[-1] < 1e-6:                         # at its bound: the gap says nothing
            return fit_calibration(prob, label, weight, per_bin, context)
    elif a <= 0:
        return isotonic_calibration(prob, label, weight, per_bin)
    own = dict(zip([k for k, c in (("c", context), ("g", gap)) if c is not None], coef[1:]))
    return {"a": a, "b": b, **own, "pairs": int(len(prob)), "positives": int(label.sum())}


def _fit_nonnegative(x: np.ndarray, label: np.ndarray, weight: np.ndarray,
                     nonneg: tuple[int, ...], c: float = 1e4) -> tuple[list[float], float]:
    """(coefficients, intercept) of the weighted logistic regression fit_calibration runs (the
    same L2 penalty ‖β‖² / 2c) with the coefficients at `nonneg` held ≥ 0 (scipy's L-BFGS-B;
    the loss is convex, so where the free optimum satisfies the bounds this is it)."""
    from scipy.optimize import minimize
    from scipy.special import expit
    k = x.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:k] + theta[k]
        # Σ w·(log(1 + e^z) − y·z), stably, + the penalty
        value = float(weight @ (np.logaddexp(0.0, z) - label * z) + theta[:k] @ theta[:k] / (2 * c))
        r = weight * (expit(z) - label)
        return value, np.r_[x.T @ r + theta[:k] / c, r.sum()]

    bounds = [(0.0, None) if i in nonneg else (None, None) for i in range(k)] + [(None, None)]
    found = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"maxiter": 2000, "gtol": 1e-9})
    return [float(v) for v in found.x[:k]], float(found.x[k])


def isotonic_calibration(prob: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None,
                         per_bin: int = PER_BIN) -> dict:
    """{"x", "y"}: an isotonic map from the ranker's probability to the share of true links,
    as the knots np.interp applies (clipped at both ends); `weight` per pair (default 1).

    The pairs are first pooled into runs of `per_bin` by probability (weighted means): fitted
    pair by pair, the few most confident pairs made their own blocks, and on cyberwiki's fold
    the top ones read 0.90–1.0 where the other half of the fold observed 0.15–0.31; pooled by
    100, the estimates there were 0.20–0.32 against 0.22–0.24 observed."""
    from sklearn.isotonic import IsotonicRegression
    weight = np.ones(len(prob)) if weight is None else np.asarray(weight, dtype=np.float64)
    order = np.argsort(prob, kind="stable")
    xs, ys, ws = [], [], []
    per_bin = max(1, min(per_bin, len(order) // 20))     # at least 20 points on a small fold
    for run in np.array_split(order, max(1, len(order) // per_bin)):
        if len(run):
            w = weight[run]
            xs.append(np.average(prob[run], weights=w))
            ys.append(np.average(label[run], weights=w))
            ws.append(w.sum())
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(xs, ys, sample_weight=ws)
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_],
            "pairs": int(len(prob)), "positives": int(label.sum())}


def _mapped(fit: dict, prob: np.ndarray, context: np.ndarray | float | None = None,
            gap: np.ndarray | float | None = None) -> np.ndarray:
    """One fold map applied: the logistic {"a", "b"} (+ "c" × `context`, + "g" × `gap`), or an
    isotonic {"x", "y"} (stores calibrated before the logistic map, and the fallback) — all
    monotone in the probability (within a page, where the gap moves with it)."""
    if "a" in fit:
        z = fit["a"] * _logit(prob) + fit["b"]
        for key, value, what in (("c", context, "source's context (loop.calibrate.context_of)"),
                                 ("g", gap, "pair's gap from its page's best (loop.calibrate."
                                            "gaps)")):
            if key in fit:
                if value is None:
                    raise ValueError(f"this calibration's map needs each {what}")
                z = z + fit[key] * np.asarray(value, dtype=np.float64)
        return _sigmoid(z)
    return np.interp(prob, fit["x"], fit["y"])


def apply(calibration: dict | None, prob: np.ndarray, curator: bool = True,
          cold: np.ndarray | bool | None = None,
          context: np.ndarray | float | None = None,
          new: np.ndarray | bool | None = None,
          gap: np.ndarray | float | None = None) -> np.ndarray:
    """Calibrated confidence of ranker probabilities (the probabilities themselves without a
    calibration): the fold's map — its map for pages without links where `cold` and the
    calibration has one, and its map for new notes (pages the fold emptied) where `new` too,
    each of which may weigh each source's `context` (per pair, `named`; see context_of) and
    each pair's `gap` from its page's best (`gaps`) — then the curators' correction when the
    calibration has one (and `curator`: ranker files of cycles before corrections went per
    queue carry one)."""
    prob = np.asarray(prob, dtype=np.float64)
    if not calibration or not ("a" in calibration or calibration.get("x")):
        return prob
    est = _mapped(calibration, prob, context, gap)
    for key, where in (("cold", cold), ("new", new)):
        own = calibration.get(key)
        if own and where is not None and np.any(where):
            mask = np.broadcast_to(np.asarray(where, dtype=bool), prob.shape)
            est = np.where(mask, _mapped(own, prob, context, gap), est)
    fix = calibration.get("curator") if curator else None
    return est if not fix else corrected(fix, est)


def corrected(fix: dict, est: np.ndarray) -> np.ndarray:
    """The fold's estimates `est` through a curators' correction (curator_correction)."""
    return _sigmoid(fix["a"] * _logit(est) + fix["b"])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def curator_labels(store, cycle: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(the fold's estimate (n,), 1 if accepted (n,)) of every proposal a person decided (of
    `cycle`, or all) — the loop's own acceptances (reviewer 'auto') are not labels. The
    estimate is the one the proposal got before any curator correction (its evidence's
    fold_confidence)."""
    from graph import sql_loop
    rows = store.query(sql_loop.CURATOR_LABELS, {"cycle": cycle})
    return (np.array([c for c, _ in rows], dtype=np.float64),
            np.array([a for _, a in rows], dtype=np.float64))


def _shift(logits: np.ndarray, mean: float) -> float:
    """The b with mean σ(logits + b) = mean (bisection; the mean rises with b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logits + mid).mean() < mean else (lo, mid)
    return (lo + hi) / 2


def curator_correction(est: np.ndarray, label: np.ndarray, minimum: int = MIN_REVIEWED,
                       slope: int = MIN_SLOPE) -> dict | None:
    """{"a", "b", "reviewed", "accepted", "estimated", "observed", "level"}: observed =
    σ(a·logit(est) + b), fitted on curator decisions. Below `slope` decisions (or when the
    fit finds no increasing relation) a = 1 and b moves the mean estimate to `level`, the
    share accepted less one standard error (the Wilson score bound, z = 1): the fold's order
    and spread, the curators' level — what a few dozen decisions about the top of one queue
    can say, and no more (on WordNet 29 of 31 decisions were acceptances where 0.82 of the
    reviewed were links; moved to 0.94, the queue below was accepted at an estimated 0.80 and
    measured 0.51). From `slope` decisions on, a logistic regression (scikit-learn) fits both.
    None with fewer than `minimum` decisions or only one kind."""
    from sklearn.linear_model import LogisticRegression
    est, label = np.asarray(est, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if len(est) < minimum or label.min() == label.max():
        return None
    x = _logit(est)[:, None]
    a, level = 0.0, float(label.mean())
    if len(est) >= slope:
        fit = LogisticRegression(C=1.0).fit(x, label)
        a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if a <= 0:
        # The decisions do not order the estimates (the reviewed are a narrow, top slice):
        # keep the fold's order and spread, and move the level to what curators accepted —
        # a flat map would throw away which proposals the fold finds likelier.
        level = wilson_lower(label.sum(), len(label))
        a, b = 1.0, _shift(x[:, 0], level)
    return {"a": a, "b": b, "reviewed": int(len(est)), "accepted": int(label.sum()),
            "estimated": round(float(est.mean()), 4), "observed": round(float(label.mean()), 4),
            "level": round(level, 4)}


def wilson_lower(k: float, n: int, z: float = 1.0) -> float:
    """The Wilson score interval's lower end for k successes in n trials."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half))


def reliability(prob: np.ndarray, label: np.ndarray, calibration: dict, bins: int = 10,
                weight: np.ndarray | None = None, context: np.ndarray | None = None,
                gap: np.ndarray | None = None) -> list[dict]:
    """Per bin of estimated confidence: its mean estimate, the observed (weighted) share, the
    number of pairs."""
    est = apply(calibration, prob, context=context, gap=gap)
    weight = np.ones(len(est)) if weight is None else np.asarray(weight, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (est >= lo) & ((est < hi) if hi < 1 else (est <= hi))
        if inside.any():
            w = weight[inside]
            out.append({"estimated": round(float(np.average(est[inside], weights=w)), 4),
                        "observed": round(float(np.average(label[inside], weights=w)), 4),
                        "count": int(inside.sum())})
    return out


def plot_reliability(table: list[dict], path: Path) -> Path | None:
    """estimated vs observed, point size by count; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.scatter([r["estimated"] for r in table], [r["observed"] for r in table],
               s=[10 + 2 * np.sqrt(r["count"]) for r in table])
    ax.set_xlabel("estimated (calibrated confidence)")
    ax.set_ylabel("observed share of true links (fold)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accept_count(confidences: list[float], precision: float) -> int:
    """How many of `confidences` (best first) to accept so that the mean confidence of those
    accepted — their estimated precision — stays ≥ `precision`: the longest such prefix
    (possibly 0)."""
    c = np.asarray(confidences, dtype=np.float64)
    if not len(c):
        return 0
    means = np.cumsum(c) / np.arange(1, len(c) + 1)
    ok = np.flatnonzero(means >= precision)
    return int(ok[-1] + 1) if len(ok) else 0


class Fold(NamedTuple):
    """What calibration reads of one fold: its fitting queries, and (to add the fold's other
    sources, all negatives) its Features, not-candidate links and those other sources."""

    q: object                       # loop.fit.FitQueries
    features: object = None         # loop.rank.Features
    known: sp.csr_array | None = None
    sources: np.ndarray | None = None


def calibrate(folds: list[Fold], ranker, folder: Path, seed: int = 0,
              say: Callable[[str], None] = lambda _: None, top: int = TOP) -> dict:
    """Fit the calibration of `ranker` on the folds: the top candidates of the sources with a
    hidden link (each fold's queries) and of a seeded sample of each fold's other sources (as
    many again, each standing for its share of all of them), through the fold's features
    and not-candidate links, each source's `top` (the extractor's per_source); write the
    reliability plot to folder/reliability.png. Several folds of a cycle (`--folds`) pool
    their pairs. Returns the calibration with its reliability table (in sample, on the
    folds). Curators' decisions correct a cycle's queue afterwards
    (loop.review.pending_confidence), not this map.

    Pages with no out-link in the fold — a new note's case, which a fold hiding whole pages
    (`--fold-pages`) makes — get a map of their own (and the main map is fitted on the other
    pages) when both hold MIN_COLD true links:
    their best candidates are far likelier links than a linked page's (a new note lacks all
    its links), and one map for both puts the two at one rate.

    That map is fitted on every page without links, and most of those are the store's own —
    cyberwiki's tag and stub pages, whose candidates are all negatives there (8,780 of a
    fold's 10,520 such pairs) — so it reads a note the fold emptied low: its 40 test pages'
    best 200 candidates were 0.81 links and read 0.12. The pages the fold emptied are known
    to lack all their links, and a map fitted on them alone ("new", when they hold MIN_COLD
    true links) is the one for a new note (loop/cycle.py new_pages; `graft suggest` on a
    note without links) — never for a page that was already linkless, of which the store
    says nothing.

    The new-note map also weighs each candidate's gap from its page's best (`gaps`): a note
    lacking 15 links spreads its softmax over them, so the share of its 10th is small where
    its distance from the best is not, and the share alone ranks a note with one link above
    a note with fifteen. On the cold-start bench (bench/cold_start.py) the folds of seeds
    1–3 and 5 put their weight there (g ≈ 0.9–1.2 per nat, a ≈ 0–0.6 on the share's logit;
    seed 4's fold g = 0.03), and the new notes' proposals ordered by it reach precision
    0.85 / 0.94 / 0.88 / 0.83 / 0.92 at recall 0.3 on seeds 1–5 against 0.82 / 0.88 / 0.82 /
    0.83 / 0.91 without it (README, "The gap from the note's best"). The other maps keep the
    share alone: the gap was measured for new notes only."""
    parts = [_fold_calibration_pairs(fold, ranker, seed + j, top)
             for j, fold in enumerate(folds)]
    prob, label, weight, src, cold, emptied = (np.concatenate(a) for a in zip(*parts))
    gap = np.concatenate([gaps(part[3], np.log(np.maximum(part[0], 1e-300)))
                          for part in parts])                            # within each fold
    split = label[cold].sum() >= MIN_COLD and label[~cold].sum() >= MIN_COLD
    rest = ~cold if split else np.ones(len(prob), dtype=bool)
    cal = fit_calibration(prob[rest], label[rest], weight[rest])
    cal["reliability"] = reliability(prob[rest], label[rest], cal, weight=weight[rest])
    if split:
        # a page without links that names many particles is a note that lacks its links; one
        # that names few, a page with nothing to link (cyberwiki's tag pages)
        ctx = np.concatenate([named(fold.features.graph)[np.maximum(fold_src, 0)]
                              for fold, (_, _, _, fold_src, _, _) in zip(folds, parts)])

        def own_map(where: np.ndarray, by_gap: bool = False) -> dict:
            g = gap[where] if by_gap else None
            own = fit_calibration(prob[where], label[where], weight[where], context=ctx[where],
                                  gap=g)
            return {**own, "reliability": reliability(prob[where], label[where], own,
                                                      weight=weight[where], context=ctx[where],
                                                      gap=g)}

        own = cal["cold"] = own_map(cold)
        say(f"calibration: pages without links get their own map ({own['positives']} true "
            f"links among {own['pairs']} of their top candidates"
            + (f"; {own['c']:+.2f} per log particle their text names)" if "c" in own else ")"))
        if label[emptied].sum() >= MIN_COLD:
            own = cal["new"] = own_map(emptied, by_gap=True)
            say(f"calibration: new notes get the map of the pages the fold emptied "
                f"({own['positives']} true links among {own['pairs']} of their top "
                f"candidates" + (f"; {own['g']:+.2f} per nat behind the page's best)"
                                 if "g" in own else ")"))
    plot = plot_reliability(cal["reliability"], Path(folder) / "reliability.png")
    say(f"calibration: {cal['positives']} true links among {cal['pairs']} top fold candidates"
        + (f" ({len(folds)} folds)" if len(folds) > 1 else "")
        + (f"; reliability plot {plot}" if plot else ""))
    return cal


def _fold_calibration_pairs(fold: Fold, ranker, seed: int, top: int) -> tuple[np.ndarray, ...]:
    """(probability, label, weight, source, cold, emptied) (n,) of one fold's labelled pairs:
    its queries' sources' `top` candidates, then a seeded sample of its other sources'; cold:
    the source has no out-link in the fold; emptied: ... and is a query's source (a page the
    fold emptied)."""
    import torch
    with torch.no_grad():
        prob, label, src = fold_pairs(fold.q, ranker, top)
        n_fold = len(prob)
        weight = np.ones(len(prob))
        sources = fold.sources
        if fold.features is not None and sources is not None and len(sources):
            n = min(len(sources), max(1, fold.q.x.shape[0]))
            pick = np.sort(np.random.default_rng(seed).choice(sources, n, replace=False))
            other, other_src = other_pairs(fold.features, fold.known, ranker, pick, top,
                                           candidates=fold.q.columns is not None)
            prob = np.concatenate([prob, other])
            label = np.concatenate([label, np.zeros(len(other))])
            weight = np.concatenate([weight, np.full(len(other), len(sources) / n)])
            src = np.concatenate([src, other_src])
    cold = np.zeros(len(prob), dtype=bool)
    if fold.features is not None:
        cold = (src >= 0) & fold.features.graph.cold()[np.maximum(src, 0)]
    emptied = cold.copy()                   # pages the fold emptied: the queries' sources
    emptied[n_fold:] = False
    return prob, label, weight, src, cold, emptied
