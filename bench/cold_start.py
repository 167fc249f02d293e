"""Cold-start pages at `--accept-precision` (issue 13): a seeded 5% of the cyberwiki pages
with ≥ 3 links lose all their out-links and arrive as new notes — the store runs one cycle
without them, then their text is ingested (no links), and the next `graft cycle` accepts
what its calibrated confidence allows; the links accepted in that cycle are scored against
the removed ones.

Prints, per fold setting: proposals accepted in the second cycle, how many of them from the
new notes, the estimated precision (mean confidence), the measured precision against the
removed links (a lower bound: cyberwiki lacks links beyond these, and the rest of the
graph's proposals have none hidden), the same for the new notes' own accepted links, the
recall of the removed links, and the cycle's eval of them (graft against unlinked mentions).

Usage: python bench/cold_start.py --work W [--seed 1] [--precision 0.8]
       [--fold-pages auto,0] [--per-source 20]                         (needs ../shared)
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


def run(work: Path, seed: int, precision: float, fold_pages: str,
        per_source: int = 20, more: tuple[str, ...] = ()) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, log = work / "g.duckdb", open(work / "log.txt", "w")

    def graft(*a):
        subprocess.run(["graft", "--db", str(db), *a], check=True, cwd=ROOT, stdout=log,
                       stderr=subprocess.STDOUT)

    graft("split-holdout", str(CYBERWIKI / "train_links.jsonl"), "--cold-pages", "0.05",
          "--seed", str(seed), "--token", "link", "--train", str(work / "train.jsonl"),
          "--holdout", str(work / "cold.jsonl"))
    removed = {(r["from"], r["to"]) for r in map(json.loads,
                                                 (work / "cold.jsonl").read_text().splitlines())}
    pages = {s for s, _ in removed}
    # split("\n"), not splitlines(): texts hold U+2028 and other line breaks of their own
    rows = (CYBERWIKI / "particles.jsonl").read_text(encoding="utf-8").split("\n")
    later = [r for r in rows if r.strip() and json.loads(r)["particle"] in pages]
    (work / "particles_old.jsonl").write_text(
        "".join(r + "\n" for r in rows if r.strip() and json.loads(r)["particle"] not in pages),
        encoding="utf-8")
    (work / "particles_new.jsonl").write_text("".join(r + "\n" for r in later), encoding="utf-8")
    cycle = ["cycle", "--out", str(work / "out"), "--corpus", str(CYBERWIKI / "corpus.txt"),
             "--accept-precision", str(precision), "--max-steps", "150", "--top-k", "500",
             "--per-source", str(per_source), *more]
    if fold_pages != "auto":
        cycle += ["--fold-pages", fold_pages]
    graft("ingest", "particles", str(work / "particles_old.jsonl"))
    graft("ingest", "links", str(work / "train.jsonl"))
    graft(*cycle, "--cycles", "1")                          # the graph before the notes
    graft("ingest", "particles", str(work / "particles_new.jsonl"))     # text, no links
    graft(*cycle, "--cycles", "2", "--holdout", str(work / "cold.jsonl"))
    from loop.cycle import cycle_metrics
    with Store(db, create=False, read_only=True) as store:
        accepted = store.query("SELECT src, dst, confidence FROM proposals "
                               "WHERE status = 'accepted' AND cycle = 2")
        props = store.query("SELECT src, dst, confidence FROM proposals WHERE cycle = 2")
        row = cycle_metrics(store)[1]
        fit = json.loads(store.query("SELECT CAST(detail AS VARCHAR) FROM cycle_steps "
                                     "WHERE cycle = 2 AND step = 'fit'")[0][0])
        cal = json.loads((work / "out" / "cycle-2" / "ranker.json").read_text())["fit"][
            "calibration"]
    hits = sum((s, d) in removed for s, d, _ in accepted)
    mine = [(s, d, c) for s, d, c in accepted if s in pages]
    on_new = [(s, d, c) for s, d, c in props if s in pages]

    def share(k, n):
        return round(k / n, 3) if n else None

    return {"fold_pages": fold_pages, "fold_pages_used": fit.get("fold_pages"),
            "accepted": len(accepted),
            "estimated": share(sum(c for *_, c in accepted), len(accepted)),
            "measured": share(hits, len(accepted)),
            "from_new_notes": len(mine),
            "new_estimated": share(sum(c for *_, c in mine), len(mine)),
            "new_measured": share(sum((s, d) in removed for s, d, _ in mine), len(mine)),
            "recall": round(hits / len(removed), 3), "removed": len(removed),
            "pages": len(pages), "new_map": "new" in cal,
            "new_map_links": (cal.get("new") or {}).get("positives"),
            "new_note_proposals": len(on_new),
            "new_note_proposals_true": sum((s, d) in removed for s, d, _ in on_new),
            "eval_mrr": row.get("eval_mrr"), "mentions_mrr": row.get("eval_mentions_mrr")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", type=float, default=0.8)
    ap.add_argument("--fold-pages", default="auto,0", help="comma-separated `graft cycle "
                    "--fold-pages` settings, each its own run (auto: the cycle's default)")
    ap.add_argument("--per-source", type=int, default=20, help="`graft cycle --per-source`: "
                    "proposals one page may get (5 caps recall at 200 of the ~610 removed)")
    ap.add_argument("cycle_args", nargs="*", help="more `graft cycle` flags (after --)")
    args = ap.parse_args()
    if not CYBERWIKI.is_dir():
        sys.exit(f"{CYBERWIKI} missing: this bench needs ../shared")
    rows = [run(args.work / f"fold-pages-{f}", args.seed, args.precision, f, args.per_source,
                tuple(args.cycle_args)) for f in args.fold_pages.split(",")]
    print(f"{rows[0]['removed']} links removed from {rows[0]['pages']} pages; the second "
          f"cycle's links accepted at --accept-precision {args.precision}:\n"
          "| --fold-pages (used) | new-note map (its true links) | accepted | estimated | "
          "measured | from new notes | their estimate | measured | recall | new notes' "
          "proposals (true) | eval MRR | mentions |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fold_pages']} ({r['fold_pages_used']}) | {r['new_map']} "
              f"({r['new_map_links']}) | {r['accepted']} | {r['estimated']} | {r['measured']} | "
              f"{r['from_new_notes']} | {r['new_estimated']} | {r['new_measured']} | "
              f"{r['recall']} | {r['new_note_proposals']} ({r['new_note_proposals_true']}) | "
              f"{r['eval_mrr']} | {r['mentions_mrr']} |")
    (args.work / "cold_start.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
