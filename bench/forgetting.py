"""Benchmark: what fine-tuning on text costs the graph — LoRA vs full weights, with and
without replay of graph walks — in one run, one table.

Usage: python bench/forgetting.py --db STORE --model DIR --corpus FILE [--steps 200]
       [--replay 1.0] [--out DIR]

For each configuration: held-out text loss (next particle, nats) and graph fit (filtered
next-particle MRR / Hits@10 over 2000 seeded links of the checkpoint's snapshot) before and
after, the steps taken (early stopping on held-out loss), and training tokens/s.
Example (cyberwiki): graft --db cw.duckdb ingest particles …/particles.jsonl; … ingest links
…/train_links.jsonl; graft --db cw.duckdb compile --out cw-model; then this script with
--corpus …/corpus.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from finetune.tune import TuneConfig, tune
    from graph.store import Store
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--replay", type=float, default=1.0)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="graft-forgetting-"))
    rows = []
    with Store(args.db, create=False, read_only=True) as store:
        for method in args.methods.split(","):
            for replay in (0.0, args.replay):
                cfg = TuneConfig(method=method, max_steps=args.steps, replay=replay)
                r = tune(args.model, args.corpus, out / f"{method}-r{replay}", cfg, store,
                         say=lambda m: print(f"  {m}", file=sys.stderr))
                rows.append(r)
                print(json.dumps({k: r[k] for k in ("method", "before", "after", "steps")}),
                      file=sys.stderr)
    print(f"\n{'method':<6} {'replay':>6} {'lr':>7} {'steps':>5} {'held-out loss':>17} "
          f"{'graph MRR':>15} {'graph Hits@10':>15} {'tokens/s':>9}")
    for r in rows:
        b, a = r["before"], r["after"]
        print(f"{r['method']:<6} {r['config']['replay']:>6.1f} {r['config']['lr']:>7.0e} "
              f"{r['steps']:>5} {b['heldout_loss']:>7.3f} → {a['heldout_loss']:>6.3f} "
              f"{b['graph']['mrr']:>6.3f} → {a['graph']['mrr']:>5.3f} "
              f"{b['graph']['hits10']:>6.3f} → {a['graph']['hits10']:>5.3f} "
              f"{r['tokens_per_second']:>9.0f}")
    print(f"\n(outputs in {out}; uniform guessing costs ln(V) nats of held-out loss)")


if __name__ == "__main__":
    main()
