"""Warm-started recompiles (issue 14): after 1% more links, a compile that starts from the
previous checkpoint (`graft compile --warm-start`) beside a cold compile of the same
snapshot, pass by pass, in one run.

The graph is bench/compile.py's seeded synthetic power-law graph at one of its sizes; the
1% are drawn from the same distribution with another seed. Prints seconds per pass for the
cold and the warm compile, P-EMBED of both (the relative residual of the rank-d factor) and
their certificates. Target: the warm compile ≤ 25% of the cold one, P-EMBED within 1e-3.

Usage: python bench/warm_start.py [--size 100k|1M|3.14M] [--work DIR] [--change 0.01]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compile import SIZES, make_graph  # noqa: E402


def _more_links(base: Path, out: Path, share: float, seed: int = 7) -> None:
    """`share` × the links of `base` more: seeded rows of it with their targets shuffled
    (new pairs between the graph's own particles, in its popularity), later in time."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pq.read_table(base)
    rng = np.random.default_rng(seed)
    rows = table.take(pa.array(rng.choice(table.num_rows, max(1, int(share * table.num_rows)),
                                          replace=False)))
    to = rows.column("to").take(pa.array(rng.permutation(rows.num_rows)))
    rows = rows.set_column(rows.schema.get_field_index("to"), "to", to)
    rows = rows.set_column(rows.schema.get_field_index("time"), "time",
                           pa.array(np.arange(rows.num_rows) + table.num_rows))
    pq.write_table(rows, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="100k", choices=list(SIZES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-warm"))
    ap.add_argument("--change", type=float, default=0.01, help="share of links added")
    ap.add_argument("--warm-power-iters", type=int, default=1)
    args = ap.parse_args()
    from compiler.compile import compile_snapshot
    from compiler.types import CompileConfig
    from graph.ingest import ingest_links
    from graph.snapshot import take_snapshot
    from graph.store import Store
    particles, links, d = SIZES[args.size]
    args.work.mkdir(parents=True, exist_ok=True)
    base, extra = args.work / f"base-{args.size}.parquet", args.work / f"extra-{args.size}.parquet"
    if not base.exists():
        make_graph(base, particles, links)
    _more_links(base, extra, args.change)
    db = args.work / f"warm-{args.size}.duckdb"
    db.unlink(missing_ok=True)
    cfg = CompileConfig(d=d, check_determinism=False)
    timings = {}
    with Store(db) as store:
        ingest_links(store, [base])
        first = args.work / f"first-{args.size}"
        compile_snapshot(store, take_snapshot(store), first, cfg)
        ingest_links(store, [extra])
        snap = take_snapshot(store)
        certs = {}
        for name, c in (("cold", cfg), ("warm", CompileConfig(
                d=d, check_determinism=False, warm_start=str(first),
                warm_power_iters=args.warm_power_iters))):
            start = time.perf_counter()
            certs[name] = compile_snapshot(store, snap, args.work / f"{name}-{args.size}", c)
            timings[name] = time.perf_counter() - start
    passes = {name: json.loads((args.work / f"{name}-{args.size}" / "compile.json").read_text())
              ["timings"] for name in ("cold", "warm")}
    print(f"{args.size}: {particles} particles, {links} links + {int(args.change * links)}, "
          f"d = {d}; warm start from the compile before the change, "
          f"{args.warm_power_iters} power iteration(s) against 4\n")
    print("| pass | cold s | warm s |\n|---|---|---|")
    for step in sorted(set(passes["cold"]) | set(passes["warm"]),
                       key=lambda s: -passes["cold"].get(s, 0)):
        print(f"| {step} | {passes['cold'].get(step, 0):.2f} | {passes['warm'].get(step, 0):.2f} |")
    print(f"| **total (wall)** | **{timings['cold']:.1f}** | **{timings['warm']:.1f}** |\n")
    ratio = timings["warm"] / timings["cold"]
    pe = {k: v["P-EMBED"]["value"] for k, v in certs.items()}
    print(f"warm / cold = {ratio:.2f} (target ≤ 0.25); P-EMBED cold {pe['cold']:.6f}, warm "
          f"{pe['warm']:.6f} (|Δ| {abs(pe['cold'] - pe['warm']):.2e}, target ≤ 1e-3); "
          f"certificates: cold {certs['cold']['pass']}, warm {certs['warm']['pass']}")


if __name__ == "__main__":
    main()
