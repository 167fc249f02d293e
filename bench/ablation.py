"""What the compiled and tuned models add to the extractor, on a finished cycle: the ranker is
refitted on the cycle's fold with each feature group left out, and every fit ranks the same
held-out links (loop/ablate.py). With --retune the fold's and the cycle's models are tuned
again first with another recipe (method, steps, link rows), so recipes compare on one split.

Usage (after bench/loop_cyberwiki.sh WORK 1 …):
    python bench/ablation.py WORK [--cycle 1] [--retune NAME --method lora --link-rows 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune import trl_jobs  # noqa: E402
from finetune.tune import TuneConfig  # noqa: E402
from graph.store import Store  # noqa: E402
from loop import ablate, evaluate  # noqa: E402
from loop.fold import make_fold  # noqa: E402
from loop.linkrows import LinkRowConfig, tune_model  # noqa: E402
from loop.fit import fit_on, fit_queries  # noqa: E402
from loop.rank import GROUPS, Features  # noqa: E402

OLD_TEXT = ("mention", "mention_count", "back_mention", "indegree")


def hidden_pairs(work: Path, fold: Path, n: int, seed: int) -> list:
    saved = fold / "hidden.json"
    if saved.exists():
        return [tuple(x) for x in json.loads(saved.read_text())]
    with Store(work / "g.duckdb", read_only=True, create=False) as store:   # the same seed
        return make_fold(store, Path("/tmp") / f"refold-{n}.duckdb", 0.1, seed)


def retune(store_path: Path, model: Path, out: Path, cfg: TuneConfig, link: LinkRowConfig,
           corpus: Path) -> dict:
    with Store(store_path, read_only=True, create=False) as store:
        start = time.perf_counter()
        r = tune_model(store, model, corpus, out, cfg, link, say=print)
    return {"seconds": round(time.perf_counter() - start, 1), "steps": r["steps"],
            "heldout": r["after"]["heldout_loss"]}


def dpo_pairs(graph: evaluate.EvalGraph, tokens: dict[str, str], per_page: int, seed: int
              ) -> list[dict]:
    """A page's linked mentions chosen over its unlinked ones (DESIGN §7), as DPO rows of the
    checkpoint's token strings: prompt p, chosen a target p names and links, rejected one it
    names and does not; at most `per_page` rows a page (seeded)."""
    from loop.rank import mention_matrix
    named = mention_matrix(graph)
    pos = {p: i for i, p in enumerate(graph.index)}
    token = {pos[p]: t for p, t in tokens.items() if p in pos}
    rng = np.random.default_rng(seed)
    keys = []
    for p in range(len(graph.index)):
        if p not in token:
            continue
        m = {int(q) for q in named[[p]].indices if int(q) in token}
        linked = m & {int(q) for q in graph.known[[p]].indices}
        if not linked or not m - linked:
            continue
        pairs = [(c, r) for c in sorted(linked) for r in sorted(m - linked)]
        keys += [(p, *pairs[i]) for i in rng.permutation(len(pairs))[:per_page]]
    return trl_jobs.token_rows(keys, token)


def retune_dpo(store_path: Path, model: Path, out: Path, steps: int, lr: float | None,
               rank: int, per_page: int) -> dict:
    """`graft dpo` (finetune/trl_jobs.py, TRL's DPO trainer) on dpo_pairs of the store, a
    LoRA on the compiled model; the rows are token strings already."""
    with Store(store_path, read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    rows = dpo_pairs(graph, trl_jobs.checkpoint_tokens(model), per_page, 0)
    print(f"dpo: {len(rows)} pairs from {store_path}, e.g. {rows[0]}")
    out.mkdir(parents=True, exist_ok=True)
    data = out.parent / f"{out.name}.pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = time.perf_counter()
    r = trl_jobs.train("dpo", model, data, out, method="lora", max_steps=steps, lr=lr,
                       batch_size=8, rank=rank, alpha=2 * rank, device="cpu", tokens=True,
                       say=print)
    return {"seconds": round(time.perf_counter() - start, 1), "pairs": len(rows),
            "steps": r["steps"], "loss": [r["first_loss"], r["last_loss"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--cycle", type=int, default=1)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--corpus", type=Path, default=Path("../shared/data/cyberwiki/corpus.txt"))
    ap.add_argument("--retune", metavar="NAME", help="tune again into adapter-NAME folders")
    ap.add_argument("--method", default="lora", help="lora, full, or dpo (LoRA by TRL's DPO "
                    "on each page's linked vs unlinked mentions)")
    ap.add_argument("--pairs-per-page", type=int, default=4, help="dpo rows per page")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--link-rows", type=float, default=0.0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--no-embed", action="store_true")
    ap.add_argument("--lgbm", action="store_true", help="also LightGBM lambdarank rankers")
    ap.add_argument("--no-own", action="store_true", help="link rows without p's own token")
    ap.add_argument("--no-cross-fit", action="store_true", help="one adapter on every page")
    ap.add_argument("--holdout", type=Path, help="held-out links (default WORK/holdout.jsonl)")
    ap.add_argument("--json", type=Path, help="write the tables here")
    args = ap.parse_args()
    work, n = args.work, args.cycle
    folder = work / "out" / f"cycle-{n}"
    fold = folder / "fold"
    name = args.retune
    adapter, fold_adapter = folder / "adapter", fold / "adapter"
    record = {}
    if name and args.method == "dpo":
        adapter, fold_adapter = folder / f"adapter-{name}", fold / f"adapter-{name}"
        for key, db, model, out in (("tune_fold", fold / "fold.duckdb", fold / "model",
                                     fold_adapter), ("tune", work / "g.duckdb",
                                                     folder / "model", adapter)):
            record[key] = retune_dpo(db, model, out, args.steps, args.lr, args.rank,
                                     args.pairs_per_page)
            print(key, record[key])
    elif name:
        cfg = TuneConfig(method=args.method, max_steps=args.steps, lr=args.lr,
                         link_rows=args.link_rows, rank=args.rank)
        link = LinkRowConfig(own=not args.no_own, cross_fit=not args.no_cross_fit)
        adapter, fold_adapter = folder / f"adapter-{name}", fold / f"adapter-{name}"
        record["tune_fold"] = retune(fold / "fold.duckdb", fold / "model", fold_adapter, cfg,
                                     link, args.corpus)
        record["tune"] = retune(work / "g.duckdb", folder / "model", adapter, cfg, link,
                                args.corpus)
    hidden = hidden_pairs(work, fold, n, args.fold_seed + n)
    with Store(fold / "fold.duckdb", read_only=True, create=False) as fs:
        fold_graph = evaluate.load_graph(fs)
    pos = fold_graph.position()
    pairs = np.array([(pos[s], pos[d]) for s, d in hidden if s in pos and d in pos])
    cache = work / "out" / "embeddings.safetensors"
    t0 = time.perf_counter()
    fq = fit_queries(Features(fold_graph, fold / "model", fold_adapter, embed_cache=cache,
                              embed=not args.no_embed), fold_graph.known, pairs, say=print)
    rankers = {"text (4 features of stop 10)": fit_on(fq, OLD_TEXT)}
    rankers.update(ablate.fit_subsets(fq, say=print))
    if args.lgbm:
        rankers.update({f"{k} (lgbm)": r for k, r in
                        ablate.fit_subsets(fq, "lgbm", say=print).items()})
    for group in ("tuned",):                    # each tuned feature alone with the text
        for f in GROUPS[group]:
            if f in fq.names:
                rankers[f"text+{f}"] = fit_on(fq, tuple(x for x in fq.names
                                                        if x in GROUPS["text"]) + (f,))
    print(f"fitted in {time.perf_counter() - t0:.0f} s")
    with Store(work / "g.duckdb", read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    queries = evaluate.select_queries(graph, evaluate.read_holdout(
        args.holdout or work / "holdout.jsonl"))
    feats = Features(graph, folder / "model", adapter, embed_cache=cache,
                     embed=not args.no_embed)
    table = ablate.rank_holdout(graph, queries, feats, rankers)
    lm = evaluate.evaluate(graph, queries, {
        f: (lambda s, f=f: feats.block(s, (f,))[..., 0]) for f in GROUPS["tuned"]})
    record.update(ablation=table, tuned_alone={f: lm.metrics(f) for f in GROUPS["tuned"]},
                  n=len(queries.pairs))
    print(ablate.format_ablation(table))
    for f in GROUPS["tuned"]:
        print(f"{f} alone: MRR {lm.metrics(f)['mrr']:.4f} Hits@10 {lm.metrics(f)['hits10']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
