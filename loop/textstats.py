"""What the store itself says about a pair (p, q), without any model: where p's text names q,
how often q's name is linked where it is mentioned, which pages name both.

These are the signals a production link recommender starts from (Wikimedia's Add-a-Link:
a target's *link probability* — how often its name is linked where it occurs — and the
mention's context). graft's ranker (loop/rank.py) puts the compiled and tuned models beside
them, and `graft eval --ablate` measures what the models add.

Every matrix is over an EvalGraph's index and is computed from that graph alone, so on a
fold (loop/fold.py) the hidden links count as mentions left unlinked, exactly as a truly
missing link does in the store.

Letters in shape comments: P particles in the index, D pages with text.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from finetune.text import Lexicon
from loop.evaluate import EvalGraph

PRIOR = (0.5, 2.0)      # link probability (linked + ½) / (mentioned + 2): Jeffreys-like smoothing


@dataclass(frozen=True)
class TextStats:
    """Sparse (P, P) matrices and (P,) vectors of a graph's texts and links."""

    mention: sp.csr_array       # (P, P) times q's name or an alias occurs in p's text (p ≠ q)
    early: sp.csr_array         # (P, P) 1 − (index of q's first match) / (matches in p's text)
    comention: sp.csr_array     # (P, P) pages other than p and q whose text names both
    link_prob: np.ndarray       # (P,) log of q's smoothed link probability
    reverse: sp.csr_array       # (P, P) 1 where q → p is a ground-truth link
    anchor: sp.csr_array        # (P, P) log anchor probability of the phrase p names q by


def mentions(graph: EvalGraph) -> tuple[sp.csr_array, sp.csr_array]:
    """(mention, early) of TextStats: where each page's text names each particle (names and
    aliases matched as finetune/text.py matches them: longest phrase, case-insensitive, on
    word boundaries; a page's own name left out)."""
    return _mentions(graph, anchors=False)[:2]


def _mentions(graph: EvalGraph, anchors: bool = True
              ) -> tuple[sp.csr_array, sp.csr_array, sp.csr_array | None]:
    """(mention, early, anchor — None unless `anchors`) of TextStats, from one pass over the
    texts, kept in graph.memo: the extractor's features and the mentions baseline both ask
    (matching every text took 10 s at 117k particles)."""
    kept = graph.memo.get("mentions")
    if kept is not None and (kept[2] is not None or not anchors):
        return kept
    graph.memo["mentions"] = _scan_mentions(graph, anchors)
    return graph.memo["mentions"]


def _scan_mentions(graph: EvalGraph, anchors: bool
                   ) -> tuple[sp.csr_array, sp.csr_array, sp.csr_array | None]:
    size = len(graph.index)
    lexicon = Lexicon(graph.names)
    rows, cols, counts, firsts = [], [], [], []
    used: list[tuple[int, int, tuple[str, ...]]] = []       # (page, particle, phrase), distinct
    for p, text in sorted(graph.texts.items()):
        matches = lexicon.phrases_of(text)
        found = np.asarray([t for t, _ in matches], dtype=np.int64)
        if not len(found):
            continue
        u, first, c = np.unique(found, return_index=True, return_counts=True)
        keep = u != p
        rows.append(np.full(int(keep.sum()), p))
        cols.append(u[keep])
        counts.append(c[keep])
        firsts.append(1.0 - first[keep] / len(found))
        if anchors:
            used += sorted({(p, t, phrase) for t, phrase in matches if t != p})
    if not rows:
        empty = sp.csr_array((size, size), dtype=np.float32)
        return empty, empty, empty if anchors else None
    r, c = np.concatenate(rows), np.concatenate(cols)
    return (sp.csr_array((np.concatenate(counts).astype(np.float32), (r, c)), shape=(size, size)),
            sp.csr_array((np.concatenate(firsts).astype(np.float32), (r, c)), shape=(size, size)),
            _anchors(used, graph.known, size) if anchors else None)


def _anchors(used: list[tuple[int, int, tuple[str, ...]]], known: sp.csr_array, size: int
             ) -> sp.csr_array:
    """(P, P) log of the best anchor probability among the phrases p's text names q by: a
    phrase's (pages using it whose page links its particle + ½) / (pages using it + 2)."""
    if not used:
        return sp.csr_array((size, size), dtype=np.float32)
    page = np.array([p for p, _, _ in used], dtype=np.int64)
    target = np.array([t for _, t, _ in used], dtype=np.int64)
    phrase_ids: dict[tuple[str, ...], int] = {}
    ph = np.array([phrase_ids.setdefault(x, len(phrase_ids)) for _, _, x in used])
    linked = np.asarray(sp.csr_array(known)[page, target]).ravel() > 0        # (n,)
    pages = np.bincount(ph, minlength=len(phrase_ids))                        # per phrase
    hits = np.bincount(ph, weights=linked, minlength=len(phrase_ids))
    logp = np.log((hits + PRIOR[0]) / (pages + PRIOR[1]))[ph]                 # (n,)
    best = {}
    for p, t, v in zip(page.tolist(), target.tolist(), logp.tolist()):
        best[(p, t)] = max(v, best.get((p, t), -np.inf))
    r, c = np.array(list(best)).T
    return sp.csr_array((np.array(list(best.values()), dtype=np.float32), (r, c)),
                        shape=(size, size))


def text_stats(graph: EvalGraph) -> TextStats:
    """Every matrix of TextStats for `graph`."""
    mention, early, anchor = _mentions(graph)
    named = (mention > 0).astype(np.float32)                                  # (P, P) p names q
    linked = named * graph.known                                              # named and linked
    mentioned_in = np.asarray(named.sum(axis=0)).ravel()                      # (P,)
    linked_in = np.asarray(linked.sum(axis=0)).ravel()
    link_prob = np.log((linked_in + PRIOR[0]) / (mentioned_in + PRIOR[1])).astype(np.float32)
    # pages d naming both p and q; d is never p or q itself (a page's own name is left out of
    # its matches), so this is what *other* pages say, beside p's own mention of q
    both = sp.csr_array(named.T @ named)                                      # (P, P)
    both.setdiag(0)
    both.eliminate_zeros()
    return TextStats(mention=mention, early=early, comention=both.astype(np.float32),
                     link_prob=link_prob, anchor=anchor,
                     reverse=sp.csr_array(graph.known.T, dtype=np.float32))
