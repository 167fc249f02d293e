"""The fast path of link ingest: each file read once, checked and written in the same pass."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from graph import formats, ids, sql
from graph.store import Store


@dataclass
class Input:
    """One link file to ingest."""

    path: Path
    fmt: str
    digest: str


@dataclass
class _Source:
    """How to read one input straight into INSERT_LINKS."""

    relation: str       # a SOURCE_* statement
    amount: str         # AMOUNT_COLUMNS for the amount's kind
    bad: str            # the row test


class _NeedsStage(Exception):
    """The command must take the staged path (see write_links)."""


def write_links(store: Store, inputs: list[Input], origin: str, cycle: int | None,
                say: Callable[[str], None]) -> list[tuple[int, int]] | None:
    """Write every input straight from its reader in one transaction: each row is checked
    as it passes, every particle id once it is written, and nothing commits unless all pass.

    Args:
        store: the open store.
        inputs: the files, none of them ingested before.
        origin, cycle: recorded on every link (see ingest_links).
        say: a callback for progress lines.

    Returns:
        (batch id, rows written) per input; or None, the store and its batch ids untouched,
        when the command needs the staged path: a .graph input, a semcon column or value, a
        missing column, an empty file, a reader error, or any row that fails a check. The
        staged path then decides and reports, so what is accepted and what is stored do not
        depend on which path ran.
    """
    sources = [_source(item) for item in inputs]
    if not inputs or any(s is None for s in sources):
        return None
    first = store.scalar(sql.BATCH_ID_NEXT)  # taken only by a BATCH_ADD that commits
    params = {"pre": ids.PARTICLE_RE, "strict": store.meta("token_table") == "set",
              "origin": origin, "cycle": cycle}
    written: list[tuple[int, int]] = []
    try:
        with store.transaction():
            since = base = store.scalar(sql.MAX_SEQ)
            for batch, item, source in zip(range(first, first + len(inputs)), inputs, sources):
                say(f"writing links from {item.path}")
                step = {**params, "path": str(item.path), "base": base, "batch": batch}
                rows = store.scalar(sql.INSERT_LINKS.format(
                    source=source.relation, amount=source.amount, bad=source.bad), step)
                if not rows:
                    raise _NeedsStage("an empty file")
                if store.scalar(sql.BATCH_ADD, ["links", str(item.path), item.digest, rows]) != batch:
                    raise _NeedsStage("the batch id was taken")
                store.execute(sql.INSERT_NEW_TOKENS.format(stage=sql.WRITTEN_TOKENS), step)
                store.execute(sql.INSERT_NEURONS, step)
                written.append((batch, rows))
                base += rows
            # Checked on what was written, so the file is read once; ids repeat, so once each.
            if store.scalar(sql.BAD_IDS.format(stage=sql.WRITTEN_IDS), {**params, "since": since}):
                raise _NeedsStage("a bad particle id")
    except (duckdb.Error, _NeedsStage):
        return None
    return written


def _source(item: Input) -> _Source | None:
    """The relation for one input, or None when it needs the staged path."""
    kinds = dict.fromkeys(sql.NUMERIC_FIELDS, "text")
    if item.fmt == "jsonl":
        columns = {c: "VARCHAR" for c in (*sql.LINK_FIELDS, *sql.LINK_OPTIONAL)}
        relation = sql.SOURCE_JSONL.format(columns=columns)
    elif item.fmt in ("csv", "parquet"):
        try:
            types = ({name: pa.string() for name in formats.csv_header(item.path)}
                     if item.fmt == "csv" else
                     {field.name: field.type for field in pq.read_schema(item.path)})
        except Exception:  # noqa: BLE001 - the staged path reports an unreadable file
            return None
        if any(c not in types for c in sql.LINK_FIELDS) or any(c in types for c in sql.LINK_OPTIONAL):
            return None
        # Integer columns stay typed: no text round trip, and an integer test that accepts
        # exactly what the text test would accept of the same column cast to text.
        for field in sql.NUMERIC_FIELDS:
            if pa.types.is_integer(types[field]):
                kinds[field] = "integer"
        select = ", ".join(f'"{c}"' if kinds.get(c) == "integer" else f'CAST("{c}" AS VARCHAR) AS "{c}"'
                           for c in sql.LINK_FIELDS) + ", NULL::VARCHAR AS semcon"
        statement = sql.SOURCE_CSV if item.fmt == "csv" else sql.SOURCE_PARQUET
        relation = statement.format(select=select, columns={c: "VARCHAR" for c in types})
    else:
        return None
    return _Source(relation, sql.AMOUNT_COLUMNS[kinds["amount"]],
                   sql.link_bad(kinds, semcon=sql.SEMCON_DIRECT))
