"""Cold-start pages at `--accept-precision` (issue 13): a seeded 5% of the cyberwiki pages
with ≥ 3 links lose all their out-links; one `graft cycle` accepts what its calibrated
confidence allows; the accepted links are scored against the removed ones.

Prints, per fold setting: proposals accepted, how many of them from the cold pages, the
estimated precision (mean confidence), the measured precision against the removed links
(a lower bound: cyberwiki lacks links beyond these), the recall of the removed links, and
the cycle's eval of them (graft against unlinked mentions).

Usage: python bench/cold_start.py --work W [--seed 1] [--precision 0.8]
       [--fold-pages 0,0.05] [--per-source 5]                          (needs ../shared)
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph.store import Store  # noqa: E402

CYBERWIKI = ROOT.parent / "shared" / "data" / "cyberwiki"


def run(work: Path, seed: int, precision: float, fold_pages: float,
        per_source: int = 5) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, log = work / "g.duckdb", open(work / "log.txt", "w")

    def graft(*a):
        subprocess.run(["graft", "--db", str(db), *a], check=True, cwd=ROOT, stdout=log,
                       stderr=subprocess.STDOUT)

    graft("split-holdout", str(CYBERWIKI / "train_links.jsonl"), "--cold-pages", "0.05",
          "--seed", str(seed), "--token", "link", "--train", str(work / "train.jsonl"),
          "--holdout", str(work / "cold.jsonl"))
    graft("ingest", "particles", str(CYBERWIKI / "particles.jsonl"))
    graft("ingest", "links", str(work / "train.jsonl"))
    graft("cycle", "--cycles", "1", "--out", str(work / "out"), "--corpus",
          str(CYBERWIKI / "corpus.txt"), "--holdout", str(work / "cold.jsonl"),
          "--accept-precision", str(precision), "--fold-pages", str(fold_pages),
          "--max-steps", "150", "--top-k", "500", "--per-source", str(per_source))
    removed = {(r["from"], r["to"]) for r in map(json.loads,
                                                 (work / "cold.jsonl").read_text().splitlines())}
    pages = {s for s, _ in removed}
    from loop.cycle import cycle_metrics
    with Store(db, create=False, read_only=True) as store:
        accepted = store.query("SELECT src, dst, confidence FROM proposals "
                               "WHERE status = 'accepted'")
        cold_props = store.query("SELECT src, dst, confidence FROM proposals")
        row = cycle_metrics(store)[0]
        cal = json.loads((work / "out" / "cycle-1" / "ranker.json").read_text())["fit"][
            "calibration"]
    hits = sum((s, d) in removed for s, d, _ in accepted)
    on_cold = [(s, d, c) for s, d, c in cold_props if s in pages]
    return {"fold_pages": fold_pages, "accepted": len(accepted),
            "from_cold_pages": sum(s in pages for s, _, _ in accepted),
            "estimated": round(sum(c for *_, c in accepted) / len(accepted), 3) if accepted
            else None,
            "measured": round(hits / len(accepted), 3) if accepted else None,
            "recall": round(hits / len(removed), 3), "removed": len(removed),
            "pages": len(pages), "cold_map": "cold" in cal,
            "cold_page_proposals": len(on_cold),
            "cold_page_proposals_true": sum((s, d) in removed for s, d, _ in on_cold),
            "cold_page_confidence": round(sum(c for *_, c in on_cold) / len(on_cold), 3)
            if on_cold else None,
            "eval_mrr": row.get("eval_mrr"), "mentions_mrr": row.get("eval_mentions_mrr")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", type=float, default=0.8)
    ap.add_argument("--fold-pages", default="0,0.05")
    ap.add_argument("--per-source", type=int, default=5, help="`graft cycle --per-source`: "
                    "proposals one page may get (5 caps recall at 200 of the ~610 removed)")
    args = ap.parse_args()
    if not CYBERWIKI.is_dir():
        sys.exit(f"{CYBERWIKI} missing: this bench needs ../shared")
    rows = [run(args.work / f"fold-pages-{f}", args.seed, args.precision, float(f),
                args.per_source)
            for f in args.fold_pages.split(",")]
    print(f"| --fold-pages | accepted | from cold pages | estimated | measured | recall of "
          f"{rows[0]['removed']} removed links ({rows[0]['pages']} pages) | cold map | "
          "cold pages' proposals (true) | their mean confidence | eval MRR | mentions |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fold_pages']} | {r['accepted']} | {r['from_cold_pages']} | "
              f"{r['estimated']} | {r['measured']} | {r['recall']} | {r['cold_map']} | "
              f"{r['cold_page_proposals']} ({r['cold_page_proposals_true']}) | "
              f"{r['cold_page_confidence']} | {r['eval_mrr']} | {r['mentions_mrr']} |")
    (args.work / "cold_start.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
