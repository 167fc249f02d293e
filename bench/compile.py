"""Benchmark: compile time and peak memory per pass at 100k, 1M and Bostrom scale, and the
SVD step beside its peers (sklearn randomized_svd, scipy svds/PROPACK) at equal accuracy.

Usage: python bench/compile.py [--sizes 100k,1M,3.14M] [--peers] [--workdir DIR]

Each size runs in a fresh subprocess (cold start, honest peak RSS): a seeded synthetic
power-law graph (Zipf in/out popularity, 12 named semcons + ⊥ on ~58% of links, like
Bostrom) is ingested (not timed), then compiled (`check_determinism=False`; P-DET is its own
compile). Per step: seconds, CPU seconds of the process (DuckDB's two threads can exceed
wall time; on a machine other jobs load, CPU time is the steadier figure) and the peak
RSS reached while it ran; the total runs from the snapshot to the certificate. Targets:
100k at d = 768 ≤ 30 s and ≤ 2 GB; 1M at d = 300 ≤ 60 s and ≤ 6 GB (issue 3); 3.14M at
d = 300 ≤ 90 s and ≤ 8 GB (issue 14; issue 3 asked 3 min and 12 GB).

Peers (--peers): the embedding's SVD, M = A (the compile's default) at rank d, each method
in its own subprocess (one BLAS thread, peak RSS of that process, address space capped at
PEER_MEMORY, killed after PEER_SECONDS). Accuracy is the energy the rank-d factors capture,
Σσ²/‖M‖²_F (the relative residual is √(1 − that)); a peer is at equal accuracy when it
captures at least graft's energy minus EQUAL_ENERGY. sklearn gets graft's oversampling and
power iterations (then more while it falls short); PROPACK is run to its default tolerance
(it converges to the exact top d, more accurate than either) with its Lanczos basis capped
at 4d vectors (scipy's default 10d needs (m + n)·10d·8 bytes, 24 GB at 1M; 1.5d and 2d did
not converge at 100k).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# d is the 768 / 300 rounded up to a multiple of 2·13 heads (HF needs d % heads == 0
# even with head_dim set, and RoPE an even head size): 780 and 312.
SIZES = {"100k": (100_000, 90_000, 780), "1M": (1_000_000, 860_000, 312),
         "3.14M": (3_143_630, 2_705_323, 312)}
TARGETS = {"100k": (30, 2048), "1M": (60, 6144), "3.14M": (90, 8192)}     # seconds, MiB
PEERS = ("graft", "sklearn:4", "sklearn:7", "propack")
EQUAL_ENERGY = 1e-4          # captured-energy tolerance for "equal accuracy"
PEER_SECONDS = 600           # a peer still running after this is reported as such
PEER_MEMORY = 18 << 30       # address-space cap per peer (the machine has 24 GB, shared)


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


class PeakWatcher:
    """Samples RSS every 20 ms; the compile's `say` lines open and close each step."""

    def __init__(self):
        self.peak, self.top, self.steps, self.current = 0.0, 0.0, {}, None
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            now = rss_mib()
            self.peak, self.top = max(self.peak, now), max(self.top, now)
            time.sleep(0.02)

    def say(self, line: str):
        if line.endswith(" …"):
            self.current, self.peak, self.cpu = line[:-2], rss_mib(), time.process_time()
        elif " done in " in line and self.current:
            seconds = float(line.split(" done in ")[1].split()[0])
            self.steps[self.current] = (seconds, round(time.process_time() - self.cpu, 2),
                                        round(max(self.peak, rss_mib())))


def make_graph(path: Path, particles: int, links: int, seed: int = 20261129) -> None:
    import pyarrow.parquet as pq
    pq.write_table(graph_table(particles, links, seed)[0], path)


def graph_table(particles: int, links: int, seed: int = 20261129, token: str = "boot"):
    """(links as an Arrow table in graft's link columns, particle ids (P,), source and target
    positions (L,) each) of the seeded power-law graph."""
    import pyarrow as pa
    from graph.formats import _hex_column
    rng = np.random.default_rng(seed)
    ids = _hex_column(rng.integers(0, 256, size=(particles, 32), dtype=np.uint8))
    rank = np.arange(1, particles + 1, dtype=np.float64)
    # Power-law popularity with a long tail that still reaches most particles (Bostrom has
    # about one link per particle): P(i) ∝ rank^-0.8 for sources, rank^-1.0 for targets.
    src = rng.permutation(particles)[rng.choice(particles, links, p=_weights(rank, 0.8))]
    dst = rng.choice(particles, links, p=_weights(rank, 1.0))
    semcon = rng.integers(0, 12, links)
    names = np.array([f"relation-{i}" for i in range(12)], dtype=object)
    typed = rng.random(links) >= 0.58
    table = pa.table({
        "neuron": pa.array(np.where(rng.random(links) < 0.5, "alice", "bob")),
        "from": ids.take(pa.array(src)), "to": ids.take(pa.array(dst)),
        "token": pa.array([token] * links), "amount": pa.array(rng.integers(1, 1000, links)),
        "valence": pa.array(np.ones(links, np.int8)), "time": pa.array(np.arange(links)),
        "semcon": pa.array(np.where(typed, names[semcon], None)),
    })
    return table, ids, src, dst


def _weights(rank: np.ndarray, exponent: float) -> np.ndarray:
    w = rank ** -exponent
    return w / w.sum()


def run_size(label: str, workdir: Path) -> dict:
    from compiler.compile import compile_snapshot
    from compiler.types import CompileConfig
    from graph.snapshot import take_snapshot
    from graph.store import Store
    _, _, d = SIZES[label]
    db = prepare(label, workdir)
    watcher = PeakWatcher()
    out = workdir / f"model-{label}"
    start, cpu = time.perf_counter(), time.process_time()
    with Store(db) as store:
        snap = take_snapshot(store)
        cert = compile_snapshot(store, snap, out, CompileConfig(d=d, check_determinism=False),
                                say=watcher.say)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    record = json.loads((out / "compile.json").read_text())
    return {"label": label, "particles": record["vocab"]["particles"], "d": d,
            "layers": record["arch"]["used"]["layers"], "heads": record["arch"]["used"]["heads"],
            "total_s": round(total, 1), "cpu_s": round(cpu, 1), "peak_mib": round(watcher.top),
            "steps": watcher.steps, "load": os.getloadavg()[0],
            "p_attn_min": cert["P-ATTN"].get("min"), "p_embed": cert["P-EMBED"]["value"]}


def prepare(label: str, workdir: Path) -> Path:
    """The seeded graph ingested into a store (made once per workdir), and its snapshot."""
    from graph.ingest import ingest_links
    from graph.snapshot import take_snapshot
    from graph.store import Store
    particles, links, _ = SIZES[label]
    data = workdir / f"graph-{label}.parquet"
    if not data.exists():
        make_graph(data, particles, links)
    db = workdir / f"store-{label}.duckdb"
    if not db.exists():
        with Store(db) as store:
            ingest_links(store, [data])
            take_snapshot(store)
    return db


def save_matrix(label: str, workdir: Path) -> dict:
    """M = A of the size's snapshot, as the embedding pass gets it, for the peers."""
    import scipy.sparse as sp
    from graph.snapshot import adjacency, take_snapshot
    from graph.store import Store
    with Store(prepare(label, workdir)) as store:
        m = adjacency(store, take_snapshot(store)).matrix
    sp.save_npz(workdir / f"matrix-{label}.npz", sp.csr_matrix(m))
    return {"shape": list(m.shape), "nnz": int(m.nnz)}


def run_peer(method: str, label: str, workdir: Path) -> dict:
    """One SVD of M at rank d in this process: seconds, peak RSS, captured energy."""
    import scipy.sparse as sp
    from threadpoolctl import threadpool_limits
    resource.setrlimit(resource.RLIMIT_AS, (PEER_MEMORY, PEER_MEMORY))
    _, _, d = SIZES[label]
    m = sp.csr_array(sp.load_npz(workdir / f"matrix-{label}.npz")).astype(np.float64)
    name, _, arg = method.partition(":")
    if name == "sklearn":
        from sklearn.utils.extmath import randomized_svd as sk_svd
    import scipy.sparse.linalg as sla
    from compiler import linalg
    watcher = PeakWatcher()
    base = rss_mib()
    start = time.perf_counter()
    with threadpool_limits(1):
        if name == "graft":
            s = linalg.randomized_svd(m, d, seed=1)[1]       # defaults: oversample 10, q = 4
            params = "oversample=10, power_iters=4"
        elif name == "sklearn":
            s = sk_svd(m, d, n_oversamples=10, n_iter=int(arg), random_state=1)[1]
            params = f"n_oversamples=10, n_iter={arg}"
        else:
            s = sla.svds(m, k=d, solver="propack", return_singular_vectors="u",
                         maxiter=4 * d, random_state=1)[1]
            params = f"tol=0 (default), kmax={4 * d}"
    seconds = time.perf_counter() - start
    energy = float((np.asarray(s, np.float64) ** 2).sum() / (m.data ** 2).sum())
    return {"method": method, "params": params, "seconds": round(seconds, 1),
            "peak_mib": round(watcher.top), "base_mib": round(base), "energy": energy,
            "residual": float(np.sqrt(max(1.0 - energy, 0.0)))}


def peers(label: str, workdir: Path) -> list[dict]:
    """Every peer in its own subprocess; sklearn at n_iter = 7 only when 4 falls short."""
    rows, graft = [], float("nan")
    for method in PEERS:
        if method == "sklearn:7" and ("failed" in rows[-1] or
                                      rows[-1]["energy"] >= graft - EQUAL_ENERGY):
            continue
        row = _child(["peer:" + method, label], workdir, PEER_SECONDS)
        row.setdefault("method", method)
        rows.append(row)
        if method == "graft":
            graft = row.get("energy", float("nan"))
    for row in rows:
        if "energy" in row:
            row["equal"] = row["energy"] >= graft - EQUAL_ENERGY
    return rows


def _child(args: list[str], workdir: Path, timeout: float | None) -> dict:
    """Run `--one ARGS` in a fresh interpreter; its last stdout line is JSON."""
    try:
        proc = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--one",
                               *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish in {timeout:.0f} s"}
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        memory = "MemoryError" in proc.stderr or proc.returncode in (-9, 137)
        return {"failed": (f"out of memory (address space capped at {PEER_MEMORY >> 30} GiB)"
                           if memory else tail[0][:200])}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M,3.14M")
    parser.add_argument("--peers", action="store_true", help="also time the SVD peers")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="graft-compile-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        kind, label = args.one
        result = (run_size(label, workdir) if kind == "compile" else
                  save_matrix(label, workdir) if kind == "matrix" else
                  run_peer(kind.split(":", 1)[1], label, workdir))
        print(json.dumps(result))
        return
    for label in args.sizes.split(","):
        matrix = _child(["matrix", label], workdir, None)       # ingest outside the timing
        if "failed" in matrix:
            print(f"{label}: could not prepare the graph: {matrix['failed']}")
            continue
        result = _child(["compile", label], workdir, None)
        if "failed" in result:
            print(f"{label} compile: failed: {result['failed']}")
        else:
            print_compile(result)
        if args.peers:
            print_peers(label, matrix, peers(label, workdir))
    print(f"\nsame machine, same run; workdir {workdir}")


def print_compile(r: dict) -> None:
    seconds, mib = TARGETS[r["label"]]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"\n{r['label']}: {r['particles']:,} linked particles, d={r['d']}, heads={r['heads']}, "
          f"layers={r['layers']}: total {r['total_s']} s ({verdict(r['total_s'] <= seconds)}: "
          f"≤ {seconds} s; CPU {r['cpu_s']} s), peak {r['peak_mib']} MiB "
          f"({verdict(r['peak_mib'] <= mib)}: ≤ {mib}); load {r['load']:.1f} at the end "
          f"(P-ATTN min {r['p_attn_min']:.3f}, P-EMBED {r['p_embed']:.3f})")
    print(f"  {'step':<14} {'seconds':>8} {'CPU s':>8} {'peak MiB':>9}")
    for name, (secs, cpu, peak) in r["steps"].items():
        print(f"  {name:<14} {secs:>8.2f} {cpu:>8.2f} {peak:>9}")


def print_peers(label: str, info: dict, rows: list[dict]) -> None:
    print(f"\n{label} SVD step: M {info['shape'][0]:,}² with {info['nnz']:,} entries, "
          f"rank {SIZES[label][2]}; equal accuracy = energy ≥ graft's − {EQUAL_ENERGY:g}")
    print(f"  {'method':<24} {'parameters':<30} {'seconds':>8} {'peak MiB':>9} "
          f"{'energy':>9} {'residual':>9}  equal")
    for r in rows:
        if "failed" in r:
            print(f"  {r['method']:<24} {'':<30} {r['failed']}")
            continue
        print(f"  {r['method']:<24} {r['params']:<30} {r['seconds']:>8.1f} {r['peak_mib']:>9} "
              f"{r['energy']:>9.6f} {r['residual']:>9.6f}  {'yes' if r['equal'] else 'no'}")


if __name__ == "__main__":
    main()
