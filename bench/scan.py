"""Benchmark: extraction's candidate scan beside the full scan, on a finished cycle — the same
store, models, adapter and ranker, the same seeded sources, one process. Per scan: seconds per
1,000 sources (and for all of the store's sources at that rate), and how many of the full
scan's best `per_source` targets of a source the candidate scan also proposes; with
--holdout, how many of each scan's proposals are held-out links. --workers 1,2 then times the
candidate scan in extraction's blocks of 256 sources on 1 and 2 threads
(graph.runtime.block_pool; one BLAS and torch thread per block either way) and checks that
every thread count proposes the same pairs.

Usage (after a `graft cycle` into WORK/out with its store at WORK/g.duckdb):
    python bench/scan.py WORK [--cycle 1] [--sources 512] [--seed 0] [--holdout FILE]
                              [--workers 1,2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph import sql_loop  # noqa: E402
from graph.store import Store  # noqa: E402
from loop import extract as ex  # noqa: E402
from loop.evaluate import load_graph, read_holdout  # noqa: E402
from loop.rank import Features, Ranker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--cycle", type=int, default=1)
    ap.add_argument("--sources", type=int, default=512)
    ap.add_argument("--per-source", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", type=Path, help="held-out links (JSONL of from/to)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workers", help="thread counts to time the candidate scan with, e.g. 1,2")
    args = ap.parse_args()
    folder = args.work / "out" / f"cycle-{args.cycle}"
    with Store(args.work / "g.duckdb", read_only=True, create=False) as store:
        graph = load_graph(store)
        pos = graph.position()
        linked = np.array([(pos[s], pos[d]) for q in (sql_loop.LINKED_PAIRS,
                                                      sql_loop.REJECTED_PAIRS)
                           for s, d in store.query(q) if s in pos and d in pos],
                          dtype=np.int64).reshape(-1, 2)
    size = len(graph.index)
    masked = sp.csr_array((np.ones(len(linked), dtype=bool), (linked[:, 0], linked[:, 1])),
                          shape=(size, size))
    ranker = Ranker.load(folder / "ranker.json")
    feats = Features(graph, folder / "model", folder / "adapter",
                     embed_cache=args.work / "out" / "embeddings.safetensors")
    feats.text_vectors()                                    # loaded before the clocks start
    rows = np.sort(np.random.default_rng(args.seed).choice(size, min(args.sources, size),
                                                           replace=False))
    names = ranker.features
    used = list(range(len(names)))
    out, found = {}, {}
    for scan, block in (("all", ex._dense_block), ("candidates", ex._candidate_block)):
        start = time.perf_counter()
        parts = [block(feats, ranker, names, used, rows[i:i + 64], masked, args.per_source)
                 for i in range(0, len(rows), 64)]
        seconds = time.perf_counter() - start
        src = np.concatenate([p[0] for p in parts])
        dst = np.concatenate([p[1] for p in parts])
        found[scan] = set(zip(src.tolist(), dst.tolist()))
        out[scan] = {"seconds": round(seconds, 2),
                     "per_1000_sources": round(1000 * seconds / len(rows), 2),
                     "all_sources_estimate": round(size * seconds / len(rows), 1),
                     "proposals": len(found[scan])}
        print(f"{scan}: {seconds:.1f} s for {len(rows)} sources", flush=True)
    kept = len(found["all"] & found["candidates"]) / max(len(found["all"]), 1)
    if args.holdout:
        held = read_holdout(args.holdout)
        held = {(pos[h.src], pos[h.dst]) for h in held if h.src in pos and h.dst in pos}
        for scan in out:
            out[scan]["held_out_links"] = len(found[scan] & held)
    print(f"| scan | s per 1,000 sources | all {size} sources at that rate (s) | "
          f"proposals (≤ {args.per_source} a source) | of them held-out links |\n"
          "|---|---|---|---|---|")
    for scan, r in out.items():
        print(f"| {scan} | {r['per_1000_sources']} | {r['all_sources_estimate']} | "
              f"{r['proposals']} | {r.get('held_out_links', '—')} |")
    print(f"candidate scan keeps {kept:.3f} of the full scan's proposals "
          f"({len(rows)} seeded sources)")
    threads = workers_table(feats, ranker, rows, masked, args.per_source,
                            [int(w) for w in args.workers.split(",")]) if args.workers else {}
    if args.json:
        args.json.write_text(json.dumps({**out, "kept": kept, "sources": len(rows),
                                         "threads": threads}, indent=2))


def workers_table(feats, ranker, rows: np.ndarray, masked, per_source: int,
                  counts: list[int]) -> dict:
    """Seconds of the candidate scan of `rows` in blocks of 256 on each thread count."""
    import torch
    from threadpoolctl import threadpool_limits

    from graph.runtime import block_pool, torch_threads
    names, used = ranker.features, list(range(len(ranker.features)))
    starts = range(0, len(rows), 256)
    out, first = {}, None
    for w in counts:
        torch.set_flush_denormal(True)
        with threadpool_limits(1, "blas"), torch_threads(1), block_pool(w) as blocks_map:
            start = time.perf_counter()
            parts = list(blocks_map(lambda i: ex._candidate_block(
                feats, ranker, names, used, rows[i:i + 256], masked, per_source), starts))
            seconds = time.perf_counter() - start
        pairs = np.concatenate([np.stack([p[0], p[1]], 1) for p in parts])
        same = first is None or np.array_equal(pairs, first)
        first = pairs if first is None else first
        out[w] = {"seconds": round(seconds, 2), "same_proposals": bool(same)}
    print(f"\n| threads | seconds for {len(rows)} sources | × one thread | same proposals |\n"
          "|---|---|---|---|")
    for w, r in out.items():
        print(f"| {w} | {r['seconds']} | {out[counts[0]]['seconds'] / r['seconds']:.2f} | "
              f"{'yes' if r['same_proposals'] else 'NO'} |")
    return out


if __name__ == "__main__":
    main()
