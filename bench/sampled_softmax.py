"""Benchmark: tuning with a restricted softmax (the batch's targets plus N sampled particles,
finetune/tune.py sampled_loss) against the full softmax — same checkpoint, corpus, batches and
steps, one process, one thread. Per setting: training tokens/s, seconds, and what the tuned
model ends at under the *full* softmax (held-out text loss, graph MRR), so the saving is
weighed against what it costs.

Usage:
    python bench/sampled_softmax.py --model CKPT --corpus FILE [--db STORE]
           [--sampled 0,512,2048] [--steps 150]
e.g. on a cyberwiki cycle (bench/loop_cyberwiki.sh W 1 …):
    python bench/sampled_softmax.py --model W/out/cycle-1/model --db W/g.duckdb \\
           --corpus ../shared/data/cyberwiki/corpus.txt
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.tune import TuneConfig, tune  # noqa: E402
from graph.store import Store  # noqa: E402


def run(model: Path, corpus: Path, db: Path | None, sampled: int, steps: int,
        out: Path) -> dict:
    """One tuning run; the figures of its tune.json that the table shows."""
    cfg = TuneConfig(max_steps=steps, sampled=sampled, patience=10 ** 6)   # no early stop
    store = Store(db, read_only=True, create=False) if db else None
    try:
        r = tune(model, corpus, out, cfg, store, say=lambda m: print(f"  {m}", flush=True))
    finally:
        if store is not None:
            store.close()
    return {"sampled": r["sampled"], "steps": r["steps"],
            "tokens_per_second": r["tokens_per_second"], "train_seconds": r["train_seconds"],
            "heldout_before": r["before"]["heldout_loss"],
            "heldout_after": r["after"]["heldout_loss"],
            "graph_mrr_after": r["after"].get("graph", {}).get("mrr")}


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["sampled"] == 0), None)
    out = ["| softmax | steps | tokens/s | speed-up | train s | held-out loss before → after "
           "(full softmax) | graph MRR after |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = "full" if r["sampled"] == 0 else f"targets + {r['sampled']} sampled"
        speed = (f"{r['tokens_per_second'] / full['tokens_per_second']:.2f}×" if full
                 else "—")
        mrr = "—" if r["graph_mrr_after"] is None else f"{r['graph_mrr_after']:.4f}"
        out.append(f"| {name} | {r['steps']} | {r['tokens_per_second']:.0f} | {speed} | "
                   f"{r['train_seconds']:.1f} | {r['heldout_before']:.4f} → "
                   f"{r['heldout_after']:.4f} | {mrr} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a compiled checkpoint")
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--db", type=Path, help="its store (graph MRR is measured with one)")
    ap.add_argument("--sampled", default="0,512,2048",
                    help="comma-separated; 0 is the full softmax")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sampled.split(",")):
            print(f"sampled={n} …", flush=True)
            rows.append(run(args.model, args.corpus, args.db, n, args.steps,
                            Path(tmp) / f"s{n}"))
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
