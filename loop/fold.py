"""A fold for fitting the extractor's ranker: a scratch copy of the store with a seeded share
of its ground-truth links hidden.

The compiled model has memorised every link it was compiled from, so its score of a linked
pair says nothing about how well it finds a missing one: a ranker fitted on the store's own
links learns to trust the model far too much (on cyberwiki, held-out MRR 0.28 against 0.31
for unlinked mentions alone). Compiling and tuning the fold store instead gives model scores
for the hidden links that behave like the scores of links truly missing, and the ranker is
fitted on those.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from graph import sql_loop
from graph.errors import GraftError
from graph.store import Store
from loop.evaluate import TRUTH, cold_sources


def make_fold(store: Store, out: Path, fraction: float, seed: int, token: str = "link",
              inverse: bool = False, pages: float = 0.0, min_links: int = 3,
              curated: list[tuple[str, str]] = (), part: int = 0) -> list[tuple[str, str]]:
    """Write the fold store at `out` (replaced if present) and return the hidden pairs.

    Args:
        store: the store; only read.
        out: the fold's DuckDB file.
        fraction: share of the distinct ground-truth (src, dst) pairs hidden, in (0, 1).
        seed: numpy Generator seed.
        token: only links with this token are hidden (all links when none carries it); it is
            the token held-out links of `graft eval` have.
        inverse: also leave out every link q → p of a hidden p → q — for a holdout made that
            way (WordNet's hypernym holdout drops each pair's inverse hyponym, or the answer
            would stay in the graph); the fold must hide what the holdout hid.
        pages: besides, hide every eligible out-link of this share of the sources with at
            least `min_links` of them — cold-start pages, a new note with text and no links,
            so that the ranker is also fitted for the case where p's links tell nothing.
        curated: pairs a curator accepted from proposals — always hidden (their staked links
            left out of the fold), so the ranker learns from them as links the extractor
            should find, scored by models that never saw them. Links the loop accepted on
            its own are never hidden: they are predictions, not answers.
        part: which of the seed's disjoint folds: part j hides `fraction` of the links and
            `pages` of the pages that parts 0 … j−1 left (part 0 is the seed's one fold), so
            a cycle fitting on several folds ranks every hidden link once.

    Returns:
        The hidden (src, dst) pairs, sorted; every link between them is left out of the fold.
    """
    if not 0 < fraction < 1:
        raise GraftError(f"fold fraction {fraction}: expected a share strictly between 0 and 1")
    out = Path(out)
    for path in (out, out.with_name(out.name + ".wal")):
        path.unlink(missing_ok=True)
    tables = {t: store.arrow(sql_loop.FOLD_READ[t]) for t in sql_loop.FOLD_TABLES}
    links = tables["cyberlinks"]
    truth = pc.and_(pc.is_in(links.column("origin"), value_set=pa.array(TRUTH)),
                    pc.equal(links.column("valence"), 1))
    typed = pc.and_(truth, pc.equal(links.column("token"), token))
    if pc.any(typed).as_py():
        truth = typed
    src = links.column("src").to_pylist()
    dst = links.column("dst").to_pylist()
    eligible = sorted({(s, d) for s, d, ok in zip(src, dst, truth.to_pylist()) if ok and s != d})
    k = round(fraction * len(eligible))
    if k == 0:
        raise GraftError(f"the store has {len(eligible)} ground-truth link pairs: too few to "
                         f"hide a share of {fraction}")
    if (part + 1) * k > len(eligible):
        raise GraftError(f"fold part {part + 1} of a share of {fraction}: more than the store's "
                         f"{len(eligible)} ground-truth link pairs")
    rng = np.random.default_rng(seed)
    free = np.arange(len(eligible))
    taken_pages: set[str] = set()
    for _ in range(part + 1):           # the earlier parts' draws, then this one's
        chosen = np.sort(free[rng.choice(len(free), size=k, replace=False)])
        free = np.setdiff1d(free, chosen)
        cold = (cold_sources(eligible, pages, min_links, rng, exclude=taken_pages)
                if pages > 0 else set())
        taken_pages |= cold
    hidden = [eligible[i] for i in chosen]
    if cold:
        hidden = sorted(set(hidden) | {pair for pair in eligible if pair[0] in cold})
    if curated:
        linked = set(zip(src, dst))
        hidden = sorted(set(hidden) | {tuple(pair) for pair in curated if tuple(pair) in linked})
    gone = set(hidden) | ({(d, s) for s, d in hidden} if inverse else set())
    tables["cyberlinks"] = links.filter(pa.array([(s, d) not in gone for s, d in zip(src, dst)]))
    with Store(out, hash_name=store.hash_name) as fold:
        with fold.transaction():
            for name in sql_loop.FOLD_TABLES:
                fold.register("fold_view", tables[name])
                try:
                    fold.execute(sql_loop.FOLD_WRITE[name])
                finally:
                    fold.unregister("fold_view")
    return hidden


HIDDEN = "hidden.json"          # the fold's hidden pairs, beside its store


def save_hidden(folder: Path, hidden: list[tuple[str, str]]) -> None:
    (Path(folder) / HIDDEN).write_text(json.dumps(hidden))


def hidden_positions(graph, folder: Path) -> np.ndarray:
    """(n, 2) index positions in `graph` (the fold's EvalGraph) of the pairs the fold in
    `folder` hid (pairs with an end the graph lacks are left out)."""
    path = Path(folder) / HIDDEN
    if not path.exists():
        raise GraftError(f"{path}: missing — the fold's hidden pairs (rerun the cycle's fit step)")
    return positions(graph, json.loads(path.read_text()))


def positions(graph, pairs) -> np.ndarray:
    """(n, 2) index positions in `graph` of (src, dst) pairs (those with an end the graph
    lacks left out)."""
    pos = graph.position()
    return np.array([(pos[s], pos[d]) for s, d in pairs if s in pos and d in pos],
                    dtype=np.int64).reshape(-1, 2)


def not_candidates(graph, store: Store):
    """(P, P) 1 where a pair is no candidate of a fit: the graph's ground-truth links and the
    links the loop staked in `store` — the extractor never proposes either, and a staked
    prediction counted as a wrong candidate would teach the fit that the compiled model's
    memory of it is a mistake."""
    import scipy.sparse as sp
    staked = positions(graph, store.query(sql_loop.PREDICTED_PAIRS))
    extra = sp.coo_array((np.ones(len(staked)), (staked[:, 0], staked[:, 1])),
                         shape=graph.known.shape).tocsr()
    out = (graph.known + extra).tocsr()
    out.data[:] = 1.0
    return out
