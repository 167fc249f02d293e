"""How much a candidate-based extractor would keep (issue 14): on a finished cycle, the
held-out links' sources get candidate sets (loop/candidates.py) and we count the held-out
targets they keep, by kind; the full ranker's top 10 they keep; the held-out MRR when only
candidates are ranked (a target outside its source's set counts as a miss) beside the full
scan's; and the compiled model's top-k by the exact scan beside faiss HNSW (recall of the
exact top-k, seconds).

Usage (after bench/loop_cyberwiki.sh W or bench/loop_wordnet.sh W):
    python bench/candidates.py W [--cycle 1] [--holdout FILE] [--k-model 100]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.store import Store  # noqa: E402
from loop import candidates as cand  # noqa: E402
from loop import evaluate  # noqa: E402
from loop.rank import Features, Ranker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--cycle", type=int, default=1)
    ap.add_argument("--holdout", type=Path, help="default WORK/holdout.jsonl")
    ap.add_argument("--k-model", type=int, default=100)
    ap.add_argument("--k-text", type=int, default=20)
    ap.add_argument("--k-popular", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    folder = args.work / "out" / f"cycle-{args.cycle}"
    with Store(args.work / "g.duckdb", read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    queries = evaluate.select_queries(graph, evaluate.read_holdout(
        args.holdout or args.work / "holdout.jsonl"))
    pairs = np.asarray(queries.pairs, dtype=np.int64).reshape(-1, 2)
    sources = np.unique(pairs[:, 0])
    feats = Features(graph, folder / "model", folder / "adapter",
                     embed_cache=args.work / "out" / "embeddings.safetensors")
    model = (feats.embed, feats.head, feats.ckpt)
    record: dict = {"holdout": int(len(pairs)), "sources": int(len(sources))}

    t0 = time.perf_counter()
    sets = cand.candidates(graph, sources, mention=feats.mention, text_vectors=feats.text_vectors(),
                           model=model, k_text=args.k_text, k_model=args.k_model,
                           k_popular=args.k_popular)
    record["build_seconds"] = round(time.perf_counter() - t0, 2)
    record["holdout_recall"] = cand.recall(sets, sources, pairs, say=print)

    # the full ranker over every particle, against the same ranker over candidates only
    ranker = Ranker.load(folder / "ranker.json")
    full = evaluate.evaluate(graph, queries, {"full": lambda s: ranker.score(
        feats.block(np.asarray(s), ranker.features))})
    keep = cand.union(sets)
    row = {int(s): i for i, s in enumerate(sources)}

    def restricted(s):
        s = np.asarray(s)
        score = ranker.score(feats.block(s, ranker.features))                 # (B, P)
        mask = keep[[row[int(x)] for x in s]].toarray()
        return np.where(mask, score, -1e30)

    part = evaluate.evaluate(graph, queries, {"candidates": restricted})
    record["mrr_full"], record["mrr_candidates"] = (full.metrics("full"),
                                                    part.metrics("candidates"))
    top10 = []
    for i in range(0, len(sources), 256):
        chunk = sources[i:i + 256]
        score = ranker.score(feats.block(chunk, ranker.features))              # (B, P)
        score[np.arange(len(chunk)), chunk] = -np.inf
        for j, s in enumerate(chunk):
            score[j, graph.known[[s]].nonzero()[1]] = -np.inf
        best = np.argsort(-score, axis=1, kind="stable")[:, :10]
        rows = keep[np.arange(i, i + len(chunk))].toarray()                   # (B, P)
        top10.append(np.take_along_axis(rows, best, 1))
    record["ranker_top10_kept"] = float(np.concatenate(top10).mean())

    # the model's top-k: the exact scan against faiss HNSW
    q = feats.embed[feats.ckpt[sources[feats.ckpt[sources] >= 0]]]
    h = feats.head
    timing = {}
    for name, approx in (("exact", False), ("hnsw", True)):
        t0 = time.perf_counter()
        timing[name] = (cand.top_inner(q, h, args.k_model, approximate=approx),
                        time.perf_counter() - t0)
    ex, hn = timing["exact"][0], timing["hnsw"][0]
    record["model_topk"] = {"k": args.k_model, "queries": int(len(q)), "keys": int(len(h)),
                            "exact_seconds": round(timing["exact"][1], 3),
                            "hnsw_seconds": round(timing["hnsw"][1], 3),
                            "hnsw_recall": float(np.mean([len(set(a) & set(b)) / len(a)
                                                          for a, b in zip(ex, hn)]))}
    r = record["holdout_recall"]
    print(f"\n{record['holdout']} held-out links, {record['sources']} sources; candidates "
          f"built in {record['build_seconds']} s")
    print("| kind | candidates per source | held-out targets kept |\n|---|---|---|")
    for k, v in r["by_kind"].items():
        print(f"| {k} | {v['per_source']:.0f} | {v['recall']:.3f} |")
    print(f"| all | {r['per_source']:.0f} | {r['recall']:.3f} |")
    print(f"full ranker top 10 kept: {record['ranker_top10_kept']:.3f}; held-out MRR full "
          f"{record['mrr_full']['mrr']:.4f}, candidates only {record['mrr_candidates']['mrr']:.4f}"
          f" (Hits@10 {record['mrr_full']['hits10']:.4f} / "
          f"{record['mrr_candidates']['hits10']:.4f})")
    m = record["model_topk"]
    print(f"model top-{m['k']} of {m['queries']} × {m['keys']}: exact {m['exact_seconds']} s, "
          f"HNSW {m['hnsw_seconds']} s, HNSW recall of the exact top-k {m['hnsw_recall']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
