"""Ingest cyberlinks: read every input, write them all in one transaction — or none.

JSONL, CSV and Parquet files are first written straight from DuckDB's readers, each row
checked inside the INSERT (graph/ingest_direct.py). Should that fail for any reason, it rolls
back and the staged path decides: each input becomes a temp table of text columns (row,
neuron, from, to, token, amount, valence, time, semcon, token_id), so nothing is rounded
before it is checked. Particle ids are checked once per distinct id; the rest of each row
inside the INSERT. The first bad row aborts the transaction, and the inputs are then
checked in full, so every problem is reported with its line.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph import formats, ids, ingest_direct, sql
from graph.errors import GraftError, IngestError, Problem, shorten
from graph.store import Store

PROBLEM_CAP = 50
ORIGINS = ("ingest", "extract", "curator")
TEXT_COLUMNS = (*sql.LINK_FIELDS, *sql.LINK_OPTIONAL)

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Staged:
    """One input, staged as the temp table `relation`."""

    source: str
    digest: str
    relation: str
    rows: int
    fmt: str = "rows"


@dataclass
class IngestResult:
    """What ingest did with one input."""

    source: str
    rows: int
    batch: int | None = None          # None when skipped
    labels: int = 0                   # label links written for rows with a semcon
    skipped: str = ""                 # why nothing was written ("already ingested as batch 3")


def ingest_links(store: Store, paths: Sequence[str | Path], *, fmt: str | None = None,
                 origin: str = "ingest", cycle: int | None = None,
                 say: Say = _quiet) -> list[IngestResult]:
    """Validate and write every link file in one transaction — or none.

    Args:
        store: the open store.
        paths: JSONL, CSV, Parquet or .graph files of cyberlinks.
        fmt: force a format for all files instead of reading it from the extension.
        origin: `ingest`, `extract` or `curator`, recorded on every link.
        cycle: the loop cycle that produced the links, if any.
        say: a callback for progress lines.

    Returns:
        One IngestResult per path, in order.

    Raises:
        IngestError: listing every bad value (file, line, field, value, expected); nothing
            is written.
    """
    if origin not in ORIGINS:
        raise GraftError(f"origin {origin!r} is not one of {ORIGINS}")
    results: list[IngestResult] = []
    inputs: list[ingest_direct.Input] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for raw_path in paths:
        path = Path(raw_path)
        if not path.is_file():
            problems.append(Problem(str(path), 0, "", "no such file", "a readable file"))
            continue
        digest = formats.file_digest(path)
        done = store.query(sql.BATCH_BY_DIGEST, [digest, "links"])
        if done or digest in seen:
            why = f"already ingested as batch {done[0][0]}" if done else "same file given twice"
            results.append(IngestResult(str(path), 0, skipped=why))
            continue
        seen.add(digest)
        inputs.append(ingest_direct.Input(path, formats.detect_format(path, fmt), digest))
        results.append(IngestResult(str(path), 0))
    pending = [r for r in results if not r.skipped]
    if not problems:
        written = ingest_direct.write_links(store, inputs, origin, cycle, say)
        if written is not None:
            for result, (batch, rows) in zip(pending, written):
                result.batch, result.rows = batch, rows
            return results
    staged: list[Staged] = []
    try:
        for i, (item, result) in enumerate(zip(inputs, pending)):
            say(f"reading {item.path}")
            stage, found = _stage(store, item.path, item.fmt, item.digest, i)
            problems += found
            if stage is not None:
                staged.append(stage)
                result.rows = stage.rows
        if problems:
            raise IngestError(problems[:PROBLEM_CAP], total=len(problems))
        say(f"writing {sum(s.rows for s in staged)} links")
        _write_all(store, staged, pending, origin, cycle, "links")
        return results
    finally:
        _drop(store, staged)


def ingest_link_rows(store: Store, rows: list[dict], *, source: str, kind: str = "links",
                     origin: str = "ingest", cycle: int | None = None,
                     particles: list[dict] | None = None) -> IngestResult:
    """Ingest links (and optionally particles) made in Python, with the same checks as files.

    Used by the vault importer and the loop (accepted proposals). The batch's identity is
    the BLAKE3 of the rows' canonical JSON, so the same rows twice are a no-op.

    Args:
        rows: link dicts with the file fields (neuron, from, to, token, amount, valence,
            time, optional semcon).
        source: what to call the input in errors and in the batches table.
        kind: the batch kind recorded (links, vault, extract, curator).
        particles: particle dicts (particle/name/aliases/text/…) written in the same
            transaction.

    Raises:
        IngestError: every bad value, with `source`, the 1-based row and the field.
    """
    from graph.ingest_rows import particle_table, write_particles  # (import cycle)
    payload = json.dumps([rows, particles or []], sort_keys=True, default=str).encode()
    digest = blake3.blake3(payload).hexdigest()
    done = store.query(sql.BATCH_BY_DIGEST, [digest, kind])
    if done:
        return IngestResult(source, 0, skipped=f"already ingested as batch {done[0][0]}")
    table, problems = (particle_table(store, source, list(enumerate(particles, start=1)))
                       if particles else (None, []))
    if problems:
        raise IngestError(problems[:PROBLEM_CAP], total=len(problems))
    text = {c: pa.array([_as_text(r.get(c)) for r in rows], pa.string()) for c in TEXT_COLUMNS}
    arrow = pa.table({"row": pa.array(range(1, len(rows) + 1), pa.int64()), **text,
                      "token_id": pa.nulls(len(rows), pa.int64())})
    item = _stage_arrow(store, arrow, Staged(source, digest, "stage_rows", len(rows)))
    result = IngestResult(source, len(rows))
    try:
        def particles_too() -> None:
            if table is not None:
                batch = result.batch or store.scalar(sql.BATCH_ADD, [kind, source, digest, 0])
                write_particles(store, table, batch)
                result.batch = batch
        _write_all(store, [item] if rows else [], [result] if rows else [], origin, cycle,
                   kind, also=particles_too)
        return result
    finally:
        _drop(store, [item])


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list, bool, float)):
        return json.dumps(value)  # never valid where an integer or id is expected
    return str(value)


# -- reading ----------------------------------------------------------------------------------
def _stage(store: Store, path: Path, fmt: str, digest: str, i: int) -> tuple[Staged | None, list[Problem]]:
    """Make one file readable as a relation of text columns, or say why it cannot be."""
    name, stage = str(path), f"stage_links_{i}"
    item = Staged(name, digest, stage, 0, fmt)
    try:
        if fmt == "graph":
            table, problems = formats.read_graph_records(path)
            if problems:
                return None, problems
            item = _stage_arrow(store, _resolve_token_ids(store, table), item)
        elif fmt == "jsonl":
            columns = {c: "VARCHAR" for c in TEXT_COLUMNS}
            source = sql.SOURCE_JSONL.format(columns=columns)
            store.execute(sql.STAGE.format(stage=stage, source=source), {"path": name})
        else:
            have = formats.csv_header(path) if fmt == "csv" else pq.read_schema(path).names
            if not have:
                raise GraftError("no header")
            missing = [Problem(name, 1 if fmt == "csv" else 0, col, "no such column",
                               f"a column named '{col}'")
                       for col in sql.LINK_FIELDS if col not in have]
            if missing:
                return None, missing
            select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' if c in have
                               else f'NULL::VARCHAR AS "{c}"' for c in TEXT_COLUMNS)
            statement = sql.SOURCE_CSV if fmt == "csv" else sql.SOURCE_PARQUET
            source = statement.format(select=select, columns={c: "VARCHAR" for c in have})
            store.execute(sql.STAGE.format(stage=stage, source=source), {"path": name})
    except Exception as exc:  # noqa: BLE001 - any reader failure is re-diagnosed line by line
        return None, _diagnose(path, fmt, exc)
    item.rows = store.scalar(f"SELECT count(*) FROM {item.relation}")
    if item.rows == 0:
        _drop(store, [item])
        return None, [Problem(name, 0, "", "an empty file", "at least one link")]
    return item, []


def _stage_arrow(store: Store, table: pa.Table, item: Staged) -> Staged:
    store.register("arrow_view", table)
    try:
        store.execute(sql.STAGE_ARROW.format(stage=item.relation, view="arrow_view"))
    finally:
        store.unregister("arrow_view")
    item.rows = table.num_rows
    return item


def _drop(store: Store, staged: list[Staged]) -> None:
    for item in staged:
        store.execute(sql.DROP_TEMP.format(stage=item.relation))


def _diagnose(path: Path, fmt: str, exc: Exception) -> list[Problem]:
    """DuckDB stopped at the first bad byte; find every bad line with the exact scanners."""
    problems: list[Problem] = []
    if fmt == "jsonl":
        problems, _ = formats.jsonl_problems(path, PROBLEM_CAP)
    elif fmt == "csv":
        problems, _ = formats.csv_problems(path, PROBLEM_CAP)
        if not problems and not formats.csv_header(path):
            problems = [Problem(str(path), 0, "", "an empty file or no header",
                                "a header row naming the fields")]
    return problems or [Problem(str(path), 0, "", shorten(str(exc).splitlines()[0], 200),
                                f"a readable {fmt} file")]


def _resolve_token_ids(store: Store, table: pa.Table) -> pa.Table:
    """.graph records name tokens by u32 id: map known ids to names, new ids to str(id)."""
    known = dict(store.query("SELECT id, name FROM tokens"))
    token_ids = table.column("token_id").to_numpy()
    uniq, inverse = np.unique(token_ids, return_inverse=True)
    names = np.array([known.get(int(t), str(int(t))) for t in uniq], dtype=object)
    return table.select(["row", "neuron", "from", "to"]).append_column(
        "token", pa.array(names[inverse], type=pa.string())).append_column(
        "amount", table.column("amount")).append_column(
        "valence", table.column("valence")).append_column(
        "time", table.column("time")).append_column(
        "semcon", pa.nulls(len(table), pa.string())).append_column(
        "token_id", table.column("token_id"))


# -- checking -----------------------------------------------------------------------------------
def _check_params(store: Store) -> dict:
    tokens = ", ".join(r[0] for r in store.query("SELECT name FROM tokens ORDER BY id LIMIT 20"))
    return {"pre": ids.PARTICLE_RE, "pexp": ids.PARTICLE_EXPECTED,
            "strict": store.meta("token_table") == "set", "tokens": tokens}


def _problems(store: Store, item: Staged) -> tuple[list[Problem], int]:
    """Every bad value of one staged input (first PROBLEM_CAP) and how many there are."""
    params = _check_params(store)
    check = sql.LINK_CHECKS.format(stage=item.relation)
    total = store.scalar(f"SELECT count(*) FROM ({check})", params)
    if not total:
        return [], 0
    bad = store.query(f"{check} LIMIT {PROBLEM_CAP}", params)
    lines = _line_map(Path(item.source), item.fmt)
    return [Problem(item.source, int(lines[row - 1]) if lines is not None else row, fld,
                    "missing" if value is None else shorten(value), expected)
            for row, fld, value, expected in bad], total


def _line_map(path: Path, fmt: str) -> np.ndarray | None:
    """Row → physical line, for formats where the two differ (blank lines, quoted newlines)."""
    if fmt == "jsonl":
        return formats.jsonl_line_numbers(path)
    if fmt == "csv":
        return formats.csv_line_numbers(path)
    return None  # Parquet rows, .graph records and Python rows are numbered as they are


# -- writing ------------------------------------------------------------------------------------
def _write_all(store: Store, staged: list[Staged], results: list[IngestResult], origin: str,
               cycle: int | None, kind: str, also: Callable[[], None] | None = None) -> None:
    """One transaction for every input; on a bad row, roll back and report them all."""
    try:
        for item in staged:
            params = _check_params(store)
            if store.scalar(sql.BAD_IDS.format(stage=item.relation), params):
                raise duckdb.InvalidInputException("bad particle ids")
        with store.transaction():
            for item, result in zip(staged, results):
                result.batch, result.labels = _write_links(store, item, origin, cycle, kind)
            if also is not None:
                also()
    except duckdb.Error as exc:
        problems, total = [], 0
        for item in staged:
            found, count = _problems(store, item)
            problems += found
            total += count
        if not total:
            raise
        raise IngestError(problems[:PROBLEM_CAP], total=total) from exc


def _write_links(store: Store, item: Staged, origin: str, cycle: int | None,
                 kind: str) -> tuple[int, int]:
    """Write one input inside the caller's transaction; returns (batch id, labels)."""
    batch = store.scalar(sql.BATCH_ADD, [kind, item.source, item.digest, item.rows])
    base = store.scalar(sql.MAX_SEQ)
    params = {**_check_params(store), "base": base, "origin": origin, "cycle": cycle,
              "batch": batch}
    store.execute(sql.INSERT_LINKS.format(source=item.relation, amount=sql.AMOUNT_COLUMNS["text"],
                                          bad=sql.LINK_BAD), params)
    labels = _write_labels(store, item, {**params, "base": base + item.rows})
    store.execute(sql.INSERT_NEW_TOKENS.format(stage=item.relation))
    store.execute(sql.INSERT_NEURONS.format(stage=item.relation), {"batch": batch})
    return batch, labels


def _write_labels(store: Store, item: Staged, params: dict) -> int:
    """Rows with a `semcon` get a label link semcon → axon(from, to) with the same stake."""
    rows = store.arrow(sql.STAGE_SEMCONS.format(stage=item.relation))
    if rows.num_rows == 0:
        return 0
    h = store.hash_name
    semcon_ids, named = [], {}
    for value in rows.column("semcon").to_pylist():
        if ids.is_particle(value):
            semcon_ids.append(value)
        else:  # a semcon given by name becomes the particle of that name
            pid = ids.particle_of_text(value, h)
            named[pid] = value
            semcon_ids.append(pid)
    axons = [ids.axon(s, d, h) for s, d in zip(rows.column("from").to_pylist(),
                                               rows.column("to").to_pylist())]
    labels = pa.table({"row": rows.column("row"), "semcon_id": semcon_ids, "axon": axons})
    store.register("label_view", labels)
    try:
        store.execute(sql.INSERT_LABELS.format(stage=item.relation), params)
    finally:
        store.unregister("label_view")
    if named:
        names = pa.table({"particle": list(named), "name": list(named.values())})
        store.register("name_view", names)
        try:
            store.execute(sql.INSERT_NAMED_PARTICLES, {"batch": params["batch"]})
        finally:
            store.unregister("name_view")
    return len(axons)
