"""The embedding SVD on a Dask cluster: for graphs whose SVD blocks outgrow one machine.

What outgrows a machine first is not the links but the dense blocks of the randomized SVD:
at 3M particles and d = 300 each (V, k + oversample) block is 3.7 GB in float32, and the
range finder holds three of them. Here those blocks live on Dask workers, split by rows:

- the matrix's rows, and its columns, are written by DuckDB to Parquet, one partition per
  block (`write_partitions`); each worker reads its partitions into sparse blocks — row
  blocks B_i and column blocks (Bᵀ)_j — which stay on the workers (persisted) for the whole
  SVD;
- Y = B Z and Z = Bᵀ Y are dask arrays chunked like those blocks: each block times the
  other side's whole (m or n, l) block, sent once to each worker — no (n, l) partial sums;
- every block is orthonormalised by Cholesky-QR twice on its Gram (a small
  reduction), dask.array's tall-skinny QR where the block is rank-deficient.

The maths is the in-process range finder's (compiler/linalg.py): the same Halko–Martinsson–
Tropp sketch with `power_iters` subspace iterations, QR after every product, then the SVD of
the small l × l factor. The arithmetic is float64 and one BLAS thread per task, so the result
depends on the snapshot, the number of row blocks and the seed — not on how many workers
run them (each block's work is fixed by the blocks). Singular values
agree with the in-process float32 path to its rounding (tests/compiler/test_distributed.py).

The rest of the compile stays in process: it holds the sparse matrix (tens of MB at 3M
particles) and, at the end, U and V (what the checkpoint is made of).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graph.errors import GraftError

PARTS_PER_WORKER = 2          # row blocks per worker when `parts` is not given


def client_for(address: str):
    """A dask.distributed Client: 'local:N' starts a LocalCluster of N single-threaded worker
    processes (closed with the client); anything else is a scheduler address
    (tcp://host:8786)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise GraftError("--dask needs dask.distributed: pip install 'graft[dist]'") from e
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise GraftError(f"--dask {address}: expected local:N with N >= 1 workers")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
        client = Client(cluster)
        client._graft_cluster = cluster           # closed by close_client
        return client
    return Client(address)


def close_client(client) -> None:
    cluster = getattr(client, "_graft_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def session(address: str | None):
    """A client for `address` (None: no cluster, yields None), closed afterwards."""
    if address is None:
        yield None
        return
    client = client_for(address)
    try:
        yield client
    finally:
        close_client(client)


def write_partitions(a: sp.csr_array, folder: Path, parts: int) -> list[tuple[Path, int, int]]:
    """Write a's entries with DuckDB to Parquet, one partition per row block; returns
    (partition folder, first row, rows) per block, in row order. Blocks are contiguous and
    as even as `parts` allows."""
    import duckdb
    import pyarrow as pa
    a = sp.csr_array(a)
    m = a.shape[0]
    parts = max(1, min(parts, m))
    edges = np.linspace(0, m, parts + 1).round().astype(np.int64)
    coo = a.tocoo()
    block = np.searchsorted(edges, coo.row, side="right") - 1
    table = pa.table({"block": block.astype(np.int32), "row": coo.row.astype(np.int64),
                      "col": coo.col.astype(np.int64), "value": coo.data.astype(np.float64)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    try:
        con.register("entries", table)
        con.execute(f"COPY (SELECT * FROM entries ORDER BY block, row, col) TO '{folder}' "
                    "(FORMAT PARQUET, PARTITION_BY (block), OVERWRITE_OR_IGNORE)")
    finally:
        con.close()
    return [(folder / f"block={i}", int(edges[i]), int(edges[i + 1] - edges[i]))
            for i in range(parts)]


def _read_block(folder: str, first: int, rows: int, n: int) -> sp.csr_array:
    """One row block from its Parquet partition (no partition: an empty block)."""
    import pyarrow.parquet as pq
    if not Path(folder).is_dir():
        return sp.csr_array((rows, n), dtype=np.float64)
    t = pq.read_table(folder, columns=["row", "col", "value"])
    r = t.column("row").to_numpy() - first
    return sp.csr_array((t.column("value").to_numpy(), (r, t.column("col").to_numpy())),
                        shape=(rows, n))


def _one_thread(fn):
    def run(*args):
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            return fn(*args)
    return run


@_one_thread
def _times(b: sp.csr_array, x: np.ndarray) -> np.ndarray:
    return np.asarray(b @ x)


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


def _solve_right(block: np.ndarray, r: np.ndarray) -> np.ndarray:
    """block · r⁻¹ for upper-triangular r."""
    import scipy.linalg as sla
    return sla.solve_triangular(r, block.T, trans="T", lower=False).T


def randomized_svd(a: sp.csr_array, k: int, client, *, oversample: int = 10,
                   power_iters: int = 4, seed: int, parts: int | None = None,
                   folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated SVD a ≈ U diag(s) Vt on the cluster `client` talks to, as
    compiler.linalg.randomized_svd computes it in process: all-zero rows and columns dropped
    first, the sketch on the shorter side drawn from the same seeded test matrix, the same
    sign convention, 0 past the numerical rank. U (m, k) float32, s (k,) float64
    descending, Vt (k, n) float32.

    `folder` holds the Parquet partitions (on a shared file system for a real cluster);
    `parts` row blocks (default PARTS_PER_WORKER per worker; the float bits depend on it)."""
    from compiler import linalg
    a = sp.csr_array(a, dtype=np.float64, copy=True)
    a.sum_duplicates()
    a.eliminate_zeros()
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
    # Tasks name their inputs by key: a handle dropped before they ran lets Dask free the
    # data. The blocks are held throughout; a product's input until its result is computed.
    pinned, live = [], []

    def held(side: sp.csr_array, name: str) -> tuple[list, list[int]]:
        """`side`'s row blocks, read by the workers from their Parquet partitions and kept
        there: (blocks, rows of each). tsqr wants every chunk ≥ l rows."""
        at = write_partitions(side, folder / name, max(1, min(parts, side.shape[0] // l)))
        read = dask.delayed(_read_block, pure=True)
        blocks = client.persist([read(str(f), first, r, side.shape[1]) for f, first, r in at])
        pinned.append(blocks)
        return blocks, [r for _, _, r in at]

    rows_of_b, rows_of_bt = held(b, "rows"), held(b.T.tocsr(), "columns")

    def times(side, x) -> da.Array:            # side · x, chunked like side's row blocks
        if isinstance(x, np.ndarray):          # sent to every worker once
            whole = arg = client.scatter(x, broadcast=True)
        else:                                  # one whole block, worker to worker
            whole = client.persist(x.rechunk({0: -1}))
            arg = whole.to_delayed().ravel()[0]
        live.append(whole)
        blocks, rows = side
        return da.concatenate([
            da.from_delayed(dask.delayed(_times, pure=True)(blk, arg), (r, x.shape[1]),
                            dtype=np.float64) for blk, r in zip(blocks, rows)])

    def orth(x: da.Array) -> tuple[da.Array, np.ndarray]:
        q, r = _cholesky_qr2(x, client)       # computed: what made it can go
        live.clear()
        return q, r

    # The in-process path's test matrix: float32 uniform − 0.5 from the same seed.
    omega = np.random.default_rng(seed).random((n, l), dtype=np.float32) - np.float32(0.5)
    q, _ = orth(times(rows_of_b, omega.astype(np.float64)))   # (m, l)
    for _ in range(power_iters):
        z, _ = orth(times(rows_of_bt, q))                     # (n, l)
        q, _ = orth(times(rows_of_b, z))
    qz, r = orth(times(rows_of_bt, q))                        # Bᵀ Q = Qz R: B ≈ Q Rᵀ Qzᵀ
    uf, s, vft = np.linalg.svd(r.T)                           # (l, l)
    top = min(k, len(s))
    u = (q @ uf[:, :top]).compute().astype(np.float32)        # (m, top)
    v = (qz @ vft[:top].T).compute().astype(np.float32)       # (n, top)
    return u, s, v

