"""Benchmark: graft's validated ingest against a bare DuckDB load of the same file.

Usage: python bench/ingest.py [--links 1000000] [--repeats 3] [--workdir DIR]

Each measurement runs in a fresh subprocess (cold caches in-process, honest peak RSS) and
writes into a fresh .duckdb file, as graft does. Prints one table: bare DuckDB, graft, and
the ratio bare/graft (target >= 0.5), plus snapshot -> CSR time (target < 5 s at 1M links).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_files(workdir: Path, n_links: int, seed: int = 20261129) -> dict[str, Path]:
    """A seeded power-law graph: Zipf-popular sources and targets over n/5 particles."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from graph.formats import _hex_column
    rng = np.random.default_rng(seed)
    n_particles = max(n_links // 5, 10)
    digests = rng.integers(0, 256, size=(n_particles, 32), dtype=np.uint8)
    ids = _hex_column(digests)
    src = np.minimum(rng.zipf(1.6, n_links) - 1, n_particles - 1)
    dst = np.minimum(rng.zipf(1.4, n_links) - 1, n_particles - 1)
    table = pa.table({
        "neuron": pa.array(np.where(rng.random(n_links) < 0.5, "alice", "bob")),
        "from": ids.take(pa.array(rng.permutation(n_particles)[src])),
        "to": ids.take(pa.array(dst)),
        "token": pa.array(np.where(rng.random(n_links) < 0.9, "boot", "hydrogen")),
        "amount": pa.array(rng.integers(1, 10**12, n_links)),
        "valence": pa.array(np.where(rng.random(n_links) < 0.95, 1, -1).astype(np.int8)),
        "time": pa.array(np.sort(rng.integers(0, 10**7, n_links))),
    })
    files = {"parquet": workdir / "links.parquet", "jsonl": workdir / "links.jsonl"}
    pq.write_table(table, files["parquet"])
    con = duckdb.connect()
    con.register("t", table)
    con.execute(f"COPY t TO '{files['jsonl']}' (FORMAT json)").fetchall()
    return files


def run_one(mode: str, path: str, db: str) -> dict:
    """One measurement in this process: the work itself, after imports; seconds and peak RSS."""
    import duckdb
    from graph.ingest import ingest_links
    from graph.snapshot import adjacency, take_snapshot
    from graph.store import Store
    if mode == "csr":  # time the snapshot hash too, not just a lookup of an earlier one
        with Store(db) as store:
            store.execute("DELETE FROM snapshots")
    start = time.perf_counter()
    if mode.startswith("bare"):
        reader = "read_parquet" if path.endswith(".parquet") else "read_json"
        con = duckdb.connect(db)
        con.execute(f"CREATE TABLE links AS SELECT * FROM {reader}(?)", [path]).fetchall()
        con.close()
    elif mode == "graft":
        with Store(db) as store:
            ingest_links(store, [path])
    elif mode == "csr":
        with Store(db) as store:
            adj = adjacency(store, take_snapshot(store))
            assert adj.matrix.nnz > 0
    seconds = time.perf_counter() - start
    peak = _vm_hwm_mib()
    return {"seconds": seconds, "peak_mib": peak}


def _vm_hwm_mib() -> float:
    """Peak RSS of this process image. (ru_maxrss is not used: Linux carries the parent's
    peak across fork/exec, so every child would report the data generator's footprint.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(mode: str, path: Path, workdir: Path, repeats: int, keep_db: Path | None = None) -> dict:
    runs = []
    for i in range(repeats):
        db = keep_db or workdir / f"{mode}-{path.suffix[1:]}-{i}.duckdb"
        if keep_db is None:
            for f in (db, Path(str(db) + ".wal")):
                f.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, __file__, "--one", mode, str(path), str(db)],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": statistics.median(r["seconds"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--one", nargs=3, metavar=("MODE", "PATH", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="graft-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    files = make_files(workdir, args.links)
    print(f"synthetic power-law graph: {args.links:,} links, generated in {time.perf_counter() - t:.1f} s "
          f"({workdir})\n")
    rows = []
    for fmt in ("parquet", "jsonl"):
        bare = measure(f"bare-{fmt}", files[fmt], workdir, args.repeats)
        ours = measure("graft", files[fmt], workdir, args.repeats)
        rows.append((fmt, bare, ours))
    db = workdir / "csr.duckdb"
    for f in (db, Path(str(db) + ".wal")):
        f.unlink(missing_ok=True)
    measure("graft", files["parquet"], workdir, 1, keep_db=db)
    csr = measure("csr", files["parquet"], workdir, args.repeats, keep_db=db)
    print(f"{'ingest ' + format(args.links, ','):<22} {'bare DuckDB s':>14} {'graft s':>9} "
          f"{'ratio':>7} {'graft links/s':>14} {'bare MiB':>9} {'graft MiB':>10}")
    for fmt, bare, ours in rows:
        print(f"{fmt + ' -> .duckdb':<22} {bare['seconds']:>14.2f} {ours['seconds']:>9.2f} "
              f"{bare['seconds'] / ours['seconds']:>7.2f} {args.links / ours['seconds']:>14,.0f} "
              f"{bare['peak_mib']:>9.0f} {ours['peak_mib']:>10.0f}")
    print(f"\nsnapshot (hash) + CSR export of {args.links:,} links: {csr['seconds']:.2f} s "
          f"(peak {csr['peak_mib']:.0f} MiB; target < 5 s)")
    print("ratio = bare seconds / graft seconds (target >= 0.5); medians of "
          f"{args.repeats} fresh processes; same machine, same run.")


if __name__ == "__main__":
    main()
