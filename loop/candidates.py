"""Candidate targets per source, so a large graph's extractor need not score every (p, q).

On cyberwiki the ranker scores all 6,666 particles for each source; at 117k (WordNet) or 3M
(Bostrom) that is 10¹⁰–10¹³ pairs × 16 features, which no cycle on this machine affords. A
candidate set keeps what any feature could rank high, from four sources:

  mentioned   q named in p's text, or p in q's (the `mention` and `back_mention` features)
  neighbours  what the k pages nearest p by text embedding link (`text_neighbours`), and
              what p's own targets link (two hops: the graph's neighbourhood)
  model       the top `k_model` of the compiled zero-layer score E_p · H_q — exact, by
              matrix products over the output vectors of largest norm only (InnerTop: no
              other can beat the k-th best found), or approximate by a faiss HNSW index
              (inner product) when `approximate` (faiss-cpu, a well-kept library; its recall
              of the exact top-k is measured by bench/candidates.py)
  popular     the `k_popular` particles with the most `link` sources (link probability and
              in-degree favour them)

`recall` says how many of a set of true pairs the candidates keep: what a candidate-based
extractor can find at most, measured against the full scan on a graph where that is cheap.

Letters in shape comments: P particles in the index, S sources, d the model's width, k kept.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from graph.errors import GraftError
from loop.embed import top_stable
from loop.evaluate import EvalGraph

SOURCES = ("mentioned", "neighbours", "model", "popular")
CANDIDATES_ABOVE = 20_000      # particles beyond which a source's candidates are scored, not all
K_MODEL = 100                  # the compiled model's top-k among a source's candidates


def scan_kind(scan: str, size: int) -> str:
    """"all" (every particle is a candidate of every source) or "candidates", for a graph of
    `size` particles; `scan` is auto (candidates beyond CANDIDATES_ABOVE), all or
    candidates."""
    if scan not in ("auto", "all", "candidates"):
        raise GraftError(f"scan {scan!r}: expected auto, all or candidates")
    if scan == "auto":
        return "candidates" if size > CANDIDATES_ABOVE else "all"
    return scan


def of_sources(feats, rows: np.ndarray, masked: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    """(r, q) the candidate pairs of the sources `rows` as (position in `rows`, index
    position), by source then target: every kind of `candidates` for a loop.rank.Features
    (its mentions, its pages' nearest by text, its model's top K_MODEL), less the pairs of
    `masked` (P, P) — links, rejected pairs."""
    text = "text_neighbours" in feats.names
    sets = candidates(feats.graph, rows, mention=feats.mention, back=feats.back,
                      text_vectors=feats.text_vectors() if text else None,
                      near=feats.nearest(rows)[0] if text else None,
                      model=(feats.embed, feats.model_top(), feats.ckpt), k_model=K_MODEL)
    coo = union(sets).tocoo()
    r, q = coo.row.astype(np.int64), coo.col.astype(np.int64)
    keep = ~np.asarray(masked[rows[r], q], dtype=bool).reshape(-1)
    r, q = r[keep], q[keep]
    order = np.lexsort((q, r))
    return r[order], q[order]


def top_inner(queries: np.ndarray, keys: np.ndarray, k: int, approximate: bool = False,
              block: int = 1024, seed: int = 0) -> np.ndarray:
    """(S, k) positions in `keys` (P, d) of the k largest inner products with each query
    (S, d), largest first; ties by position. Exact: blocked matrix products (memory
    block × P). Approximate: a faiss HNSW index (M = 32, efSearch = max(64, 2k)) — faiss
    builds it deterministically for a given thread count."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    k = max(0, min(k, len(keys)))
    if not k or not len(queries):
        return np.zeros((len(queries), k), dtype=np.int64)
    if approximate:
        try:
            import faiss
        except ImportError:
            raise GraftError("approximate top-k needs faiss: pip install faiss-cpu "
                             "(or ask for the exact scan)") from None
        faiss.omp_set_num_threads(1)            # one build order, one index
        index = faiss.IndexHNSWFlat(keys.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * k)
        index.add(keys)
        return index.search(queries, k)[1].astype(np.int64)
    index = InnerTop(keys)
    out = np.empty((len(queries), k), dtype=np.int64)
    for i in range(0, len(queries), block):
        out[i:i + block] = index.top(queries[i:i + block], k)
    return out


class InnerTop:
    """The exact top-k inner products of queries with fixed keys (P, d), ties by position —
    what top_stable(queries @ keys.T, k) gives — scanning the keys of largest norm only.

    q · h ≤ |q| |h| (Cauchy–Schwarz), so once a query's k-th best among the `n` keys of
    largest norm beats |q| times the norm of the next key, no other key can reach it. A
    compiled head's rows are heavy-tailed (Bostrom-scale synthetic graph: over half are
    zero — particles nothing links to — and nine in ten have norm < 0.2 against a largest of
    1,089), so a few percent of the keys settle almost every query. The prefix starts at
    `first` keys and grows fourfold for the queries it did not settle; a query of norm 0
    scores 0 everywhere and takes the first k positions."""

    SLACK = 1e-4                   # float32 products against the bound: a relative margin

    def __init__(self, keys: np.ndarray, first: int = 32_768):
        self.keys = np.ascontiguousarray(keys, dtype=np.float32)               # (P, d)
        norms = np.linalg.norm(self.keys, axis=1)
        self.order = np.argsort(-norms, kind="stable")                        # (P,)
        self.norms = norms[self.order]                                        # descending
        self.first = first

    def top(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(S, k) key positions, largest product first, ties by position."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)             # (S, d)
        size = len(self.keys)
        k = max(0, min(k, size))
        out = np.empty((len(queries), k), dtype=np.int64)
        if not k or not len(queries):
            return out
        qn = np.linalg.norm(queries, axis=1)                                  # (S,)
        out[qn == 0] = np.arange(k)
        todo = np.flatnonzero(qn > 0)
        n = min(size, max(self.first, 4 * k))
        while len(todo):
            cols = np.sort(self.order[:n])                        # the prefix, by position
            sim = queries[todo] @ self.keys[cols].T                            # (S', n)
            part = top_stable(sim, k)
            if n == size:
                out[todo] = cols[part]
                break
            kth = np.take_along_axis(sim, part[:, -1:], 1)[:, 0]
            done = kth > qn[todo] * self.norms[n] * (1 + self.SLACK)
            out[todo[done]] = cols[part[done]]
            todo, n = todo[~done], min(size, 4 * n)
        return out


def candidates(graph: EvalGraph, sources: np.ndarray, *, mention: sp.csr_array,
               text_vectors: np.ndarray | None = None, model: tuple | None = None,
               k_text: int = 20, k_model: int = 100, k_popular: int = 50,
               approximate: bool = False, use: tuple[str, ...] = SOURCES,
               near: np.ndarray | None = None, back: sp.csr_array | None = None
               ) -> dict[str, sp.csr_array]:
    """{source kind: (S, P) bool} candidate targets of each source, by kind (their union is
    the candidate set); p itself and p's known targets are never candidates.

    Args:
        graph: the store's graph (loop/evaluate.py).
        sources: (S,) index positions.
        mention: (P, P) q named in p's text (loop/textstats.py).
        text_vectors: (P, D) unit text embeddings (loop/embed.py), or None (no text
            neighbours).
        model: (E (T', d) input vectors by checkpoint row, H (P', d) output vectors of the
            index positions the checkpoint has, in index order, ckpt (P,) each position's
            checkpoint row or −1) — loop.rank.Features' embed, head and ckpt — or None. H
            may be an InnerTop of them, built once for many calls.
        k_text, k_model, k_popular: how many text neighbours, model top-k and popular.
        approximate: model top-k by faiss HNSW rather than the exact scan.
        use: which kinds to build.
        near: (S, ≥ k_text) the sources' nearest pages by text, when known already
            (loop.embed.nearest's positions).
        back: mentionᵀ as CSR, when known already (a block of sources at a time would
            otherwise transpose all of `mention` for each block).
    """
    unknown = [u for u in use if u not in SOURCES]
    if unknown:
        raise GraftError(f"candidate kinds {unknown}: expected some of {list(SOURCES)}")
    sources = np.asarray(sources, dtype=np.int64).reshape(-1)
    size = len(graph.index)
    known = sp.csr_array(graph.known)
    out: dict[str, sp.csr_array] = {}
    if "mentioned" in use:
        back = back if back is not None else sp.csr_array(mention.T)
        out["mentioned"] = (mention[sources] + back[sources]) > 0
    if "neighbours" in use:
        two_hop = (known[sources] @ known) > 0                                # (S, P)
        parts = [two_hop]
        if text_vectors is not None:
            from loop import embed
            nbr = (near[:, :k_text] if near is not None
                   else embed.nearest(text_vectors, sources, k_text)[0])       # (S, k)
            parts.append((embed.neighbour_rows(nbr, np.ones(nbr.shape), size) @ known) > 0)
        out["neighbours"] = sum(parts[1:], parts[0]) > 0
    if "model" in use and model is not None:
        e, h, ckpt = model
        have = np.flatnonzero(ckpt >= 0)
        ok = np.flatnonzero(ckpt[sources] >= 0)
        queries = e[ckpt[sources[ok]]]
        top = (h.top(queries, k_model) if isinstance(h, InnerTop)             # (S', k)
               else top_inner(queries, h, k_model, approximate))
        rows = np.repeat(ok, top.shape[1])
        out["model"] = sp.csr_array((np.ones(len(rows), dtype=bool), (rows, have[top.ravel()])),
                                    shape=(len(sources), size))
    if "popular" in use:
        best = np.argsort(-np.asarray(graph.link_indegree), kind="stable")[:k_popular]
        rows = np.repeat(np.arange(len(sources)), len(best))
        out["popular"] = sp.csr_array((np.ones(len(rows), dtype=bool),
                                       (rows, np.tile(best, len(sources)))),
                                      shape=(len(sources), size))
    drop = known[sources] > 0                                                  # (S, P)
    self_ = sp.csr_array((np.ones(len(sources), dtype=bool),
                          (np.arange(len(sources)), sources)), shape=(len(sources), size))
    gone = (drop + self_) > 0
    return {kind: sp.csr_array(m > 0) > gone for kind, m in out.items()}


def union(sets: dict[str, sp.csr_array]) -> sp.csr_array:
    """(S, P) bool: the candidates of any kind."""
    mats = list(sets.values())
    if not mats:
        raise GraftError("no candidate kind was built")
    return sum(mats[1:], mats[0]) > 0


def recall(sets: dict[str, sp.csr_array], sources: np.ndarray, pairs: np.ndarray,
           say: Callable[[str], None] = lambda _: None) -> dict:
    """How many of the true (p, q) `pairs` (n, 2 index positions) the candidates of
    `sources` keep — in all, and by each kind alone — and the mean candidates per source."""
    pos = {int(s): i for i, s in enumerate(np.asarray(sources).reshape(-1))}
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[[int(p) in pos for p in pairs[:, 0]]]
    rows = np.array([pos[int(p)] for p in pairs[:, 0]], dtype=np.int64)
    all_ = union(sets)
    out = {"pairs": int(len(pairs)), "sources": len(pos),
           "recall": float(np.asarray(all_[rows, pairs[:, 1]]).mean()) if len(pairs) else 0.0,
           "per_source": float(all_.sum() / max(len(pos), 1)),
           "by_kind": {k: {"recall": float(np.asarray(m[rows, pairs[:, 1]]).mean())
                           if len(pairs) else 0.0,
                           "per_source": float(m.sum() / max(len(pos), 1))}
                       for k, m in sets.items()}}
    say(f"candidates: {out['per_source']:.0f} per source keep {out['recall']:.3f} of "
        f"{out['pairs']} true pairs")
    return out
