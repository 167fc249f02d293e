"""A Bostrom-scale synthetic graph with text, for the loop at scale (issue 14): the seeded
power-law links of bench/compile.py (3,143,630 particles, 2,705,323 links by default, token
`link`), names for the particles the texts touch, and generated pages for `texts` seeded
particles that have out-links — most real particles carry no text, so most here carry none.

A page names a seeded share of its own link targets (what a curator linked), a few of its
targets' targets that it does not link (associations the graph lacks, the loop's to find),
and filler words. A seeded share of the pages' links to named targets is held out.

Usage: python bench/synthetic_graph.py --out DIR [--particles N] [--links N] [--texts N]
                                       [--holdout 0.1] [--seed 20261206]

Output (graft's ingest formats), in DIR:
  links.parquet     the training links (every link but the held-out ones)
  holdout.jsonl     the held-out links, {"from", "to"}
  particles.jsonl   one row per named particle: `particle`, `name`, and `text` for pages
  graph.json        the counts, and the seconds each part took
Names are unique pseudo-words (a particle's position written in base 40 over syllables), so
text matching finds exactly the particle meant. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYLLABLES = ("ba be bi bo bu da de di do du fa fe fi fo fu ga ge gi go gu ka ke ki ko ku "
             "la le li lo lu ma me mi mo mu na ne ni no nu").split()     # 40
FILLER = ("the of and in on with about from as which that is was for by its also see "
          "part kind use form made called known").split()
NAMED_SHARE = 0.8            # a page names this share of its own targets
UNLINKED = 3                 # ... and up to this many of its targets' targets it does not link
FILLER_PER_NAME = 3          # filler words around each name


def name_of(i: int) -> str:
    """Position i in base 40 over SYLLABLES, at least three syllables: unique per i."""
    out = []
    while True:
        i, r = divmod(i, len(SYLLABLES))
        out.append(SYLLABLES[r])
        if i == 0 and len(out) >= 3:
            return "".join(reversed(out))


def generate(out: Path, particles: int, links: int, texts: int, holdout: float,
             seed: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from bench.compile import graph_table
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    table, ids, src, dst = graph_table(particles, links, token="link")
    seconds["links"] = time.perf_counter() - start
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    adj = sp.csr_array((np.ones(links, dtype=np.int32), (src, dst)),
                       shape=(particles, particles))
    adj.sum_duplicates()
    sources = np.flatnonzero(np.diff(adj.indptr))                      # with out-links
    pages = np.sort(rng.choice(sources, min(texts, len(sources)), replace=False))
    page_rows = adj[pages]                                             # (pages, P)
    two_hop = page_rows @ adj                                          # (pages, P)
    named = set(pages.tolist()) | set(page_rows.indices.tolist())
    held, docs = [], {}
    for row, p in enumerate(pages.tolist()):
        own = page_rows.indices[page_rows.indptr[row]:page_rows.indptr[row + 1]]
        said = own[rng.random(len(own)) < NAMED_SHARE]
        hop = two_hop.indices[two_hop.indptr[row]:two_hop.indptr[row + 1]]
        hop = hop[~np.isin(hop, own) & (hop != p)]
        extra = rng.choice(hop, min(UNLINKED, len(hop)), replace=False) if len(hop) else hop
        named.update(extra.tolist())
        words = [name_of(int(q)) for q in rng.permutation(np.concatenate([said, extra]))]
        text = []
        for w in words:
            text += list(rng.choice(FILLER, FILLER_PER_NAME)) + [w]
        docs[p] = " ".join([name_of(p), "is"] + text) + "."
        held += [(p, int(q)) for q in said if rng.random() < holdout]
    seconds["texts"] = time.perf_counter() - start
    start = time.perf_counter()
    held_set = set(held)
    keep = np.array([(s, d) not in held_set for s, d in zip(src.tolist(), dst.tolist())]) \
        if held else np.ones(links, dtype=bool)
    pq.write_table(table.filter(pa.array(keep)), out / "links.parquet")
    with open(out / "holdout.jsonl", "w") as fh:
        for s, d in held:
            fh.write(json.dumps({"from": ids[s].as_py(), "to": ids[d].as_py()}) + "\n")
    with open(out / "particles.jsonl", "w") as fh:
        for i in sorted(named):
            row = {"particle": ids[i].as_py(), "name": name_of(i)}
            if i in docs:
                row["text"] = docs[i]
            fh.write(json.dumps(row) + "\n")
    seconds["write"] = time.perf_counter() - start
    info = {"particles": particles, "links": int(keep.sum()), "held_out": len(held),
            "named": len(named), "texts": len(docs), "seed": seed,
            "words": int(sum(len(t.split()) for t in docs.values())),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    (out / "graph.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--particles", type=int, default=3_143_630)
    ap.add_argument("--links", type=int, default=2_705_323)
    ap.add_argument("--texts", type=int, default=100_000)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=20261206)
    args = ap.parse_args()
    print(json.dumps(generate(args.out, args.particles, args.links, args.texts, args.holdout,
                              args.seed), indent=2))


if __name__ == "__main__":
    main()
