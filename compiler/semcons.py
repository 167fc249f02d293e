"""Pass 2 — semcons: discover link types and split the adjacency by type (DESIGN §1)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from compiler.types import Semcons, Vocab
from graph import semcons as graph_semcons
from graph.ids import ZERO
from graph.snapshot import Snapshot, snapshot_links
from graph.store import Store


def build_semcons(store: Store, snap: Snapshot, vocab: Vocab) -> Semcons:
    """Each content link goes to the semcon with the most label stake on its axon, else ⊥;
    each semcon gets its own (V, V) adjacency (they sum to vocab.adjacency)."""
    links = snapshot_links(store, snap)
    labels = links.filter(links.column("is_label"))
    content = links.filter(pc.invert(links.column("is_label")))
    label_src = np.asarray(labels.column("src").to_pylist(), dtype=object)
    label_axon = np.asarray(labels.column("dst").to_pylist(), dtype=object)
    label_w = labels.column("w").to_numpy()
    found = graph_semcons.discover_semcons(label_src, label_axon, label_w)
    which = graph_semcons.assign_semcons(
        np.asarray(content.column("axon").to_pylist(), dtype=object),
        label_src, label_axon, label_w, found)                         # (N,)
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
