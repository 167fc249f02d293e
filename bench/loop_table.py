"""The per-cycle eval table of a `graft cycle --holdout` run, beside the baselines' figures.

Usage: python bench/loop_table.py --db STORE [--baselines baselines.json]
(bench/loop_cyberwiki.sh writes baselines.json with `graft eval --json`). Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph import sql_loop  # noqa: E402
from graph.store import Store  # noqa: E402
from loop.cycle import STEPS, cycle_metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", required=True)
    ap.add_argument("--baselines", help="`graft eval --json` output of the baselines")
    args = ap.parse_args()
    with Store(args.db, create=False, read_only=True) as store:
        rows = cycle_metrics(store)
        journal = store.query(sql_loop.STEPS_ALL)
    evals = {c: json.loads(d)["eval"] for c, step, d, _ in journal if step == "eval"}
    seconds: dict[int, dict[str, float]] = {}
    peak: dict[int, dict[str, float]] = {}       # the process's peak so far, after each step
    for c, step, d, _ in journal:
        detail = json.loads(d)
        seconds.setdefault(c, {})[step] = detail.get("seconds", 0.0)
        peak.setdefault(c, {})[step] = detail.get("peak_rss_gb")
    print("| cycle | approx. error | … first position | … rest | KL(tuned ‖ compiled) first | "
          "raw KL | d | fold MRR | proposals | accepted | estimated precision | precision | "
          "wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cycle']} | {_f(r.get('approximation_error'))} | "
              f"{_f(r.get('approximation_error_first'))} | "
              f"{_f(r.get('approximation_error_rest'))} | {_f(r.get('kl_tuned_compiled'))} | "
              f"{_f(r.get('kl_tuned_compiled_raw'))} | "
              f"{r.get('d', '–')} | {_f(r.get('fold_mrr'))} | {r.get('proposals', '–')} | "
              f"{r.get('accepted', '–')} | {_f(r.get('estimated_precision'), 2)} | "
              f"{_f(r.get('precision'), 2)} | {r['wall_seconds']:.0f} |")
    steps = [s for s in STEPS if any(s in by for by in seconds.values())]
    print("\n| cycle | " + " | ".join(f"{s} s" for s in steps) + " | all s |\n"
          + "|---" * (len(steps) + 2) + "|")
    for c, by in sorted(seconds.items()):
        print(f"| {c} | " + " | ".join(_f(by.get(s), 1) for s in steps)
              + f" | {sum(by.values()):.1f} |")
        if any(v is not None for v in peak[c].values()):
            print(f"| {c}: peak GB so far | " + " | ".join(_f(peak[c].get(s), 1) for s in steps)
                  + " | |")
    print("\n| method | MRR | Hits@1 | Hits@10 | AUC | n |\n|---|---|---|---|---|---|")
    for cycle, result in sorted(evals.items()):
        for name, m in result["methods"].items():
            print(f"| {name}, cycle {cycle} | {_f(m['mrr'])} | {_f(m['hits1'])} | "
                  f"{_f(m['hits10'])} | {_f(m['auc'])} | {result['n']} |")
    if args.baselines:
        base = json.loads(Path(args.baselines).read_text())
        for name, m in base["methods"].items():
            print(f"| {name} | {_f(m['mrr'])} | {_f(m['hits1'])} | {_f(m['hits10'])} | "
                  f"{_f(m['auc'])} | {base['n']} |")
    if any(r.get("ablation") for r in rows):
        print("\n| cycle | ranker features | MRR | Hits@1 | Hits@10 | AUC | tuned weights |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            for name, m in (r.get("ablation") or {}).items():
                tuned = ", ".join(f"{f} {w:+.3f}" for f, w in m["weights"].items()
                                  if f.startswith("tuned")) or "–"
                print(f"| {r['cycle']} | {name} | {_f(m['mrr'])} | {_f(m['hits1'])} | "
                      f"{_f(m['hits10'])} | {_f(m['auc'])} | {tuned} |")


def _f(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
