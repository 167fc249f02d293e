"""Link recovery (DESIGN §5): rank each held-out target among all particles, for every scorer.

A held-out link (p, q) is a query: every scorer gives a score to each particle of the store
after p, and q is ranked among the candidates — every particle except p itself and the
targets of p's links of origin `ingest` or `curator`. Links the loop added (`extract`) are
its predictions, not ground truth: their targets stay candidates, and a held-out link the
loop has already proposed is still a query (the loop gets credit for it only if it ranks q
high). Held-out links already in the store as ingest/curator links are skipped and counted.

Ties count half: q's rank is its expected rank under a random order of equal scores,
1 + #(candidates scored above q) + ½ · #(other candidates scored equal to q). MRR is the mean
of 1/rank, Hits@k the share of queries with rank ≤ k (so a two-way tie for first is not a
hit at 1), and AUC the per-query probability that q outscores a random other candidate
(ties ½), averaged over queries; that is 1 − (rank − 1)/(candidates − 1).

Letters in shape comments: P particles in the store's index, n queries, B queries in a batch,
S distinct sources in a batch, T checkpoint tokens.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from graph import ids, sql
from graph.errors import GraftError, Problem, shorten
from graph.formats import json_lines
from graph.snapshot import Snapshot, snapshot_links
from graph.store import Store

# Maps source particle positions (S,) to scores over the whole index (S, P); higher is
# better, -inf allowed (never proposed), NaN not.
Scorer = Callable[[np.ndarray], np.ndarray]

TRUTH = ("ingest", "curator")   # origins that are ground truth; `extract` is a prediction
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class EvalGraph:
    """The store as every scorer sees it: its particles, and its ground-truth links."""

    index: list[str]                # (P,) particle ids, sorted: particles table ∪ link endpoints
    adjacency: sp.csr_array         # (P, P) Σ effective stake of ingest/curator links (w > 0)
    known: sp.csr_array             # (P, P) 1 where an ingest/curator link p → q has w > 0
    link_indegree: np.ndarray       # (P,) distinct sources of links into q with token `link`
    names: dict[int, list[str]] = field(default_factory=dict)  # position → name, then aliases
    texts: dict[int, str] = field(default_factory=dict)        # position → non-empty text
    link_outdegree: np.ndarray | None = None  # (P,) distinct targets of p's `link` links
    # what is derived from this graph once and asked for by several scorers (loop/textstats
    # caches where each text names each particle here); dataclasses.replace starts it afresh
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def position(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.index)}

    def cold(self) -> np.ndarray:
        """(P,) True where p links nothing yet with the links being predicted (token
        `link`, as link_indegree counts them; any ground-truth link without that count): a
        new note's case, however many tags it has."""
        if self.link_outdegree is not None:
            return self.link_outdegree == 0
        return np.asarray(self.known.sum(axis=1)).ravel() == 0


def load_graph(store: Store, tie_token: str = "link") -> EvalGraph:
    """Every link now in the store (label links left out) and every particle, over one index.

    Args:
        store: the store; only read.
        tie_token: the token whose links count for `link_indegree` (vault imports and
            cyberwiki mark page references `link` and tags `tag`; tags say little about what
            a page links). When no link carries it, every link counts.

    Returns:
        EvalGraph; axons (targets of label links) are not particles here, nor are semcons
        (sources of label links) that are not an end of any other link.
    """
    # No snapshot row is written (eval only reads): the links a snapshot taken now would hold.
    now = Snapshot(id="", max_seq=store.scalar(sql.MAX_SEQ), links=0, created="")
    links = snapshot_links(store, now)
    labels = links.filter(links.column("is_label"))
    links = links.filter(pc.invert(links.column("is_label")))
    ends = set(pc.unique(pa.concat_arrays([links.column("src").combine_chunks(),
                                           links.column("dst").combine_chunks()])).to_pylist())
    # Semcons (sources of label links) are link types, not targets: left out unless some
    # content link also has them as an end.
    types = set(pc.unique(labels.column("src").combine_chunks()).to_pylist()) - ends
    rows = [r for r in store.query(sql.EVAL_PARTICLES) if r[0] not in types]
    index = sorted({r[0] for r in rows} | ends)
    table = pa.array(index, pa.string())
    truth = links.filter(pc.is_in(links.column("origin"), value_set=pa.array(TRUTH)))
    src = pc.index_in(truth.column("src"), value_set=table).to_numpy()      # (N,)
    dst = pc.index_in(truth.column("dst"), value_set=table).to_numpy()      # (N,)
    w = truth.column("w").to_numpy()
    size = (len(index), len(index))
    keep = w > 0
    adjacency = sp.coo_array((w[keep], (src[keep], dst[keep])), shape=size).tocsr()
    adjacency.sum_duplicates()
    known = sp.coo_array((np.ones(int(keep.sum())), (src[keep], dst[keep])),  # withdrawn
                         shape=size).tocsr()                                    # links not
    known.sum_duplicates()
    known.data[:] = 1.0
    token = truth.column("token").to_numpy(zero_copy_only=False)
    tied = keep & (token == tie_token) if (token == tie_token).any() else keep
    linked = sp.coo_array((np.ones(int(tied.sum())), (src[tied], dst[tied])), shape=size).tocsr()
    linked.sum_duplicates()
    indegree = np.bincount(linked.indices, minlength=len(index)).astype(np.float64)
    outdegree = np.diff(linked.indptr).astype(np.float64)
    pos = {p: i for i, p in enumerate(index)}
    names = {pos[p]: [n for n in [name, *(aliases or [])] if n] for p, name, aliases, _ in rows}
    texts = {pos[p]: text for p, _, _, text in rows if text}
    return EvalGraph(index=index, adjacency=adjacency, known=known, link_indegree=indegree,
                     link_outdegree=outdegree,
                     names={k: v for k, v in names.items() if v}, texts=texts)


# -- the holdout file ----------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    """One row of a holdout file."""

    line: int
    src: str
    dst: str


def read_holdout(path: Path) -> list[HeldOut]:
    """JSONL rows with `from` and `to` particle ids (other fields are ignored; blank lines
    skipped). Every bad row is reported at once, as file:line: field, value, expectation."""
    return [HeldOut(number, row["from"], row["to"]) for number, _, row in _link_rows(path)]


def _link_rows(path: Path) -> list[tuple[int, str, dict]]:
    """(line number, line, parsed row) of each non-blank line; GraftError naming every bad one."""
    path = Path(path)
    rows, problems = [], []
    for number, text, row in json_lines(path):
        if isinstance(row, json.JSONDecodeError):
            problems.append(Problem(str(path), number, "", shorten(text),
                                    f"a JSON object ({row.msg})"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(str(path), number, "", shorten(row), "a JSON object"))
            continue
        bad = [f for f in ("from", "to") if not ids.is_particle(row.get(f))]
        problems += [Problem(str(path), number, f, shorten(row.get(f)), ids.PARTICLE_EXPECTED)
                     for f in bad]
        if not bad:
            rows.append((number, text, row))
    if problems:
        shown = "\n".join(str(p) for p in problems[:MAX_PROBLEMS])
        more = len(problems) - MAX_PROBLEMS
        raise GraftError(f"{path}: {len(problems)} bad link row(s)\n{shown}"
                         + (f"\n... and {more} more" if more > 0 else ""))
    return rows


def split_links(path: Path, fraction: float, seed: int, train: Path, holdout: Path,
                token: str | None = None, cold_pages: float = 0.0, min_links: int = 3) -> dict:
    """Hold out a seeded share of a links file; both outputs keep the input's lines verbatim,
    in file order, so one seed always gives the same split.

    Args:
        path: links JSONL (as `graft ingest links` reads).
        fraction: share of the eligible rows held out, in (0, 1); round(fraction · rows) of them.
        seed: numpy Generator seed.
        train, holdout: output files.
        token: only rows with this token may be held out (None: any row).
        cold_pages: instead, hold out every eligible row of a seeded share of the sources with
            at least `min_links` distinct eligible targets (cold start: pages whose links are
            all missing); `fraction` is then not used.

    Returns:
        {"rows", "eligible", "train", "holdout"} counts (and "pages" with cold_pages).
    """
    if not cold_pages and not 0 < fraction < 1:
        raise GraftError(f"--fraction {fraction}: expected a share strictly between 0 and 1")
    if not 0 <= cold_pages < 1:
        raise GraftError(f"--cold-pages {cold_pages}: expected a share in [0, 1)")
    rows = _link_rows(path)
    eligible = [i for i, (_, _, row) in enumerate(rows)
                if token is None or row.get("token") == token]
    rng = np.random.default_rng(seed)
    out = np.zeros(len(rows), dtype=bool)
    extra = {}
    if cold_pages:
        cold = cold_sources([(rows[i][2]["from"], rows[i][2]["to"]) for i in eligible],
                            cold_pages, min_links, rng)
        out[[i for i in eligible if rows[i][2]["from"] in cold]] = True
        extra = {"pages": len(cold)}
    else:
        k = round(fraction * len(eligible))
        chosen = rng.choice(len(eligible), size=k, replace=False)
        out[np.asarray(eligible, dtype=np.int64)[chosen]] = True
    for target, keep in ((Path(train), ~out), (Path(holdout), out)):
        target.write_text("".join(rows[i][1] + "\n" for i in np.flatnonzero(keep)),
                          encoding="utf-8")
    return {"rows": len(rows), "eligible": len(eligible), "train": int((~out).sum()),
            "holdout": int(out.sum()), **extra}


def cold_sources(pairs: list[tuple[str, str]], share: float, min_links: int,
                 rng: np.random.Generator, exclude: set[str] = frozenset()) -> set[str]:
    """A seeded `share` of the sources with at least `min_links` distinct targets in `pairs`:
    pages whose links are then all hidden (cold start); none of `exclude` (pages an earlier
    draw took), as many as when none is excluded (or all that are left)."""
    targets: dict[str, set] = {}
    for src, dst in pairs:
        targets.setdefault(src, set()).add(dst)
    linked = sorted(p for p, t in targets.items() if len(t) >= min_links)
    n = round(share * len(linked))
    linked = [p for p in linked if p not in exclude]
    return {linked[i] for i in rng.choice(len(linked), min(n, len(linked)), replace=False)}


@dataclass(frozen=True)
class Queries:
    """The held-out links that can be ranked, as index positions."""

    pairs: np.ndarray               # (n, 2) int64 (p, q), sorted by p then q
    skipped: dict[str, int]         # in_store, duplicate, unknown (an end not in the store; p = q)


def select_queries(graph: EvalGraph, rows: list[HeldOut]) -> Queries:
    """Keep the held-out links absent from the store's ground truth, once each."""
    pos = graph.position()
    skipped = {"in_store": 0, "duplicate": 0, "unknown": 0}
    seen: set[tuple[int, int]] = set()
    for row in rows:
        p, q = pos.get(row.src), pos.get(row.dst)
        if p is None or q is None or p == q:
            skipped["unknown"] += 1
        elif graph.known[p, q]:
            skipped["in_store"] += 1
        elif (p, q) in seen:
            skipped["duplicate"] += 1
        else:
            seen.add((p, q))
    pairs = np.array(sorted(seen), dtype=np.int64).reshape(-1, 2)
    return Queries(pairs=pairs, skipped=skipped)


def sample_queries(queries: Queries, n: int, seed: int = 0) -> Queries:
    """A seeded sample of `n` of the queries (all of them when n is 0 or covers them), in
    the same order: each is still ranked exactly among every candidate, so the sample's MRR
    estimates the whole set's without bias. At 3M particles a query costs a forward pass and
    a 3M-wide feature block; `skipped` gains "unsampled"."""
    if n < 0:
        raise GraftError(f"sample of {n} queries: expected ≥ 0 (0: all)")
    if not n or n >= len(queries.pairs):
        return queries
    keep = np.sort(np.random.default_rng(seed).choice(len(queries.pairs), n, replace=False))
    return Queries(pairs=queries.pairs[keep],
                   skipped={**queries.skipped, "unsampled": len(queries.pairs) - n})


# -- ranking -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """Per method, the expected rank and AUC of every query (in Queries.pairs order)."""

    n: int
    ranks: dict[str, np.ndarray]    # method → (n,) expected ranks (1 = first)
    aucs: dict[str, np.ndarray]     # method → (n,)
    skipped: dict[str, int]

    def metrics(self, method: str) -> dict[str, float]:
        r = self.ranks[method]
        return {"mrr": float(np.mean(1.0 / r)), "hits1": float(np.mean(r <= 1)),
                "hits10": float(np.mean(r <= 10)), "auc": float(np.mean(self.aucs[method]))}

    def to_json(self) -> dict:
        """`{"n": ..., "methods": {name: {"mrr", "hits1", "hits10", "auc"}}}`."""
        return {"n": self.n, "methods": {m: self.metrics(m) for m in self.ranks}}


def evaluate(graph: EvalGraph, queries: Queries, scorers: dict[str, Scorer],
             batch: int | None = None, workers: int = 0) -> Result:
    """Rank every query's target with every scorer, batched over queries.

    Args:
        graph: the store's index and ground truth (candidates exclude p and p's known targets).
        queries: from select_queries.
        scorers: name → Scorer; each is called once per batch with the batch's distinct sources.
        batch: queries per batch (default: about 4M score entries per batch, at least 4).
        workers: batches ranked at once, on threads (graph.runtime.block_pool; 0: the cores
            this process may use); the scorers must be safe to call from two threads.

    Returns:
        Result with per-query ranks and AUCs per method.
    """
    if not len(queries.pairs):
        raise GraftError(f"no held-out link left to rank (skipped: {queries.skipped})")
    from tqdm import tqdm

    from graph.runtime import block_pool
    size = len(graph.index)
    # ≥ 4 queries a batch: the models' output heads are read once per batch (at 3M
    # particles, 0.8 GB each)
    batch = batch or max(4, min(1024, (1 << 22) // size))
    # by source, so a source's features are computed once (not once per batch it is in)
    order = np.argsort(queries.pairs[:, 0], kind="stable")
    pairs = queries.pairs[order]
    starts = range(0, len(pairs), batch)

    def ranked(start: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        p, q = pairs[start:start + batch].T                                # (B,), (B,)
        sources, row = np.unique(p, return_inverse=True)                   # (S,), (B,)
        candidates = candidate_mask(graph, p)                              # (B, P)
        out = {}
        for name, scorer in scorers.items():
            scores = np.asarray(scorer(sources))                           # (S, P)
            if scores.shape != (len(sources), size):
                raise GraftError(f"scorer {name!r} returned shape {scores.shape}; "
                                 f"expected {(len(sources), size)}")
            if np.isnan(scores).any():
                raise GraftError(f"scorer {name!r} returned NaN scores")
            out[name] = rank_targets(scores[row], q, candidates)
        return out

    ranks = {name: [] for name in scorers}
    aucs = {name: [] for name in scorers}
    with block_pool(workers) as blocks_map:
        for out in tqdm(blocks_map(ranked, starts), total=len(starts), desc="eval",
                        unit="batch", leave=False, disable=len(starts) < 20):
            for name, (r, a) in out.items():
                ranks[name].append(r)
                aucs[name].append(a)
    back = np.argsort(order)                                               # input order
    return Result(n=len(queries.pairs),
                  ranks={k: np.concatenate(v)[back] for k, v in ranks.items()},
                  aucs={k: np.concatenate(v)[back] for k, v in aucs.items()},
                  skipped=queries.skipped)


def candidate_mask(graph: EvalGraph, sources: np.ndarray) -> np.ndarray:
    """(B, P) bool: True for the particles each source's target is ranked among."""
    mask = np.ones((len(sources), len(graph.index)), dtype=bool)
    mask[np.arange(len(sources)), sources] = False
    rows, cols = graph.known[sources].nonzero()
    mask[rows, cols] = False
    return mask


def rank_targets(scores: np.ndarray, targets: np.ndarray,
                 candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected rank and AUC of each row's target among that row's candidates.

    Args:
        scores: (B, P) float, no NaN.
        targets: (B,) the position of each row's true target (a candidate).
        candidates: (B, P) bool.

    Returns:
        ranks (B,) float, 1 + above + ties/2; aucs (B,) float, 1 when q has no rival.
    """
    assert candidates[np.arange(len(targets)), targets].all(), "a target is not a candidate"
    t = scores[np.arange(len(targets)), targets][:, None]                  # (B, 1)
    above = ((scores > t) & candidates).sum(axis=1)                        # (B,)
    ties = ((scores == t) & candidates).sum(axis=1) - 1                    # q ties with itself
    rank = 1.0 + above + 0.5 * ties
    rivals = candidates.sum(axis=1) - 1
    auc = np.where(rivals > 0, 1.0 - (rank - 1.0) / np.maximum(rivals, 1), 1.0)
    return rank, auc


def format_table(result: Result) -> str:
    """One line per method: MRR, Hits@1, Hits@10, AUC, n; then what was skipped."""
    lines = [f"{'method':<14}{'MRR':>8}{'Hits@1':>8}{'Hits@10':>9}{'AUC':>8}{'n':>7}"]
    for method in result.ranks:
        m = result.metrics(method)
        lines.append(f"{method:<14}{m['mrr']:>8.4f}{m['hits1']:>8.4f}{m['hits10']:>9.4f}"
                     f"{m['auc']:>8.4f}{result.n:>7}")
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in result.skipped.items() if v)
    if skipped:
        lines.append(f"skipped held-out links: {skipped}")
    return "\n".join(lines)


# -- the model's scorer --------------------------------------------------------------------
def checkpoint_positions(model_dir: Path, index: list[str]) -> np.ndarray:
    """(P,) for each store particle, its position in the checkpoint's particles.json (token
    id − 4, after the special tokens), or -1 when the checkpoint does not know it."""
    path = Path(model_dir) / "particles.json"
    if not path.exists():
        raise GraftError(f"{path}: missing — not a graft-compiled checkpoint")
    order = {p: i for i, p in enumerate(json.loads(path.read_text()))}
    return np.array([order.get(p, -1) for p in index], dtype=np.int64)


def model_scorer(model_dir: Path, index: list[str], adapter: Path | None = None,
                 device: str = "auto") -> Scorer:
    """Next-particle logits of a checkpoint after the one-token prompt [p].

    Checkpoint token 4 + i is particle particles.json[i]; store particles the checkpoint
    does not know score -inf, and so does every particle after a source it does not know.

    Args:
        model_dir: a graft-compiled (or tuned, merged) checkpoint folder.
        index: the store's particle index (EvalGraph.index).
        adapter: a peft LoRA adapter folder to apply on top, or None.
        device: where the model runs (graph.runtime.resolve_device).

    Returns:
        A Scorer over `index`.
    """
    import torch

    from graph.runtime import resolve_device

    from graph.checkpoint import SPECIAL_TOKENS
    from finetune.checkpoints import load_checked
    if not (Path(model_dir) / "config.json").exists():
        raise GraftError(f"{model_dir}: no config.json (not a checkpoint folder)")
    model = load_checked(Path(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel
        from finetune.checkpoints import require_adapter
        require_adapter(adapter)
        model = PeftModel.from_pretrained(model, str(adapter))
    device = resolve_device(device)
    model = model.to(device).eval()
    offset = len(SPECIAL_TOKENS)
    ckpt = checkpoint_positions(model_dir, index)                          # (P,)
    have = np.flatnonzero(ckpt >= 0)                                       # positions it knows

    def score(sources: np.ndarray) -> np.ndarray:
        out = np.full((len(sources), len(index)), -np.inf, dtype=np.float32)   # (S, P)
        ok = np.flatnonzero(ckpt[sources] >= 0)
        if len(ok):
            ids = torch.as_tensor(ckpt[sources[ok]] + offset)[:, None].to(device)  # (S', 1)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[:, -1].float().cpu().numpy()  # (S', T)
            out[ok[:, None], have[None, :]] = logits[:, offset + ckpt[have]]
        return out

    return score
