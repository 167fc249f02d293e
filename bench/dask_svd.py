"""The embedding SVD on a Dask cluster beside the in-process one (issue 14, "past one
machine"), in one run.

On bench/compile.py's seeded synthetic power-law graph (its adjacency, as the embedding pass
gets it), the rank-d randomized SVD with 4 power iterations:
- in process (compiler/linalg.py; 1 BLAS thread, 1 and 2 block workers),
- on a LocalCluster of 1 and of 2 single-threaded worker processes (compiler/distributed.py;
  a grid of 4 × 4 blocks written as Parquet by DuckDB, so both give the same bits).
Prints wall seconds, the largest relative difference of the singular values from the
in-process ones, and peak memory: the driver's RSS and each worker's (sampled every 20 ms).

Usage: python bench/dask_svd.py [--size 100k|1M] [--d 128] [--work DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compile import PeakWatcher, prepare  # noqa: E402


def _watch(dask_worker) -> None:
    """Sample this worker's RSS every 20 ms into dask_worker.graft_peak (MiB). ru_maxrss
    will not do: a worker process reports the peak of the process it was forked from."""
    import threading

    import psutil
    me = psutil.Process()
    dask_worker.graft_peak = me.memory_info().rss / 2**20

    def run():
        while True:
            dask_worker.graft_peak = max(dask_worker.graft_peak, me.memory_info().rss / 2**20)
            time.sleep(0.02)
    threading.Thread(target=run, daemon=True).start()


def _peak(dask_worker) -> float:
    return dask_worker.graft_peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="100k", choices=["100k", "1M"])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--parts", type=int, default=4, help="the grid's blocks a side")
    ap.add_argument("--work", type=Path, default=Path("/tmp/graft-dask"))
    args = ap.parse_args()
    from compiler import distributed, linalg
    from graph.snapshot import adjacency, take_snapshot
    from graph.store import Store
    args.work.mkdir(parents=True, exist_ok=True)
    with Store(prepare(args.size, args.work)) as store:
        m = adjacency(store, take_snapshot(store)).matrix
    print(f"{args.size}: {m.shape[0]:,} × {m.shape[1]:,}, {m.nnz:,} entries, d = {args.d}",
          flush=True)
    watcher = PeakWatcher()
    rows, ref = [], None
    for workers in (1, 2):
        watcher.top = 0.0
        start = time.perf_counter()
        _, s, _ = linalg.randomized_svd(m, args.d, seed=1, power_iters=4, workers=workers)
        ref = s if ref is None else ref
        rows.append((f"in process, {workers} block worker(s)", time.perf_counter() - start,
                     float(np.max(np.abs(s - ref)) / ref[0]), watcher.top, []))
        print(rows[-1], flush=True)
    for workers in (1, 2):
        with distributed.session(f"local:{workers}") as client:
            client.run(_watch)
            watcher.top = 0.0
            start = time.perf_counter()
            _, s, _ = distributed.randomized_svd(m, args.d, client, seed=1, power_iters=4,
                                                 parts=args.parts, folder=args.work / "parts")
            seconds = time.perf_counter() - start
            peaks = sorted(client.run(_peak).values())
        rows.append((f"Dask LocalCluster, {workers} worker(s), {args.parts} × {args.parts} blocks",
                     seconds, float(np.max(np.abs(s - ref)) / ref[0]), watcher.top, peaks))
        print(rows[-1], flush=True)
    shutil.rmtree(args.work / "parts", ignore_errors=True)
    print("\n| path | seconds | max \\|σ − σ_in-process\\| / σ₁ | driver peak MiB | "
          "worker peak MiB |\n|---|---|---|---|---|")
    for name, seconds, diff, driver, peaks in rows:
        print(f"| {name} | {seconds:.1f} | {diff:.1e} | {driver:.0f} | "
              f"{', '.join(f'{p:.0f}' for p in peaks) or '–'} |")


if __name__ == "__main__":
    main()
