"""Benchmark: `graft eval` on cyberwiki — the compiled model against every baseline, one split.

Usage: python bench/eval_cyberwiki.py [--data ../shared/data/cyberwiki] [--seed 1]
                                      [--fraction 0.1] [--token link] [--kge-epochs 20]
                                      [--out DIR] [--json FILE]

Holds out a seeded share of the train links (`graft split-holdout`; only rows of --token,
'' for any), ingests the rest with particles.jsonl into a fresh store, compiles it with
default settings (`graft compile`), and ranks each held-out target with the checkpoint
(graft), spectral E·Hᵀ from the checkpoint (the zero-layer score) and from a d = 64 SVD of
the store, and every other baseline of loop/baselines.py. Prints the table and the time of
each step; the same numbers come from `graft eval --holdout … --model …`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from graph.store import Store  # noqa: E402
from loop import baselines, evaluate  # noqa: E402
from loop.cli import main  # noqa: E402


def step(name: str, times: dict, func, *args):
    start = time.perf_counter()
    out = func(*args)
    times[name] = round(time.perf_counter() - start, 1)
    print(f"[{name}: {times[name]} s]", file=sys.stderr, flush=True)
    return out


def graft(*argv) -> None:
    rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"graft {' '.join(map(str, argv))}: exit {rc}")


def run(args) -> dict:
    times: dict[str, float] = {}
    work = Path(args.out or tempfile.mkdtemp(prefix="graft-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    db, ckpt = work / "wiki.duckdb", work / "ckpt"
    train, holdout = work / "train.jsonl", work / "holdout.jsonl"
    token = ["--token", args.token] if args.token else []
    step("split", times, graft, "split-holdout", args.data / "train_links.jsonl", "--fraction",
         args.fraction, "--seed", args.seed, "--train", train, "--holdout", holdout, *token)
    step("ingest", times, lambda: (graft("--db", db, "ingest", "particles",
                                         args.data / "particles.jsonl"),
                                   graft("--db", db, "ingest", "links", train)))
    step("compile", times, graft, "--db", db, "compile", "--out", ckpt)
    with Store(db, create=False, read_only=True) as store:
        graph = evaluate.load_graph(store)
    queries = evaluate.select_queries(graph, evaluate.read_holdout(holdout))
    cfg = baselines.BaselineConfig(seed=args.seed, kge_epochs=args.kge_epochs)
    makers = {"graft": lambda: evaluate.model_scorer(ckpt, graph.index),
              "spectral_ckpt": lambda: baselines.spectral(graph, baselines.BaselineConfig(
                  seed=args.seed, checkpoint=str(ckpt))),
              "spectral_d64": lambda: baselines.spectral(graph, cfg)}
    makers.update({n: (lambda n=n: baselines.BASELINES[n](graph, cfg))
                   for n in baselines.available() if n != "spectral"})
    scorers = {name: step(f"build {name}", times, make) for name, make in makers.items()}
    result = step("rank", times, evaluate.evaluate, graph, queries, scorers)
    print(evaluate.format_table(result))
    arch = json.loads((ckpt / "config.json").read_text())
    record = {**result.to_json(), "skipped": result.skipped, "seconds": times,
              "particles": len(graph.index), "model": {k: arch[k] for k in (
                  "hidden_size", "num_hidden_layers", "num_attention_heads")},
              "split": {"seed": args.seed, "fraction": args.fraction, "token": args.token},
              "load": os.getloadavg()}
    print(json.dumps({k: record[k] for k in ("seconds", "model", "split", "load")}))
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cyberwiki")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--token", default="link", help="held-out rows' token ('' for any)")
    parser.add_argument("--kge-epochs", type=int, default=20)
    parser.add_argument("--out", help="work folder (default: a new temp folder)")
    parser.add_argument("--json", type=Path, help="also write the record here")
    args = parser.parse_args()
    record = run(args)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
