"""The embedding SVD on a Dask cluster: for graphs whose SVD blocks outgrow one machine.

What outgrows a machine first is not the links but the dense blocks of the randomized SVD:
at 3M particles and d = 300 each (V, k + oversample) block is 3.7 GB in float32, and the
range finder holds three of them. Here those blocks live on Dask workers, split by rows:

- the matrix is cut into a grid of blocks B_ij, written by DuckDB to Parquet, one partition
  per block (`write_partitions`); the workers read them into sparse matrices and keep them
  (persisted) for the whole SVD;
- Y = B Z and Z = Bᵀ Y are dask arrays chunked like the grid's rows and columns: output
  chunk i is Σ_j B_ij Z_j (j in order), so a task holds one block and two chunks, never a
  whole (V, l) block, and memory per worker falls as workers are added;
- every block is orthonormalised by Cholesky-QR twice on its Gram (a small
  reduction), dask.array's tall-skinny QR where the block is rank-deficient.

The maths is the in-process range finder's (compiler/linalg.py): the same Halko–Martinsson–
Tropp sketch with `power_iters` subspace iterations, QR after every product, then the SVD of
the small l × l factor. The arithmetic is float64 and one BLAS thread per task, so the result
depends on the snapshot, the number of row blocks and the seed — not on how many workers
run them (each block's work and each sum's order are fixed by the grid). Singular values
agree with the in-process float32 path to its rounding (tests/compiler/test_distributed.py).

The rest of the compile stays in process: it holds the sparse matrix (tens of MB at 3M
particles) and, at the end, U and V (what the checkpoint is made of).
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graph.errors import GraftError

PARTS_PER_WORKER = 2          # grid rows (and columns) per worker when `parts` is not given


@contextmanager
def session(address: str | None):
    """A dask.distributed Client for `address`, closed afterwards (None: yields None).
    'local:N' starts a LocalCluster of N single-threaded worker processes, closed with it;
    anything else is a running scheduler's address (tcp://host:8786)."""
    if address is None:
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise GraftError("--dask needs dask.distributed: pip install 'graft[dist]'") from e
    cluster = None
    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise GraftError(f"--dask {address}: expected local:N with N >= 1 workers")
        cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster if cluster is not None else address)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def edges_of(size: int, parts: int) -> np.ndarray:
    """(parts + 1,) boundaries of `parts` contiguous, near-even blocks of range(size)."""
    return np.linspace(0, size, max(1, min(parts, size)) + 1).round().astype(np.int64)


def write_partitions(a: sp.csr_array, folder: Path, rows: np.ndarray, cols: np.ndarray
                     ) -> None:
    """Write a's entries with DuckDB to Parquet, one partition per (row block, column block)
    of the boundaries `rows` and `cols` (folder/bi=I/bj=J/); empty blocks write nothing."""
    import duckdb
    import pyarrow as pa
    coo = sp.csr_array(a).tocoo()
    table = pa.table({
        "bi": (np.searchsorted(rows, coo.row, side="right") - 1).astype(np.int32),
        "bj": (np.searchsorted(cols, coo.col, side="right") - 1).astype(np.int32),
        "row": coo.row.astype(np.int64), "col": coo.col.astype(np.int64),
        "value": coo.data.astype(np.float64)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.register("entries", table)
        con.execute(f"COPY (SELECT * FROM entries ORDER BY bi, bj, row, col) TO '{folder}' "
                    "(FORMAT PARQUET, PARTITION_BY (bi, bj), OVERWRITE_OR_IGNORE)")
    finally:
        con.close()


def _read_block(folder: str, row0: int, rows: int, col0: int, cols: int) -> sp.csr_array:
    """One (rows, cols) block from its Parquet partition (none: an empty block)."""
    import pyarrow.parquet as pq
    if not Path(folder).is_dir():
        return sp.csr_array((rows, cols), dtype=np.float64)
    t = pq.read_table(folder, columns=["row", "col", "value"])
    return sp.csr_array((t.column("value").to_numpy(), (t.column("row").to_numpy() - row0,
                                                        t.column("col").to_numpy() - col0)),
                        shape=(rows, cols))


def _one_thread(fn):
    """fn with one BLAS thread in the worker: its float bits do not depend on the host."""
    @functools.wraps(fn)
    def run(*args):
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            return fn(*args)
    return run


@_one_thread
def _times(b: sp.csr_array, x: np.ndarray) -> np.ndarray:
    return np.asarray(b @ x)


@_one_thread
def _times_t(b: sp.csr_array, y: np.ndarray) -> np.ndarray:
    return np.asarray(b.T @ y)


@_one_thread
def _solve_right(block: np.ndarray, r: np.ndarray) -> np.ndarray:
    """block · r⁻¹ for upper-triangular r."""
    import scipy.linalg as sla
    return sla.solve_triangular(r, block.T, trans="T", lower=False).T


def _cholesky_qr2(x, client) -> tuple:
    """(Q, R) of a tall dask block x = Q R, chunked as x: Cholesky-QR twice (the Gram
    Σ xᵢᵀxᵢ is one small reduction, Q = x R⁻¹ a triangular solve per chunk; the second
    pass restores orthogonality to float64 rounding). A rank-deficient block, whose Gram
    Cholesky cannot factor, goes to dask's Householder tall-skinny QR instead (measured at
    480,736 × 138: 6.7 s against 0.4 s)."""
    import dask.array as da
    import scipy.linalg as sla
    from dask.distributed import wait
    r_total = np.eye(x.shape[1])
    x = client.persist(x)                     # computed once, for the Gram and the solve
    wait(x)
    for _ in range(2):
        g = (x.T @ x).compute()
        try:
            r = sla.cholesky(g, lower=False)
            ok = bool(np.all(np.abs(np.diag(r)) > 1e-10 * abs(r[0, 0])))
        except np.linalg.LinAlgError:
            ok = False
        if not ok:
            q, r = client.persist(list(da.linalg.tsqr(x)))
            wait(q)
            return q, r.compute() @ r_total
        x = client.persist(x.map_blocks(_solve_right, r, dtype=np.float64))
        wait(x)
        r_total = r @ r_total
    return x, r_total


def randomized_svd(a: sp.csr_array, k: int, client, *, oversample: int = 10,
                   power_iters: int = 4, seed: int, parts: int | None = None,
                   folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD a ≈ U diag(s) Vt on the cluster `client` talks to, as
    compiler.linalg.randomized_svd computes it in process: all-zero rows and columns dropped
    first, the sketch on the shorter side drawn from the same seeded test matrix, the same
    sign convention, 0 past the numerical rank. U (m, k) float32, s (k,) float64
    descending, Vt (k, n) float32.

    `folder` holds the Parquet partitions (on a shared file system for a real cluster);
    `parts`: the grid's rows and columns of blocks (default PARTS_PER_WORKER per worker;
    the float bits depend on it, not on the workers)."""
    from compiler import linalg
    a = linalg._check_sparse(a, k, oversample, power_iters, 1, 1).astype(np.float64)
    m, n = a.shape
    rows = np.flatnonzero(np.diff(a.indptr))
    cols = np.flatnonzero(np.bincount(a.indices, minlength=n))
    u, v, s = np.zeros((m, k), np.float32), np.zeros((n, k), np.float32), np.zeros(k)
    b = a[rows][:, cols]                                               # (m0, n0)
    if b.nnz == 0:
        return u, s, v.T
    flip = b.shape[0] > b.shape[1]                 # the shorter side carries the sketch
    if parts is None:
        parts = PARTS_PER_WORKER * max(1, len(client.scheduler_info()["workers"]))
    ub, s, vb = _sketch(b.T.tocsr() if flip else b, k, client, oversample, power_iters,
                        seed, parts, Path(folder))
    if flip:
        ub, vb = vb, ub
    keep = ub.shape[1]
    s = np.concatenate([s[:keep], np.zeros(k - keep)])
    if s[0] > 0:
        s[s <= linalg._RANK_TOL32 * s[0]] = 0.0
    u0 = np.zeros((len(rows), k), np.float32)
    v0 = np.zeros((len(cols), k), np.float32)
    u0[:, :keep], v0[:, :keep] = ub, vb
    linalg._apply_signs(u0, v0, s)
    u[rows], v[cols] = u0, v0
    return u, s, v.T


def _sketch(b: sp.csr_array, k: int, client, oversample: int, power_iters: int, seed: int,
            parts: int, folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The range finder on b (m, n), m ≤ n, its rows in blocks on the workers: (U (m, keep),
    s (l,), V (n, keep)) float32, float64, float32 with keep = min(k, l)."""
    import dask
    import dask.array as da
    m, n = b.shape
    l = min(k + oversample, m, n)
    # B in a grid of blocks B_ij (tsqr wants ≥ l rows a chunk); Y (m, ·) is chunked by the
    # grid's rows, Z (n, ·) by its columns.
    re, ce = edges_of(m, min(parts, m // l)), edges_of(n, min(parts, n // l))
    write_partitions(b, folder, re, ce)
    read = dask.delayed(_read_block, pure=True)
    cols = len(ce) - 1
    flat = client.persist([read(str(folder / f"bi={i}" / f"bj={j}"), int(re[i]),
                                int(re[i + 1] - re[i]), int(ce[j]), int(ce[j + 1] - ce[j]))
                           for i in range(len(re) - 1) for j in range(cols)])
    grid = [flat[i:i + cols] for i in range(0, len(flat), cols)]
    # Tasks name their inputs by key: a handle dropped before they ran lets Dask free the
    # data. The grid is held throughout; a product's input until its result is computed.
    live = []

    def product(x: da.Array, transpose: bool) -> da.Array:
        """B x (x chunked by the grid's columns) or Bᵀ x (by its rows): each output chunk
        the sum, in block order, of one block's product with one chunk of x."""
        live.append(x)
        xs, w = x.to_delayed().ravel(), x.shape[1]
        outer = (range(len(ce) - 1) if transpose else range(len(re) - 1))
        inner = (range(len(re) - 1) if transpose else range(len(ce) - 1))
        sizes = np.diff(ce if transpose else re)
        chunks = []
        for o in outer:
            acc = None
            for i in inner:
                blk = grid[i][o] if transpose else grid[o][i]
                part = dask.delayed(_times_t if transpose else _times, pure=True)(blk, xs[i])
                acc = part if acc is None else dask.delayed(np.add, pure=True)(acc, part)
            chunks.append(da.from_delayed(acc, (int(sizes[o]), w), dtype=np.float64))
        return da.concatenate(chunks)

    def orth(x: da.Array) -> tuple[da.Array, np.ndarray]:
        q, r = _cholesky_qr2(x, client)       # computed: what made it can go
        live.clear()
        return q, r

    # The in-process path's test matrix: float32 uniform − 0.5 from the same seed.
    omega = np.random.default_rng(seed).random((n, l), dtype=np.float32) - np.float32(0.5)
    sent = client.scatter([omega[a:b].astype(np.float64) for a, b in zip(ce[:-1], ce[1:])])
    omega = da.concatenate([da.from_delayed(f, (int(b - a), l), dtype=np.float64)   # chunks
                            for f, a, b in zip(sent, ce[:-1], ce[1:])])       # sent, not in
    live.append(sent)                                                         # the graph
    q, _ = orth(product(omega, False))                        # (m, l)
    for _ in range(power_iters):
        z, _ = orth(product(q, True))                         # (n, l)
        q, _ = orth(product(z, False))
    qz, r = orth(product(q, True))                            # Bᵀ Q = Qz R: B ≈ Q Rᵀ Qzᵀ
    uf, s, vft = np.linalg.svd(r.T)                           # (l, l)
    top = min(k, len(s))
    u = (q @ uf[:, :top]).compute().astype(np.float32)        # (m, top)
    v = (qz @ vft[:top].T).compute().astype(np.float32)       # (n, top)
    return u, s, v

