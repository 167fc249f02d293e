"""Benchmark: which links lower the approximation error — a controlled experiment.

Usage: python bench/approximation_control.py [--data ../shared/data/cyberwiki] [--seed 1]
           [--work /tmp/graft-approx-control] [--accepted STORE] [--kl] [--samples N]
           [--tuning-seeds N]

The loop's approximation error (loop/approx.py: the compiled model's next-particle
cross-entropy on held-out text, over the base checkpoint's vocabulary, at one logit scale
fitted on training text) should fall as the loop adds links. This asks what any added links
can do to it. A seeded 10% of cyberwiki's `link` rows is held out (as bench/loop_cyberwiki.sh
does); the rest is the base graph. Each variant adds links to the base and is compiled at the
base's d and depth:
- the true missing links: seeded samples of 50 and 200 held-out links, and all of them;
- 50 and 200 seeded random pairs of particles that have text;
- with --accepted STORE, the links a loop run staked (origin `extract`) in that store.
With --samples N, N seeded samples of the 50 true links and of the 50 random pairs (two
samples of the same kind differ only in which links were added: compile-to-compile noise).
With --kl each variant is also tuned as a cycle tunes it (LoRA, 150 steps, tuning seed 0)
and KL(tuned ‖ compiled) at the first positions is measured (loop/approx.py: at the compiled
logits' best scale, and raw); --tuning-seeds N tunes the base again with seeds 1 … N−1, the
tuning's own noise. A data folder that already holds a split (`holdout.jsonl` beside
`train_links.jsonl`, as bench/wordnet_graph.py writes it) is used as it is.
For each: the approximation error, at the first position of each held-out document (right
after the page's own name, where its links act directly) and at the rest. Beside them, on
the same held-out tokens: uniform over the base vocabulary, an in-degree prior
softmax(a · log(in-degree + ½)) with a fitted on training text, and the training text's
own unigram frequencies (add-½) — references, not compiled models.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from scipy.optimize import minimize_scalar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compiler.compile import compile_snapshot  # noqa: E402
from compiler.types import SPECIAL_TOKENS, CompileConfig  # noqa: E402
from finetune.text import Lexicon  # noqa: E402
from finetune.tune import TuneConfig, text_rows  # noqa: E402
from graph.ingest import ingest_links  # noqa: E402
from graph.ingest_rows import ingest_particles  # noqa: E402
from graph.snapshot import take_snapshot  # noqa: E402
from graph.store import Store  # noqa: E402
from loop.approx import approximation_error  # noqa: E402
from loop.evaluate import split_links  # noqa: E402
from loop.linkrows import LinkRowConfig, tune_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cyberwiki")
    ap.add_argument("--seed", type=int, default=1, help="the holdout split's seed")
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-approx-control"))
    ap.add_argument("--accepted", type=Path, help="a loop store: add its `extract` links")
    ap.add_argument("--kl", action="store_true",
                    help="tune each variant as a cycle does and measure KL(tuned ‖ compiled)")
    ap.add_argument("--samples", type=int, default=1,
                    help="seeded samples of the 50 true links and the 50 random pairs")
    ap.add_argument("--tuning-seeds", type=int, default=1,
                    help="with --kl: tune the base with this many tuning seeds (0, 1, …)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    w = args.work
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    corpus = args.data / "corpus.txt"
    if (args.data / "holdout.jsonl").exists():          # a split made with the graph
        shutil.copy(args.data / "train_links.jsonl", w / "train.jsonl")
        shutil.copy(args.data / "holdout.jsonl", w / "holdout.jsonl")
    else:
        split_links(args.data / "train_links.jsonl", 0.1, args.seed, w / "train.jsonl",
                    w / "holdout.jsonl", token="link")
    held = [json.loads(line) for line in (w / "holdout.jsonl").read_text().splitlines()]
    token = held[0]["token"]
    with Store(w / "base.duckdb") as store:
        ingest_particles(store, [args.data / "particles.jsonl"])
        ingest_links(store, [w / "train.jsonl"])
        texts = [p for (p,) in store.query(
            "SELECT particle FROM particles WHERE text IS NOT NULL ORDER BY particle")]
    rng = random.Random(args.seed)
    variants = {"base (train links)": [],
                "+ 50 true missing links": rng.sample(held, 50),
                "+ 200 true missing links": rng.sample(held, 200),
                f"+ all {len(held)} true missing links": held,
                "+ 50 random pairs": _random(rng, texts, 50, token),
                "+ 200 random pairs": _random(rng, texts, 200, token)}
    for k in range(2, args.samples + 1):
        variants[f"+ 50 true missing links, sample {k}"] = rng.sample(held, 50)
        variants[f"+ 50 random pairs, sample {k}"] = _random(rng, texts, 50, token)
    if args.accepted:
        with Store(args.accepted, create=False, read_only=True) as s:
            rows = s.query("SELECT src, dst FROM cyberlinks WHERE origin = 'extract'")
        variants[f"+ {len(rows)} links the loop staked"] = [
            _row(a, b, i, token) for i, (a, b) in enumerate(rows)]
    base = w / "m0"
    results = {}
    for i, (name, rows) in enumerate(variants.items()):
        start = time.perf_counter()
        db, out = w / f"v{i}.duckdb", w / f"m{i}"
        shutil.copy(w / "base.duckdb", db)
        with Store(db) as store:
            if rows:
                path = w / f"v{i}.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in rows))
                ingest_links(store, [path])
            cfg = CompileConfig(check_determinism=False)
            if i:
                used = json.loads((base / "compile.json").read_text())["arch"]["used"]
                cfg = CompileConfig(d=used["d"], layers=used["layers"], check_determinism=False)
            compile_snapshot(store, take_snapshot(store), out, cfg)
            if i == 0:
                refs = _references(store, base, corpus, token)
            seeds = range(args.tuning_seeds if i == 0 else 1) if args.kl else [None]
            for seed in seeds:
                label = name if not seed else f"base, tuning seed {seed}"
                results[label] = _measure(store, out, base, corpus, seed)
                print(f"{label}: {results[label]} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
    _print(results, refs, len(held))


def _measure(store: Store, model: Path, base: Path, corpus: Path, seed: int | None) -> dict:
    """The approximation error of `model`; with a tuning seed, also KL(tuned ‖ compiled)
    after tuning it as a cycle does (loop/cycle.py's tune step at `graft cycle --max-steps
    150`'s defaults, the tuning seed changed)."""
    if seed is None:
        return approximation_error(model, base, corpus)
    cfg = TuneConfig(max_steps=150, seed=seed)
    adapter = model.parent / f"{model.name}-adapter-{seed}"
    shutil.rmtree(adapter, ignore_errors=True)
    record = tune_model(store, model, corpus, adapter, cfg, LinkRowConfig())
    # at the cycle's positions: the held-out documents follow the default tuning seed
    result = approximation_error(model, base, corpus, adapter=adapter)
    return {**result, "best_step": record["best_step"]}


def _row(src: str, dst: str, i: int, token: str) -> dict:
    return {"neuron": "control", "from": src, "to": dst, "token": token, "amount": 1,
            "valence": 1, "time": 1_900_000_000 + i}


def _random(rng: random.Random, particles: list[str], n: int, token: str) -> list[dict]:
    return [_row(*rng.sample(particles, 2), i, token) for i in range(n)]


def _references(store: Store, base: Path, corpus: Path, token: str) -> dict:
    """Uniform, in-degree prior and training-text unigram cross-entropies on the held-out
    tokens approximation_error scores for the base checkpoint."""
    cfg = TuneConfig()
    _, train_rows, held_rows = text_rows(Lexicon.of_checkpoint(base), corpus, cfg)
    particles = json.loads((base / "particles.json").read_text())
    specials = len(SPECIAL_TOKENS)
    vocab = specials + len(particles)
    indeg = dict(store.query("SELECT dst, count(*) FROM cyberlinks WHERE token = ? "
                             "GROUP BY dst", [token]))
    log_in = torch.tensor([-30.0] * specials + [math.log(indeg.get(p, 0) + 0.5) for p in particles])
    train_t = torch.tensor([t for r in train_rows for t in r[1:]])
    held_t = torch.tensor([t for r in held_rows for t in r[1:]])
    # softmax(a · log_in) is the same at every position: CE(a) = logsumexp(a·x) − a·mean x[t]
    ce = lambda a, t: float(torch.logsumexp(a * log_in, 0) - a * log_in[t].mean())  # noqa: E731
    a = minimize_scalar(lambda a: ce(a, train_t), bounds=(0.0, 20.0), method="bounded").x
    counts = torch.bincount(train_t, minlength=vocab).double() + 0.5
    counts[:specials] = 0.0
    unigram = -torch.log(counts / counts.sum())[held_t].mean()
    return {"uniform over the base vocabulary": math.log(len(particles)),
            "in-degree prior (fitted scale)": ce(a, held_t),
            "unigram of the training text": float(unigram)}


def _print(results: dict, refs: dict, n_held: int) -> None:
    base = next(iter(results.values()))
    print(f"\n{base['tokens']} held-out tokens ({base['first_tokens']} first positions); "
          f"{n_held} true missing links\n")
    kl = base.get("kl") is not None
    print("| graph compiled | approximation error | Δ vs base | first position | rest |"
          + (" KL(tuned ‖ compiled) first | its scale | raw KL | best step |" if kl else ""))
    print("|---|---|---|---|---|" + ("---|---|---|---|" if kl else ""))
    for name, r in results.items():
        print(f"| {name} | {r['error']:.4f} | {r['error'] - base['error']:+.4f} | "
              f"{r['first']:.4f} | {r['rest']:.4f} |"
              + (f" {r['kl']:.4f} | {r['kl_scale']:.3f} | {r['kl_raw']:.4f} | "
                 f"{r['best_step']} |" if kl else ""))
    for name, value in refs.items():
        print(f"| reference: {name} | {value:.4f} | | | |" + (" | | | |" if kl else ""))


if __name__ == "__main__":
    main()
