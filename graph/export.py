"""Export links as JSONL or in the 128-byte .graph record format."""
from __future__ import annotations

import json
from pathlib import Path

from graph import formats, ids, sql
from graph.errors import GraftError
from graph.snapshot import get_snapshot
from graph.store import Store


def export_links(store: Store, out: Path, *, fmt: str = "jsonl",
                 snapshot_ref: str | None = None) -> int:
    """Write the links of a snapshot (default: every link in the store) in canonical order.

    The .graph record holds 32-byte ids: a neuron that is not 64-hex is written as the hash
    of its name (recorded nowhere else, so that mapping is one-way); a non-hex particle id,
    an amount of 2^128 or more, or a time of 2^64 or more cannot be written and is an error.

    Returns:
        The number of links written.
    """
    max_seq = (get_snapshot(store, snapshot_ref).max_seq if snapshot_ref
               else store.scalar(sql.MAX_SEQ))
    table = store.arrow(sql.EXPORT_LINKS, {"max_seq": max_seq})
    cols = table.to_pydict()
    if fmt == "jsonl":
        with open(out, "w", encoding="utf-8") as fh:
            for i in range(table.num_rows):
                row = {k: cols[k][i] for k in ("neuron", "from", "to", "token", "valence", "time")}
                amount = int(cols["amount"][i])
                row["amount"] = amount if amount < 2**53 else str(amount)  # exact in any reader
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return table.num_rows
    if fmt != "graph":
        raise GraftError(f"unknown export format {fmt!r}; expected jsonl or graph")
    bad = [p for key in ("from", "to") for p in cols[key] if not ids.is_particle(p) or len(p) != 64]
    if bad:
        raise GraftError(f"{out}: particle {bad[0]!r} is not a 32-byte hex digest; "
                         "the .graph format cannot hold it")
    too_big = [a for a in cols["amount"] if int(a) >= 2**128]
    if too_big:
        raise GraftError(f"{out}: amount {too_big[0]} does not fit the .graph u128 field")
    cols["neuron"] = [n if len(n) == 64 and ids.is_particle(n) else ids.particle_of_text(n, store.hash_name)
                      for n in cols["neuron"]]
    return formats.write_graph_records(out, cols)
