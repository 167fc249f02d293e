"""Extract: links the graph lacks, ranked by the extractor's ranker (loop/rank.py) over the
text, the compiled model and the tuned model (DESIGN §4).

For every source p (batches of sources, never a Python loop over V² pairs) the ranker scores
every particle q; pairs already linked (any origin), pairs a curator rejected, p itself and
nothing else are masked.
A pair's score is its log-probability under the ranker's softmax over p's candidates, so
scores of different sources compare; each batch keeps its best `per_source` per row, and the
global top-k is taken from those with at most `per_target` into one target.

Without a fitted ranker the score is the lift of DESIGN §4, log P_tuned − β · log P_compiled
(β = 0 ranks by the tuned belief alone, β = 1 by what tuning added), as a ranker of two
features.

For each proposal two per-head views are computed. The semcon comes from the typed
attention: layer 0's query–key score of each head, x_p W_Q W_Kᵀ x_qᵀ / √d_h (x the normed
embeddings, the adapter's q/k updates included) — how strongly head h's relation makes p
attend to q; the best head gives the semcon (head i is semcon i of compile.json), as `graft
trace --pair` shows it. (A one-token prompt attends to itself only, so the heads' direct
output says nothing about q's type: on UMLS, typing proposals that way matched the true
relation 0.33 of the time, the QK head 0.83 — bench/typed_graph.py.) The other view is each
head's direct contribution to the logit of q (its o_proj slice, through the final RMSNorm
frozen, against lm_head[q]), tuned minus compiled: what tuning moved. Evidence: the
features, each one's share of the score (weight × value), both per-head views and the
corpus lines that name both (or the target, in a document that names the source).

Letters in shape comments: P particles in the store's index, B sources in a batch, k kept
per source, F features.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from graph.checkpoint import COMPILE_RECORD, SPECIAL_TOKENS
from graph.errors import GraftError
from graph.runtime import block_pool, device_of
from loop import candidates as cand


@dataclass(frozen=True)
class ExtractConfig:
    top_k: int = 100               # proposals kept in all
    per_source: int = 5            # at most this many per source
    per_target: int = 5            # ... and per target (a hub would otherwise take them all)
    beta: float = 0.5              # without a ranker: the compiled belief's weight subtracted
    batch: int = 256               # sources per batch (fewer when the index is large)
    threads: int = 1               # torch threads (see graph.runtime.torch_threads)
    workers: int = 0               # blocks of sources scored at once, on threads (0: the
                                   # cores this process may use; graph.runtime.block_pool)
    evidence_lines: int = 3        # corpus lines kept per proposal
    docs: str = "auto"             # the corpus's layout (finetune.text.corpus_documents)
    device: str = "auto"           # where the models run: auto (CUDA when seen), cpu, cuda[:N]
    scan: str = "auto"             # all particles per source, or its candidates; auto:
                                   # candidates beyond CANDIDATES_ABOVE particles
    sources: str = "auto"          # which particles get proposals: all, or text (those with
                                   # text: pages); auto: text when scanning candidates


@dataclass(frozen=True)
class Proposal:
    src: str
    dst: str
    score: float                   # log P_ranker(dst | src) over src's candidates
    confidence: float              # calibrated P(a true link) (loop/calibrate.py), else P_ranker
    tuned: float                   # log P_tuned(dst | src) (the compiled one without adapter)
    compiled: float                # log P_compiled(dst | src)
    head: int | None
    semcon: str | None
    evidence: dict


def load_pair(model_dir: Path, adapter: Path | None, device: str = "auto"):
    """The tuned model (compiled + adapter, or a merged/tuned folder) on `device` and a
    context that switches it back to the compiled model (the adapter disabled), or None
    without one."""
    from finetune.checkpoints import load_checked
    from graph.runtime import resolve_device
    device = resolve_device(device)
    base = load_checked(model_dir, dtype=torch.float32).to(device).eval()
    if adapter is None:
        return base, None
    if not (Path(adapter) / "adapter_config.json").exists():
        # a fully tuned model (`--method full`): the compiled weights are swapped in instead
        tuned = load_checked(Path(adapter), dtype=torch.float32).to(device).eval()
        compiled = {k: v.detach().clone() for k, v in base.state_dict().items()}
        return tuned, lambda: _weights(tuned, compiled)
    from peft import PeftModel
    tuned = PeftModel.from_pretrained(base, str(adapter)).to(device).eval()
    return tuned, tuned.disable_adapter


@contextmanager
def _weights(model, state: dict):
    """`model` with the weights `state` for the duration (restored after)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield model
    finally:
        model.load_state_dict(saved)


def lift_ranker(beta: float, adapter: bool):
    """The ranker without a fit: log P_tuned − β · log P_compiled (log P_compiled alone
    without an adapter)."""
    from loop.rank import Ranker
    if not adapter:
        return Ranker(("compiled",), (1.0,), {"kind": "compiled belief"})
    return Ranker(("tuned", "compiled"), (1.0, -beta), {"kind": "lift", "beta": beta})


def extract(store, model_dir: Path, cfg: ExtractConfig = ExtractConfig(),
            adapter: Path | None = None, ranker=None, corpus: Path | None = None,
            say: Callable[[str], None] = lambda _: None, embed_cache: Path | None = None,
            new_pages: list[str] = ()) -> list:
    """Top-k proposals (p, q) of particles of `store` that no link joins yet.

    Args:
        store: the graph store (read only): its particles, their text, its links.
        model_dir: the compiled checkpoint (or a merged / fully tuned one).
        cfg: how many and how capped.
        adapter: the LoRA adapter tuned on text over `model_dir`, or None.
        ranker: a loop.rank.Ranker (fitted on a fold by `graft cycle`), or None for the lift.
        corpus: text to quote as evidence (lines where both names occur).
        embed_cache: where text embeddings are cached (loop/embed.py), if the ranker uses them.
        new_pages: new notes (loop/cycle.py new_pages): those still without links get the
            calibration's map of pages the fold emptied, where it has one.

    Returns:
        Proposals, best first.
    """
    from graph.runtime import torch_threads
    with torch_threads(cfg.threads), torch.no_grad():
        return _extract(store, Path(model_dir), cfg, adapter, ranker, corpus, say, embed_cache,
                        new_pages)


def _extract(store, model_dir, cfg, adapter, ranker, corpus, say, embed_cache,
             new_pages) -> list:
    from graph import sql_loop
    from loop.evaluate import load_graph
    from loop.rank import Features
    torch.set_flush_denormal(True)                # tiny singular values: ~20× (DESIGN §7)
    graph = load_graph(store)
    # the text embeddings only when the ranker uses them (its candidates then add the
    # pages nearest by text): a ranker fitted without them would not score them
    embed = ranker is not None and bool({"embed_sim", "text_neighbours"} & set(ranker.features))
    feats = Features(graph, model_dir, adapter, embed_cache=embed_cache, embed=embed,
                     device=cfg.device)
    ranker = ranker or lift_ranker(cfg.beta, adapter is not None)
    pos = graph.position()
    size = len(graph.index)
    # linked pairs, and pairs a curator rejected: a rejected pair is never proposed again
    linked = [(pos[s], pos[d]) for q in (sql_loop.LINKED_PAIRS, sql_loop.REJECTED_PAIRS)
              for s, d in store.query(q) if s in pos and d in pos]
    pairs = np.asarray(linked, dtype=np.int64).reshape(-1, 2)
    masked = sp.csr_array((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])),
                             shape=(size, size))                              # (P, P)
    # pages that link nothing yet: calibrated on the fold's own such pages, and a new note
    # among them on the pages the fold emptied (loop/calibrate.py)
    cold = graph.cold()
    new = np.zeros(size, dtype=bool)
    new[[pos[p] for p in new_pages if p in pos]] = True
    new &= cold
    names = tuple(dict.fromkeys(ranker.features + ("compiled",) + (
        ("tuned",) if adapter is not None else ())))
    used = [names.index(f) for f in ranker.features]
    scan = cand.scan_kind(cfg.scan, size)
    batch = max(1, min(cfg.batch, 50_000_000 // (size * len(names)))) if scan == "all" \
        else cfg.batch
    k = min(cfg.per_source, size)
    kept_s, kept_q, kept_v, kept_f = [], [], [], []
    sources = source_rows(graph, cfg.sources, scan)                           # (S,)
    blocks = range(0, len(sources), batch)
    if scan == "candidates":
        say(f"extract: {len(sources)} sources of {size} particles: each source's candidates "
            f"are scored (loop/candidates.py), not all {size}")
    block = _dense_block if scan == "all" else _candidate_block

    def scored(start: int) -> tuple:
        rows = sources[start:start + batch]                                    # (B,)
        return block(feats, ranker, names, used, rows, masked, k)

    with block_pool(cfg.workers) as blocks_map:
        for parts in tqdm(blocks_map(scored, blocks), total=len(blocks), desc="extract",
                          unit="block", leave=False, disable=scan != "candidates"):
            for kept, part in zip((kept_s, kept_q, kept_v, kept_f), parts):
                kept.append(part)
    src, dst = np.concatenate(kept_s), np.concatenate(kept_q)
    vals, fvals = np.concatenate(kept_v), np.concatenate(kept_f)
    # Best first by calibrated confidence, then score: a page without links spreads its
    # probability over many likely targets, so by score alone its proposals (the likeliest
    # of all: its map says so) would never reach the top K.
    cal = ranker.fit.get("calibration")
    from loop.calibrate import apply, context_of, gaps
    context = context_of(cal, graph)                  # (P,) or None: what the maps weigh
    ctx = None if context is None else context[src]   # per kept pair
    gap = gaps(src, vals)                             # each source's best among its kept
    conf = (apply(cal, np.exp(vals), cold=cold[src], context=ctx, new=new[src], gap=gap) if cal
            else np.zeros(len(vals)))
    order = _capped(np.lexsort((dst, src, -vals, -conf)), dst, cfg.per_target, cfg.top_k)
    if scan == "candidates" and len(order):                # log-probabilities, as shown
        fvals[order] = feats.pairs(src[order], dst[order], names)
    say(f"extract: {len(sources)} sources scored, {len(order)} proposals")
    heads = _proposal_heads(feats, src[order], dst[order])
    semcons = json.loads((model_dir / COMPILE_RECORD).read_text()).get("semcons", [])
    lines = _corpus_lines(graph, corpus, src[order], dst[order], cfg.evidence_lines, cfg.docs)
    alike = linking_neighbours(feats, src[order], dst[order]) if "text_neighbours" in names \
        else [[] for _ in order]
    tuned_col = names.index("tuned") if "tuned" in names else names.index("compiled")
    ctx = None if ctx is None else ctx[order]
    at = src[order]
    confidence = conf[order] if cal else np.exp(vals[order])   # no calibration: P_ranker
    fold_only = apply(cal, np.exp(vals[order]), curator=False, cold=cold[at], context=ctx,
                      new=new[at], gap=gap[order])
    out = []
    for n, i in enumerate(order):
        qk, delta = heads[n] if heads[n] is not None else (None, None)
        head = int(np.argmax(qk)) if qk is not None and len(qk) else None
        semcon = semcons[head]["particle"] if head is not None and head < len(semcons) else None
        values = {f: round(float(fvals[i, names.index(f)]), 6) for f in names}
        shares = ranker.contributions(fvals[i:i + 1, used].astype(np.float64))[0]
        out.append(Proposal(
            src=graph.index[src[i]], dst=graph.index[dst[i]], score=float(vals[i]),
            confidence=float(confidence[n]), tuned=float(fvals[i, tuned_col]),
            compiled=float(fvals[i, names.index("compiled")]), head=head, semcon=semcon,
            evidence={"features": values,
                      "contributions": {f: round(float(c), 6)
                                        for f, c in zip(ranker.features, shares)},
                      "qk_scores": [round(float(x), 6) for x in (qk if qk is not None else [])],
                      "head_deltas": [round(float(x), 6) for x in (delta if delta is not None
                                                                   else [])],
                      "lines": lines[n],
                      "neighbours": alike[n],
                      "fold_confidence": round(float(fold_only[n]), 6)}))
    return out


def source_rows(graph, sources: str, scan: str) -> np.ndarray:
    """(S,) the index positions extraction proposes links from: every particle ("all"), or
    those with text ("text": the pages a curator writes; at Bostrom scale most particles
    carry none, and a source without text has only the models' guess). "auto" is "text" for
    a candidate scan (a large graph) when some particle has text, else "all"."""
    if sources not in ("auto", "all", "text"):
        raise GraftError(f"sources {sources!r}: expected auto, all or text")
    pages = np.array(sorted(graph.texts), dtype=np.int64)
    if sources == "auto":
        sources = "text" if scan == "candidates" and len(pages) else "all"
    if sources == "text" and not len(pages):
        raise GraftError("sources 'text': no particle in the store has text (ingest particles "
                         "with a text field, or propose from all of them: --sources all)")
    return pages if sources == "text" else np.arange(len(graph.index), dtype=np.int64)


def _dense_block(feats, ranker, names, used, rows, masked, k):
    """(sources, targets, log-probabilities, features) of the best k of each source in
    `rows`, every particle scored."""
    x = feats.block(rows, names)                                               # (B, P, F)
    score = ranker.score(x[..., used])                                         # (B, P)
    score[np.arange(len(rows)), rows] = -np.inf                                # no self-links
    score[masked[rows].toarray()] = -np.inf                                 # linked, rejected
    finite = np.isfinite(score)
    flat = (np.where(finite, score, -np.inf).max(axis=1)
            == np.where(finite, score, np.inf).min(axis=1))
    score[flat] = -np.inf                # every candidate alike: nothing to propose
    finite[flat] = False
    top = np.max(np.where(finite, score, -np.inf), axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        lse = top + np.log(np.sum(np.where(finite, np.exp(score - top), 0.0), axis=1,
                                  keepdims=True))
        logp = np.where(finite, score - lse, -np.inf)                          # (B, P)
    best = np.argpartition(-logp, k - 1, axis=1)[:, :k]                        # (B, k)
    vals = np.take_along_axis(logp, best, axis=1)
    keep = np.isfinite(vals).ravel()
    return (np.repeat(rows, k)[keep], best.ravel()[keep], vals.ravel()[keep],
            np.take_along_axis(x, best[..., None], axis=1).reshape(-1, len(names))[keep])


def candidate_top(feats, ranker, rows: np.ndarray, masked: sp.csr_array, k: int):
    """(sources, targets, log-probabilities, features) of the best k candidates of each
    source in `rows` under `ranker` (its own features), `masked` (P, P) pairs left out — as
    a candidate scan extracts them (the fold's calibration asks the same of other sources)."""
    return _candidate_block(feats, ranker, ranker.features, list(range(len(ranker.features))),
                            rows, masked, k)


def _candidate_block(feats, ranker, names, used, rows, masked, k):
    """_dense_block over each source's candidates only (loop/candidates.py of_sources): the
    features of those pairs (Features.pairs), the softmax over them."""
    r, q = cand.of_sources(feats, rows, masked)                                # (n,) each
    if not len(r):
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0), np.zeros((0, len(names)), np.float32))
    # a linear ranker's softmax over one source's candidates cancels the models' log-
    # partitions, so they are not computed (a V-wide head per source); _extract recomputes
    # the kept proposals' features exactly
    x = feats.pairs(rows[r], q, names, normalised=ranker.kind != "linear")      # (n, F)
    score = ranker.score(x[None, :, used])[0].astype(np.float64)               # (n,)
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])                      # per source
    top, low = np.maximum.reduceat(score, starts), np.minimum.reduceat(score, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(r)]))    # (n,)
    lse = top + np.log(np.add.reduceat(np.exp(score - top[seg]), starts))
    logp = score - lse[seg]
    by = np.lexsort((q, -logp, seg))                     # each source's best first
    rank = np.arange(len(by)) - starts[seg[by]]
    keep = by[(rank < k) & (top > low)[seg[by]]]         # every candidate alike: none
    keep = np.sort(keep)
    return rows[r[keep]], q[keep], logp[keep], x[keep]


def linking_neighbours(feats, src: np.ndarray, dst: np.ndarray) -> list[list[dict]]:
    """Per proposal, the pages nearest p by text (of the `text_neighbours` feature's k) that
    link q, with their cosine: "pages that read like this one link it"."""
    graph = feats.graph
    sources, row = np.unique(np.asarray(src, dtype=np.int64), return_inverse=True)
    nbr, sim = feats.nearest(sources)                                          # (S, k) each
    out = []
    for r, d in zip(row, dst):
        links = graph.known[nbr[r], int(d)]                                   # (k,)
        out.append([{"particle": graph.index[int(n)],
                     "name": (graph.names.get(int(n)) or [""])[0],
                     "cosine": round(float(c), 4)}
                    for n, c, linked in zip(nbr[r], sim[r], links) if c > 0 and linked])
    return out


def _capped(order: np.ndarray, dst: np.ndarray, per_target: int, k: int) -> np.ndarray:
    """The first `k` of `order` taking at most `per_target` proposals into one target."""
    seen: dict[int, int] = {}
    keep = []
    for i in order:
        t = int(dst[i])
        if seen.get(t, 0) < per_target:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
            if len(keep) == k:
                break
    return np.asarray(keep, dtype=np.int64)


def _proposal_heads(feats, src: np.ndarray, dst: np.ndarray) -> list:
    """Per proposal, (layer-0 QK scores, direct-logit deltas) per head, or None when the
    checkpoint lacks one of its ends."""
    offset = len(SPECIAL_TOKENS)
    s, d = feats.ckpt[src], feats.ckpt[dst]
    ok = np.flatnonzero((s >= 0) & (d >= 0))
    out: list = [None] * len(src)
    if len(ok):
        qk = _qk_scores(feats.model, s[ok] + offset, d[ok] + offset)
        deltas = _head_deltas(feats.model, feats.switch_off, s[ok] + offset, d[ok] + offset)
        for j, i in enumerate(ok):
            out[i] = (qk[j], deltas[j])
    return out


def _qk_scores(model, src_ids, dst_ids) -> np.ndarray:
    """(n, heads) layer 0's x_p W_Q^h · x_q W_K^h / √d_h, x = input_layernorm(embedding),
    without positions (what provenance.head_scores computes from the weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    h = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or h
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    layer = base.model.layers[0]
    embed = base.get_input_embeddings()
    dev = device_of(base)
    xp = layer.input_layernorm(embed(torch.as_tensor(src_ids).to(dev)))          # (n, d)
    xq = layer.input_layernorm(embed(torch.as_tensor(dst_ids).to(dev)))
    q = layer.self_attn.q_proj(xp).reshape(len(src_ids), h, dh)                    # (n, h, dh)
    k = layer.self_attn.k_proj(xq).reshape(len(dst_ids), kv, dh).repeat_interleave(h // kv, 1)
    return ((q * k).sum(-1) / dh ** 0.5).float().cpu().numpy().astype(np.float64)


def _head_deltas(tuned, switch_off, src_ids, dst_ids) -> np.ndarray:
    """(n, heads): per-head logit contribution to dst after [src], tuned minus compiled
    (without an adapter: the contributions themselves)."""
    if len(src_ids) == 0:
        return np.zeros((0, 0))
    t = _head_logits(tuned, src_ids, dst_ids, nullcontext)
    if switch_off is None:
        return t
    return t - _head_logits(tuned, src_ids, dst_ids, switch_off)


def _head_logits(model, src_ids, dst_ids, context) -> np.ndarray:
    """Sum over layers of each head's o_proj contribution · lm_head[dst], through the final
    RMSNorm frozen at its actual input (direct logit attribution: additive over heads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    h = cfg.num_attention_heads
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    captured, final = [], []
    hooks = [layer.self_attn.o_proj.register_forward_hook(
        lambda mod, args, out: captured.append((mod, args[0][:, -1].detach())))
        for layer in base.model.layers]
    hooks.append(base.model.norm.register_forward_hook(
        lambda mod, args, out: final.append(args[0][:, -1].detach())))
    with context():
        try:
            model(input_ids=torch.as_tensor(src_ids)[:, None].to(device_of(base)))
        finally:
            for hook in hooks:              # before calling o_proj again below
                hook.remove()
        n = len(src_ids)
        x = final[0]                                                               # (n, d)
        norm = base.model.norm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        factor = norm.weight[None] * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        dev = x.device
        target = base.lm_head.weight[torch.as_tensor(dst_ids).to(dev)] * factor       # (n, d)
        heads = torch.zeros(n, h, device=dev)
        eye = torch.eye(h, device=dev).repeat_interleave(dh, dim=1)                 # (h, h·dh)
        for mod, a in captured:                                                     # (n, h·dh)
            parts = mod((a[:, None, :] * eye[None]).reshape(n * h, -1)).reshape(n, h, -1)
            heads += (parts * target[:, None, :]).sum(-1)
    return heads.cpu().numpy().astype(np.float64)


def _corpus_lines(graph, corpus: Path | None, src, dst, keep: int, docs: str = "auto"
                  ) -> list[list]:
    """For each pair (index positions), up to `keep` (line number, text) of the corpus: the
    lines naming both first, then lines naming the target in a document (a run of non-blank
    lines) that names the source — a wiki page names itself in its title, not on the line
    that mentions the target."""
    if corpus is None:
        return [[] for _ in src]
    from finetune.text import Lexicon, corpus_lines
    lexicon = Lexicon(graph.names)
    wanted = set(int(x) for x in src) | set(int(x) for x in dst)
    lines_of: dict[int, set[int]] = {}         # particle → line numbers naming it
    docs_of: dict[int, set[int]] = {}          # particle → documents naming it
    text_of: dict[int, str] = {}               # line number → its text
    doc_of_line: dict[int, int] = {}
    for doc, number, line in corpus_lines(corpus, docs):
        text_of[number] = line
        doc_of_line[number] = doc
        for token in set(lexicon.match(line)[0]) & wanted:
            lines_of.setdefault(token, set()).add(number)
            docs_of.setdefault(token, set()).add(doc)
    out = []
    for s, d in zip(src, dst):
        ls, ld = lines_of.get(int(s), set()), lines_of.get(int(d), set())
        shared = docs_of.get(int(s), set()) & docs_of.get(int(d), set())
        near = sorted(n for n in ld - ls if doc_of_line[n] in shared)
        chosen = (sorted(ls & ld) + near)[:keep]
        out.append([[n, text_of[n][:300]] for n in chosen])
    return out
