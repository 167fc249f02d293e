"""Proposals in the store: record what the extractor found, let curators decide, and stake
accepted ones as cyberlinks signed by the extractor neuron (origin = extract).

Deciding and staking happen in one transaction, so an accepted proposal is a link in the
store or neither; a proposal is staked once (its `staked` column holds the link's seq).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from graph import sql, sql_loop
from graph.errors import GraftError
from graph.store import Store

if TYPE_CHECKING:                  # loop.extract imports torch: seconds `graft review` needn't spend
    from loop.extract import Proposal

EXTRACTOR = "graft-extractor"      # the neuron that signs accepted proposals


@dataclass(frozen=True)
class Decision:
    decided: list[int]             # proposal ids whose status changed
    staked: int                    # links written
    reestimated: dict | None = None  # {cycle: the curators' correction its pending got}


def add_proposals(store: Store, proposals: Iterable[Proposal], cycle: int, model: str,
                  adapter: str | None) -> int:
    """Record proposals of `cycle`; the same (cycle, src, dst) twice is kept once.
    Returns how many were new."""
    rows = list(proposals)
    if not rows:
        return 0
    table = pa.table({
        "src": [p.src for p in rows], "dst": [p.dst for p in rows],
        "score": pa.array([p.score for p in rows], pa.float64()),
        "confidence": pa.array([p.confidence for p in rows], pa.float64()),
        "tuned": pa.array([p.tuned for p in rows], pa.float64()),
        "compiled": pa.array([p.compiled for p in rows], pa.float64()),
        "head": pa.array([p.head for p in rows], pa.int32()),
        "semcon": pa.array([p.semcon for p in rows], pa.string()),
        "evidence": [json.dumps(p.evidence, ensure_ascii=False) for p in rows]})
    store.register("proposal_view", table)
    try:
        with store.transaction():
            before = store.scalar(sql_loop.PROPOSALS_COUNT)
            store.execute(sql_loop.PROPOSALS_ADD, {"cycle": cycle, "model": model,
                                                   "adapter": adapter})
            return store.scalar(sql_loop.PROPOSALS_COUNT) - before
    finally:
        store.unregister("proposal_view")


def list_proposals(store: Store, status: str | None = "pending", cycle: int | None = None,
                   limit: int = 50, particle: str | None = None) -> list[dict]:
    """Proposals most confident first (then by score), optionally of one status, cycle, or
    particle (either end)."""
    cols = ("id", "cycle", "src", "src_name", "dst", "dst_name", "score", "confidence",
            "semcon", "status", "reviewer", "evidence")
    rows = store.query(sql_loop.PROPOSALS_LIST, {"status": status, "cycle": cycle,
                                                 "limit": limit, "particle": particle})
    return [{**dict(zip(cols, r)), "evidence": json.loads(r[-1]) if r[-1] else {}}
            for r in rows]


def decide(store: Store, accept: Iterable[int] = (), reject: Iterable[int] = (),
           accept_above: float | None = None, cycle: int | None = None,
           reviewer: str = "curator", neuron: str = EXTRACTOR, token: str = "link",
           stake_scale: float | None = None, at: int | None = None,
           accept_precision: float | None = None) -> Decision:
    """Accept / reject pending proposals by id (or accept all pending with score ≥ X, or the
    most confident pending ones while their mean calibrated confidence — the estimated
    precision of what is accepted — stays ≥ `accept_precision`; loop/calibrate.py), then
    stake every accepted, unstaked proposal — all in one transaction.

    An accepted proposal's amount is max(1, round(confidence · scale)); the scale defaults to
    the median amount of the store's positive ingest/curator links, so an accepted link
    weighs what a typical curated one does, times its confidence. (A fixed 1000 made 50
    accepted links outweigh cyberwiki's 15k links of amount 1: the next compile's focus
    spectrum and embedding were theirs.)"""
    if stake_scale is not None and not stake_scale > 0:
        raise GraftError(f"stake scale {stake_scale}: expected a positive number")
    accept, reject = sorted(set(accept)), sorted(set(reject))
    both = set(accept) & set(reject)
    if both:
        raise GraftError(f"proposal(s) {sorted(both)} both accepted and rejected")
    _check_known(store, accept + reject)
    decided: list[int] = []
    with store.transaction():
        if accept_above is not None:
            accept += [i for (i,) in store.query(sql_loop.PROPOSALS_ABOVE, {
                "threshold": accept_above, "cycle": cycle})]
        fixes = {}
        if accept_precision is not None:
            from loop.calibrate import accept_count
            ranked, fixes = pending_confidence(store, cycle)
            if fixes:                               # what curators have decided, up to now
                _set_confidence(store, ranked)
            ranked = [r for r in ranked if r[0] not in reject]
            accept += [i for i, _ in ranked[:accept_count([c for _, c in ranked],
                                                          accept_precision)]]
        for status, ids in (("accepted", accept), ("rejected", reject)):
            if ids:
                decided += _set_status(store, ids, status, reviewer)
        scale = stake_scale or store.scalar(sql_loop.TRUTH_MEDIAN_AMOUNT)
        staked = _stake(store, neuron, token, scale, int(time.time()) if at is None else at)
    return Decision(decided=sorted(decided), staked=staked, reestimated=fixes or None)


def pending_confidence(store: Store, cycle: int | None = None
                       ) -> tuple[list[tuple[int, float]], dict[int, dict]]:
    """([(id, confidence)] of the pending proposals (of `cycle`), most confident first, then
    by score; {cycle: the curators' correction used}).

    Each confidence is re-estimated from the curator decisions on its own cycle's proposals
    (loop.calibrate.curator_correction of the fold's estimate each proposal got): a curator
    who has worked the top of a cycle's queue has told its calibration what the fold could
    not (its level), and the rest of that queue is then judged by it. A cycle with too few
    decisions, and proposals without a fold's estimate, keep the stored confidence."""
    import numpy as np

    from loop.calibrate import corrected, curator_correction, curator_labels
    rows = store.query(sql_loop.PENDING_FOLD_CONFIDENCE, {"cycle": cycle})
    conf = {i: c for i, _, c, _, _ in rows}
    fixes = {}
    for n in sorted({r[4] for r in rows}):
        fix = curator_correction(*curator_labels(store, n))
        est = [(i, f) for i, f, _, _, c in rows if c == n and f is not None]
        if fix and est:
            fixes[n] = fix
            new = corrected(fix, np.array([f for _, f in est], dtype=np.float64))
            conf.update((i, float(c)) for (i, _), c in zip(est, new))
    order = sorted(rows, key=lambda r: (-conf[r[0]], -r[3], r[0]))
    return [(r[0], conf[r[0]]) for r in order], fixes


def _set_confidence(store: Store, ranked: list[tuple[int, float]]) -> None:
    if not ranked:
        return
    store.register("conf_view", pa.table({"id": pa.array([i for i, _ in ranked], pa.int32()),
                                          "confidence": [c for _, c in ranked]}))
    try:
        store.execute(sql_loop.PROPOSALS_SET_CONFIDENCE)
    finally:
        store.unregister("conf_view")


def _check_known(store: Store, ids: list[int]) -> None:
    if not ids:
        return
    store.register("id_view", pa.table({"id": pa.array(ids, pa.int32())}))
    try:
        unknown = [i for (i,) in store.query(sql_loop.PROPOSALS_UNKNOWN)]
    finally:
        store.unregister("id_view")
    if unknown:
        raise GraftError(f"no proposal with id {', '.join(map(str, unknown))}")


def _set_status(store: Store, ids: list[int], status: str, reviewer: str) -> list[int]:
    store.register("id_view", pa.table({"id": pa.array(ids, pa.int32())}))
    try:
        return [i for (i,) in store.query(sql_loop.PROPOSALS_DECIDE,
                                          {"status": status, "reviewer": reviewer})]
    finally:
        store.unregister("id_view")


def _stake(store: Store, neuron: str, token: str, scale: float, at: int) -> int:
    pending = store.scalar(sql_loop.ACCEPTED_UNSTAKED)
    if not pending:
        return 0
    batch = store.scalar(sql.BATCH_ADD, ["extract", "graft review", f"review-{time.time_ns()}",
                                         pending])
    base = store.scalar(sql.MAX_SEQ)
    store.execute(sql_loop.ENSURE_TOKEN, {"token": token})
    store.execute(sql_loop.STAKE_ACCEPTED, {"base": base, "neuron": neuron, "token": token,
                                            "scale": scale, "time": at,
                                            "batch": batch})
    store.execute(sql.INSERT_NEURONS, {"batch": batch})
    store.execute(sql_loop.MARK_STAKED, {"batch": batch})
    return pending


def decisions(store: Store) -> list[dict]:
    """Every decided proposal as {source, target, status} by name — what
    `finetune.trl_jobs.preference_pairs` turns into DPO rows."""
    return [{"source": s, "target": t, "status": st}
            for s, t, st in store.query(sql_loop.DECISIONS_OF)]
