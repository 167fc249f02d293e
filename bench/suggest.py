"""`graft suggest` on cyberwiki pages whose links were removed: precision and recall at 5
against their real links, beside unlinked mentions (issue 15).

A seeded 5% of the pages with ≥ 3 links lose all their out-links (`graft split-holdout
--cold-pages`); the rest is ingested and one `graft cycle --curator` compiles, tunes and fits
the ranker. Then each cold page — a note with text and no links, as a curator's new note —
is given to `loop.suggest.suggest` with its text, and its top 5 are compared with the links
it had. The unlinked-mentions column ranks the same candidates as Obsidian's pane would:
particles the note names first, by in-degree.

Usage: python bench/suggest.py --work W [--seed 1] [--pages 40]      (needs ../shared)
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.store import Store  # noqa: E402

CYBERWIKI = ROOT.parent / "shared" / "data" / "cyberwiki"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pages", type=int, default=40, help="cold pages asked (at most)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="keep W's split, store and cycle")
    args = ap.parse_args()
    if not CYBERWIKI.is_dir():
        sys.exit(f"{CYBERWIKI} missing: this bench needs ../shared")
    db = args.work / "g.duckdb"
    reuse = args.reuse and db.exists()
    if not reuse:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
    log = open(args.work / "log.txt", "a")

    def graft(*a):
        subprocess.run(["graft", "--db", str(db), *a], check=True, cwd=ROOT, stdout=log,
                       stderr=subprocess.STDOUT)

    start = time.perf_counter()
    if not reuse:
        graft("split-holdout", str(CYBERWIKI / "train_links.jsonl"), "--cold-pages", "0.05",
              "--seed", str(args.seed), "--token", "link", "--train",
              str(args.work / "train.jsonl"), "--holdout", str(args.work / "cold.jsonl"))
        graft("ingest", "particles", str(CYBERWIKI / "particles.jsonl"))
        graft("ingest", "links", str(args.work / "train.jsonl"))
        start = time.perf_counter()
        graft("cycle", "--cycles", "1", "--curator", "--out", str(args.work / "out"),
              "--max-steps", "150", "--top-k", "500", "--corpus", str(CYBERWIKI / "corpus.txt"))
    cycle_s = time.perf_counter() - start
    truth: dict[str, set[str]] = {}
    for line in (args.work / "cold.jsonl").read_text().splitlines():
        row = json.loads(line)
        truth.setdefault(row["from"], set()).add(row["to"])
    pages = sorted(truth)
    pick = np.random.default_rng(args.seed).choice(len(pages), min(args.pages, len(pages)),
                                                   replace=False)
    from loop.baselines import BaselineConfig, mentions
    from loop.evaluate import load_graph
    from loop.suggest import suggest
    rows, seconds = [], []
    with Store(db, create=False, read_only=True) as store:
        graph = load_graph(store)
        pos = graph.position()
        names = dict(store.query("SELECT particle, name FROM particles"))
        texts = dict(store.query("SELECT particle, text FROM particles"))
        mention = mentions(graph, BaselineConfig())
        for i in sorted(pick):
            page = pages[i]
            if not texts.get(page) or page not in pos:
                continue
            t0 = time.perf_counter()
            got = suggest(store, db, names[page], texts[page], top=args.k)
            seconds.append(time.perf_counter() - t0)
            ours = [s["dst"] for s in got["suggestions"]]
            score = mention(np.array([pos[page]]))[0].astype(np.float64)
            score[pos[page]] = -np.inf
            theirs = [graph.index[j] for j in np.argsort(-score, kind="stable")[:args.k]]
            rows.append({"page": names[page], "links": len(truth[page]),
                         "graft": len(set(ours) & truth[page]),
                         "mentions": len(set(theirs) & truth[page])})
    k = args.k
    for who in ("graft", "mentions"):
        p = np.mean([r[who] / k for r in rows])
        r_ = np.mean([r[who] / r["links"] for r in rows])
        print(f"{who:>9}: precision@{k} {p:.3f}, recall@{k} {r_:.3f} over {len(rows)} pages")
    print(f"{len(pages)} cold pages, {len(rows)} asked; "
          + ("" if reuse else f"cycle {cycle_s:.0f} s; ")
          + f"graft suggest {np.median(seconds):.1f} s per note (median)")
    (args.work / "suggest.json").write_text(json.dumps({"pages": rows, "k": k,
                                                        "cycle_seconds": cycle_s,
                                                        "suggest_seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
