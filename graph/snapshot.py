"""Snapshots: immutable, content-addressed views of the links, and their exports.

A snapshot is every link with seq <= max_seq (links are append-only, so it never changes);
its id is the BLAKE3 of the links' canonical serialisation, so equal link sets share an id
whatever order they were ingested in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from graph import ids, sql
from graph.errors import GraftError
from graph.store import Store

if TYPE_CHECKING:
    import networkx as nx

# Letters in shape comments: N links in the snapshot, V particles in its index.


@dataclass(frozen=True)
class Snapshot:
    """A row of the snapshots table."""

    id: str
    max_seq: int
    links: int
    created: str


@dataclass(frozen=True)
class Adjacency:
    """The weighted adjacency of a snapshot and the particle index of its rows/columns.

    matrix[i, j] is the summed effective stake of links index[i] → index[j] (label links
    excluded); index lists particles in first-appearance order of the canonical link order.
    """

    matrix: sp.csr_array        # (V, V) float64
    index: list[str]            # (V,)

    def position(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.index)}


def take_snapshot(store: Store) -> Snapshot:
    """Snapshot every link now in the store (idempotent: no new links, same snapshot)."""
    max_seq = store.scalar(sql.MAX_SEQ)
    same = store.query(sql.SNAPSHOT_BY_SEQ, [max_seq])
    if same:
        return Snapshot(*same[0])
    if max_seq == 0:
        raise GraftError("the store has no links to snapshot; ingest some first")
    hasher = blake3.blake3()
    for batch in store.arrow_batches(sql.SNAPSHOT_CANONICAL, {"max_seq": max_seq}):
        column = batch.column(0)
        hasher.update(_string_bytes(column))
    snap_id = hasher.hexdigest()
    with store.transaction():
        store.execute(sql.SNAPSHOT_ADD, [snap_id, max_seq, store.scalar(sql.LINK_COUNT_UPTO, [max_seq])])
    return get_snapshot(store, snap_id)


def _string_bytes(column: pa.Array) -> memoryview:
    """The UTF-8 payload of a string column, all values back to back (no copy per row)."""
    kind = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(column.buffers()[1], dtype=kind)[column.offset: column.offset + len(column) + 1]
    return memoryview(column.buffers()[2])[offsets[0]: offsets[-1]]


def get_snapshot(store: Store, ref: str | None = None) -> Snapshot:
    """A snapshot by id (or unique id prefix); the latest when `ref` is None or 'latest'."""
    if ref in (None, "latest"):
        rows = store.query(sql.SNAPSHOT_LATEST)
        if not rows:
            raise GraftError("no snapshot yet; run `graft snapshot` first")
    else:
        rows = store.query(sql.SNAPSHOT_GET, [ref])
        if len(rows) != 1:
            raise GraftError(f"snapshot {ref!r}: {'no match' if not rows else 'ambiguous prefix'}")
    return Snapshot(*rows[0])


def list_snapshots(store: Store) -> list[Snapshot]:
    return [Snapshot(*r) for r in store.query(sql.SNAPSHOT_LIST)]


def snapshot_links(store: Store, snap: Snapshot) -> pa.Table:
    """Every link of the snapshot in canonical order, with w, axon and is_label columns.

    A label link is one whose target is the axon of another link in the snapshot.
    """
    return _with_labels(store, store.arrow(sql.SNAPSHOT_LINKS, {
        "max_seq": snap.max_seq, "sha256": store.hash_name == "sha256"}))


def typed_edges(store: Store, snap: Snapshot) -> pa.Table:
    """src, dst, w, axon and is_label of every link, in canonical order: snapshot_links
    without the columns only exports need (what the compiler's vocab and semcons read)."""
    return _with_labels(store, store.arrow(sql.SNAPSHOT_TYPED_EDGES, {
        "max_seq": snap.max_seq, "sha256": store.hash_name == "sha256"}))


def _with_labels(store: Store, table: pa.Table) -> pa.Table:
    """Fill the axons SQL left null, then mark label links (target = another link's axon)."""
    if table.column("axon").null_count:  # blake3 stores, CIDs: the same rule, in Python
        axon = table.column("axon").to_pylist()
        src, dst = table.column("src").to_pylist(), table.column("dst").to_pylist()
        axon = [a or ids.axon(s, d, store.hash_name) for a, s, d in zip(axon, src, dst)]
        table = table.set_column(table.schema.get_field_index("axon"), "axon",
                                 pa.array(axon, pa.string()))
    axons = pc.unique(table.column("axon"))
    is_label = pc.is_in(table.column("dst"), value_set=axons)
    return table.append_column("is_label", is_label)


def adjacency(store: Store, snap: Snapshot, links: pa.Table | None = None) -> Adjacency:
    """The snapshot as a scipy CSR matrix over its particle index (label links excluded)."""
    if links is None and store.hash_name == "sha256" and store.scalar(sql.ALL_HEX_IDS, [snap.max_seq]):
        content = store.arrow(sql.SNAPSHOT_EDGES, {"max_seq": snap.max_seq})
    else:
        links = snapshot_links(store, snap) if links is None else links
        content = links.filter(pc.invert(links.column("is_label")))
    n_links = content.num_rows
    # First appearance: interleave (src_0, dst_0, src_1, dst_1, …); Arrow's dictionary
    # encoding numbers values in order of first occurrence, which is exactly the index.
    both = pa.concat_arrays([content.column("src").combine_chunks(),
                             content.column("dst").combine_chunks()])
    interleave = np.empty(2 * n_links, dtype=np.int64)               # (2N,)
    interleave[0::2], interleave[1::2] = np.arange(n_links), n_links + np.arange(n_links)
    encoded = pc.take(both, pa.array(interleave)).dictionary_encode()
    codes = encoded.indices.to_numpy()                                 # (2N,)
    rows, cols = codes[0::2], codes[1::2]
    w = content.column("w").to_numpy()
    keep = w > 0
    n = len(encoded.dictionary)
    matrix = sp.coo_array((w[keep], (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    matrix.sum_duplicates()
    return Adjacency(matrix=matrix, index=encoded.dictionary.to_pylist())


def to_networkx(store: Store, snap: Snapshot) -> nx.DiGraph:
    """The snapshot as a networkx DiGraph: nodes are particle ids (with `name` where known),
    edge `weight` is the summed effective stake, as in adjacency()."""
    import networkx as nx  # here, not at import time: it costs ~1 s and few callers need it
    adj = adjacency(store, snap)
    graph = nx.DiGraph()
    names = dict(store.query("SELECT particle, name FROM particles WHERE name IS NOT NULL"))
    graph.add_nodes_from((p, {"name": names.get(p)}) for p in adj.index)
    coo = adj.matrix.tocoo()
    graph.add_weighted_edges_from(
        (adj.index[i], adj.index[j], float(v)) for i, j, v in zip(coo.row, coo.col, coo.data))
    return graph
