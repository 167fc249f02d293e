"""Pass 2 — semcons: discover link types and split the adjacency by type (DESIGN §1)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from compiler.types import Semcons, Vocab
from graph import semcons as graph_semcons
from graph.ids import ZERO
from graph.snapshot import Snapshot, typed_edges
from graph.store import Store


def build_semcons(store: Store, snap: Snapshot, vocab: Vocab,
                  links: pa.Table | None = None) -> Semcons:
    """Each content link goes to the semcon with the most label stake on its axon, else ⊥;
    each semcon gets its own (V, V) adjacency (they sum to vocab.adjacency). `links`
    (graph.snapshot.typed_edges, shared with the vocab pass) saves a query."""
    links = typed_edges(store, snap) if links is None else links
    labels = links.filter(links.column("is_label"))
    content = links.filter(pc.invert(links.column("is_label")))
    label_src = _fixed_bytes(labels.column("src"))
    label_axon = _fixed_bytes(labels.column("dst"))
    label_w = labels.column("w").to_numpy()
    found = graph_semcons.discover_semcons(label_src, label_axon, label_w)
    which = graph_semcons.assign_semcons(_fixed_bytes(content.column("axon")),
                                         label_src, label_axon, label_w, found)   # (N,)
    index = pa.array(vocab.particles)
    rows = pc.index_in(content.column("src"), value_set=index).to_numpy()   # (N,)
    cols = pc.index_in(content.column("dst"), value_set=index).to_numpy()   # (N,)
    w = content.column("w").to_numpy()
    v = len(vocab.particles)
    per_type = []
    for s in range(len(found)):
        keep = (which == s) & (w > 0)
        m = sp.coo_array((w[keep], (rows[keep], cols[keep])), shape=(v, v)).tocsr()
        m.sum_duplicates()
        per_type.append(m)
    particles = [s.particle for s in found]
    known = store.names_of(particles)
    names = ["⊥" if p == ZERO else known.get(p) or p[:16] for p in particles]
    return Semcons(particles=particles, names=names, adjacency=per_type)


def _fixed_bytes(column: pa.ChunkedArray) -> np.ndarray:
    """An ASCII string column as a NUL-padded fixed-width bytes array (dtype S*), what
    graph.semcons compares: straight from Arrow's buffer when every value has one length
    (64-hex ids), else through Python strings."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count == 0 and len(array) and pa.types.is_string(array.type):
        offsets = np.frombuffer(array.buffers()[1], np.int32)
        offsets = offsets[array.offset: array.offset + len(array) + 1]         # (N + 1,)
        width = int(offsets[1] - offsets[0])
        if width > 0 and (np.diff(offsets) == width).all():
            data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0]: offsets[-1]]
            if data.max(initial=0) < 128:                      # ASCII, as graph.semcons requires
                return data.view(f"S{width}")
    return np.asarray(array.to_pylist(), dtype=object)
