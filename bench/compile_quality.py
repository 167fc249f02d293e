"""Benchmark: does the compiled model rank held-out links better than its zero-layer floor?

Usage: python bench/compile_quality.py [--data ../shared/data/cyberwiki] [--seed 20261129]
                                      [--d 128] [--layers 2] [--gains 0,0.1,0.3,1]

Hides a seeded 10% of the cyberwiki `link` edges (both ends stay in the graph), compiles
the rest, and ranks the true target q of each hidden (p, q) among all particles except p's
known out-links. Prints MRR and Hits@10 of: the zero-layer model (E·Hᵀ), the full compiled
model for each attention/MLP gain, popularity (in-degree), Adamic–Adar and PPMI — one run,
one table, same split.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compiler.compile import compile_snapshot, seed_of  # noqa: E402
from compiler.mlp import cooccurrence, positive_pmi, random_walks  # noqa: E402
from compiler.types import CompileConfig  # noqa: E402
from graph.ingest import ingest_links  # noqa: E402
from graph.ingest_rows import ingest_particles  # noqa: E402
from graph.snapshot import adjacency, take_snapshot  # noqa: E402
from graph.store import Store  # noqa: E402


def split(links_path: Path, workdir: Path, seed: int) -> tuple[Path, list[tuple[str, str]]]:
    """Hide 10% of `link` edges whose two ends keep other links; write the rest."""
    rows = [json.loads(line) for line in links_path.read_text().splitlines() if line.strip()]
    degree: dict[str, int] = {}
    for r in rows:
        degree[r["from"]] = degree.get(r["from"], 0) + 1
        degree[r["to"]] = degree.get(r["to"], 0) + 1
    candidates = [i for i, r in enumerate(rows) if r["token"] == "link"]
    random.Random(seed).shuffle(candidates)
    hidden: set[int] = set()
    target = round(0.1 * len(candidates))
    for i in candidates:
        r = rows[i]
        if len(hidden) >= target:
            break
        if degree[r["from"]] > 1 and degree[r["to"]] > 1:
            hidden.add(i)
            degree[r["from"]] -= 1
            degree[r["to"]] -= 1
    kept = workdir / "train.jsonl"
    kept.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in hidden))
    return kept, [(rows[i]["from"], rows[i]["to"]) for i in sorted(hidden)]


def ranks(scores: np.ndarray, sources: np.ndarray, targets: np.ndarray, known: sp.csr_array) -> np.ndarray:
    """Rank (1 = best) of each target among all particles but the source's known targets
    and itself. scores (n, V) for the n held-out pairs."""
    scores = scores.astype(np.float64).copy()
    for row, p in enumerate(sources):
        scores[row, known.indices[known.indptr[p]:known.indptr[p + 1]]] = -np.inf
        scores[row, p] = -np.inf
    true = scores[np.arange(len(targets)), targets]
    return 1 + (scores > true[:, None]).sum(axis=1) + 0.5 * ((scores == true[:, None]).sum(axis=1) - 1)


def summary(r: np.ndarray) -> dict:
    return {"mrr": float((1 / r).mean()), "hits10": float((r <= 10).mean())}


def model_scores(ckpt: Path, sources: np.ndarray, offset: int) -> np.ndarray:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    out = []
    with torch.no_grad():
        for chunk in np.array_split(sources, max(len(sources) // 256, 1)):
            ids = torch.tensor(offset + chunk)[:, None]
            out.append(model(input_ids=ids).logits[:, -1, offset:].numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cyberwiki")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--gains", default="0,0.1,0.3,1")
    args = parser.parse_args()
    if not (args.data / "train_links.jsonl").exists():
        sys.exit(f"no cyberwiki data at {args.data}")
    work = Path(tempfile.mkdtemp(prefix="graft-quality-"))
    train, hidden = split(args.data / "train_links.jsonl", work, args.seed)
    store = Store(work / "g.duckdb")
    ingest_particles(store, [args.data / "particles.jsonl"])
    ingest_links(store, [train])
    snap = take_snapshot(store)
    adj = adjacency(store, snap)
    pos = adj.position()
    pairs = np.array([(pos[p], pos[q]) for p, q in hidden if p in pos and q in pos])
    src, dst = pairs[:, 0], pairs[:, 1]
    a = adj.matrix.tocsr()
    print(f"cyberwiki split (seed {args.seed}): {len(pairs)} held-out links, "
          f"{a.nnz} train edges over {a.shape[0]} particles\n")
    rows = []
    indeg = np.asarray((a > 0).sum(axis=0)).ravel().astype(float)
    rows.append(("popularity (in-degree)", summary(ranks(np.tile(indeg, (len(src), 1)), src, dst, a))))
    und = ((a + a.T) > 0).astype(float).tocsr()
    deg = np.asarray(und.sum(axis=1)).ravel()
    inv_log = sp.diags_array(np.where(deg > 1, 1 / np.log(np.maximum(deg, 2)), 0.0))
    aa = (und[src] @ inv_log @ und).toarray()
    rows.append(("Adamic–Adar", summary(ranks(aa, src, dst, a))))
    walks = random_walks(a, 4, 20, seed_of(snap))
    ppmi = positive_pmi(cooccurrence(walks, 5, a.shape[0])).tocsr()
    rows.append(("PPMI (walks, window 5)", summary(ranks(ppmi[src].toarray(), src, dst, a))))
    gains = [float(g) for g in args.gains.split(",")]
    for attn in gains:
        for mlp in gains:
            if attn and mlp and attn != mlp:
                continue  # the diagonal and the two axes are enough to see the trend
            cfg = CompileConfig(d=args.d, layers=args.layers, attn_gain=attn, mlp_gain=mlp,
                                check_determinism=False)
            ckpt = work / f"ckpt-{attn}-{mlp}"
            t = time.perf_counter()
            compile_snapshot(store, snap, ckpt, cfg)
            scores = model_scores(ckpt, src, 4)
            label = f"compiled, attn gain {attn}, MLP gain {mlp}"
            if attn == 0 and mlp == 0:
                label = "zero-layer floor (E·Hᵀ through the model)"
            rows.append((label, {**summary(ranks(scores, src, dst, a)),
                                 "seconds": round(time.perf_counter() - t, 1)}))
    print(f"{'method':<48} {'MRR':>7} {'Hits@10':>8}")
    for name, s in rows:
        print(f"{name:<48} {s['mrr']:>7.4f} {s['hits10']:>8.4f}")
    record = json.loads((work / "ckpt-0.0-0.0" / "compile.json").read_text())
    print(f"\narchitecture used: {record['arch']['used']}; derived: "
          f"{ {k: record['arch']['derived'][k] for k in ('d_star', 'l_star') if k in record['arch']['derived']} }")


if __name__ == "__main__":
    main()
