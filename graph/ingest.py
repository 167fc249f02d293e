"""Ingest cyberlinks, particles and tokens: validate every row first, then write all or nothing."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph import formats, ids, sql
from graph.errors import GraftError, IngestError, Problem, shorten
from graph.store import Store

PROBLEM_CAP = 50
ORIGINS = ("ingest", "extract", "curator")
TEXT_COLUMNS = (*sql.LINK_FIELDS, *sql.LINK_OPTIONAL)


@dataclass
class Staged:
    """One validated input, staged as a temp table of text columns, waiting to be written."""

    source: str
    digest: str
    stage: str
    rows: int
    labels: int = 0


@dataclass
class IngestResult:
    """What ingest did with one input."""

    source: str
    rows: int
    batch: int | None = None          # None when skipped
    labels: int = 0                   # label links written for rows with a semcon
    skipped: str = ""                 # why nothing was written ("already ingested as batch 3")
    extra: dict = field(default_factory=dict)


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- links -----------------------------------------------------------------------------------
def ingest_links(store: Store, paths: Sequence[str | Path], *, fmt: str | None = None,
                 origin: str = "ingest", cycle: int | None = None,
                 say: Say = _quiet) -> list[IngestResult]:
    """Validate every link file, then write them all in one transaction — or none.

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
    staged: list[Staged] = []
    stages: list[str] = []
    problems: list[Problem] = []
    total = 0
    seen: set[str] = set()
    try:
        for i, raw_path in enumerate(paths):
            path = Path(raw_path)
            if not path.is_file():
                problems.append(Problem(str(path), 0, "", "no such file", "a readable file"))
                total += 1
                continue
            digest = formats.file_digest(path)
            done = store.query(sql.BATCH_BY_DIGEST, [digest, "links"])
            if done or digest in seen:
                why = f"already ingested as batch {done[0][0]}" if done else "same file given twice"
                results.append(IngestResult(str(path), 0, skipped=why))
                continue
            seen.add(digest)
            say(f"reading {path}")
            stage = f"stage_links_{i}"
            stages.append(stage)
            found, count = _stage_links(store, path, formats.detect_format(path, fmt), stage)
            problems += found
            total += count
            if not count:
                n = store.scalar(f"SELECT count(*) FROM {stage}")
                staged.append(Staged(str(path), digest, stage, n))
                results.append(IngestResult(str(path), n))
        if problems:
            raise IngestError(problems[:PROBLEM_CAP], total=total)
        say(f"writing {sum(s.rows for s in staged)} links")
        with store.transaction():
            for item, result in zip(staged, [r for r in results if not r.skipped]):
                result.batch, result.labels = _write_links(store, item, origin, cycle)
        return results
    finally:
        for stage in stages:
            store.execute(sql.DROP_TEMP.format(stage=stage))


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
    problems: list[Problem] = []
    table = None
    if particles:
        table, problems = particle_table(store, source, list(enumerate(particles, start=1)))
    stage = "stage_rows"
    text = {c: [_as_text(r.get(c)) for r in rows] for c in TEXT_COLUMNS}
    arrow = pa.table({"row": pa.array(range(1, len(rows) + 1), pa.int64()),
                      **{c: pa.array(v, pa.string()) for c, v in text.items()},
                      "token_id": pa.nulls(len(rows), pa.int64())})
    try:
        store.register("rows_view", arrow)
        store.execute(sql.STAGE_ARROW.format(stage=stage, view="rows_view"))
        store.unregister("rows_view")
        if rows:
            found, total = _check_links(store, Path(source), "rows", stage)
            problems += found
        if problems:
            raise IngestError(problems[:PROBLEM_CAP], total=len(problems))
        result = IngestResult(source, len(rows))
        with store.transaction():
            if rows:
                result.batch, result.labels = _write_links(
                    store, Staged(source, digest, stage, len(rows)), origin, cycle, kind=kind)
            if table is not None:
                batch = result.batch or store.scalar(sql.BATCH_ADD, [kind, source, digest, 0])
                write_particles(store, table, batch)
                result.batch = batch
        return result
    finally:
        store.execute(sql.DROP_TEMP.format(stage=stage))


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list, bool, float)):
        return json.dumps(value)  # never valid where an integer or id is expected
    return str(value)


def _stage_links(store: Store, path: Path, fmt: str, stage: str) -> tuple[list[Problem], int]:
    """Read one file into a temp table of text columns and return (problems, total)."""
    name = str(path)
    try:
        if fmt == "graph":
            table, problems = formats.read_graph_records(path)
            if problems:
                return problems, len(problems)
            store.register("graph_view", _resolve_token_ids(store, table))
            store.execute(sql.STAGE_ARROW.format(stage=stage, view="graph_view"))
            store.unregister("graph_view")
        elif fmt == "jsonl":
            columns = {c: "VARCHAR" for c in TEXT_COLUMNS}
            store.execute(sql.STAGE_JSONL.format(stage=stage, columns=columns), [name])
        else:
            have = formats.csv_header(path) if fmt == "csv" else pq.read_schema(path).names
            if not have:
                raise _ReadFailed("no header")
            missing = [Problem(name, 1 if fmt == "csv" else 0, col, "no such column",
                               f"a column named '{col}'")
                       for col in sql.LINK_FIELDS if col not in have]
            if missing:
                return missing, len(missing)
            select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' if c in have
                               else f'NULL::VARCHAR AS "{c}"' for c in TEXT_COLUMNS)
            statement = sql.STAGE_CSV if fmt == "csv" else sql.STAGE_PARQUET
            columns = {c: "VARCHAR" for c in have}
            store.execute(statement.format(stage=stage, select=select, columns=columns), [name])
    except Exception as exc:  # noqa: BLE001 - any reader failure is re-diagnosed line by line
        return _diagnose(path, fmt, exc)
    if store.scalar(f"SELECT count(*) FROM {stage}") == 0:
        return [Problem(name, 0, "", "an empty file", "at least one link")], 1
    return _check_links(store, path, fmt, stage)


class _ReadFailed(Exception):
    pass


def _diagnose(path: Path, fmt: str, exc: Exception) -> tuple[list[Problem], int]:
    """DuckDB stopped at the first bad byte; find every bad line with the exact scanners."""
    if fmt == "jsonl":
        problems, total = formats.jsonl_problems(path, PROBLEM_CAP)
    elif fmt == "csv":
        problems, total = formats.csv_problems(path, PROBLEM_CAP)
        if not formats.csv_header(path) and not total:
            problems, total = [Problem(str(path), 0, "", "an empty file or no header",
                                       "a header row naming the fields")], 1
    else:
        problems, total = [], 0
    if not total:
        problems, total = [Problem(str(path), 0, "", shorten(str(exc).splitlines()[0], 200),
                                   f"a readable {fmt} file")], 1
    return problems, total


def _resolve_token_ids(store: Store, table: pa.Table) -> pa.Table:
    """.graph records name tokens by u32 id: map known ids to names, new ids to str(id)."""
    known = dict(store.query("SELECT id, name FROM tokens"))
    token_ids = table.column("token_id").to_numpy()
    uniq, inverse = np.unique(token_ids, return_inverse=True)
    names = np.array([known.get(int(t), str(int(t))) for t in uniq], dtype=object)
    return (table.append_column("token", pa.array(names[inverse], type=pa.string()))
                 .append_column("semcon", pa.nulls(len(table), pa.string())))


def _check_links(store: Store, path: Path, fmt: str, stage: str) -> tuple[list[Problem], int]:
    strict = store.meta("token_table") == "set"
    tokens = ", ".join(r[0] for r in store.query("SELECT name FROM tokens ORDER BY id LIMIT 20"))
    params = {"pre": ids.PARTICLE_RE, "pexp": ids.PARTICLE_EXPECTED, "strict": strict,
              "tokens": tokens}
    quick = {k: params[k] for k in ("pre", "strict")}
    if not store.scalar(sql.LINK_ANY_BAD.format(stage=stage), quick):
        return [], 0
    check = sql.LINK_CHECKS.format(stage=stage)
    total = store.scalar(f"SELECT count(*) FROM ({check})", params)
    bad = store.query(f"{check} LIMIT {PROBLEM_CAP}", params)
    lines = _line_map(path, fmt)
    problems = [Problem(str(path), int(lines[row - 1]) if lines is not None else row, fld,
                        "missing" if value is None else shorten(value), expected)
                for row, fld, value, expected in bad]
    return problems, total


def _line_map(path: Path, fmt: str) -> np.ndarray | None:
    """Row → physical line, for formats where the two differ (blank lines, quoted newlines)."""
    if fmt == "jsonl":
        return formats.jsonl_line_numbers(path)
    if fmt == "csv":
        return formats.csv_line_numbers(path)
    return None  # Parquet rows and .graph records are numbered as they are


def _write_links(store: Store, item: Staged, origin: str, cycle: int | None,
                 kind: str = "links") -> tuple[int, int]:
    """Write one staged input inside the caller's transaction; returns (batch id, labels)."""
    batch = store.scalar(sql.BATCH_ADD, [kind, item.source, item.digest, item.rows])
    base = store.scalar(sql.MAX_SEQ)
    params = {"base": base, "origin": origin, "cycle": cycle, "batch": batch}
    store.execute(sql.INSERT_LINKS.format(stage=item.stage), params)
    labels = _write_labels(store, item, {**params, "base": base + item.rows})
    store.execute(sql.INSERT_NEW_TOKENS.format(stage=item.stage))
    store.execute(sql.INSERT_NEURONS.format(stage=item.stage), {"batch": batch})
    return batch, labels


def _write_labels(store: Store, item: Staged, params: dict) -> int:
    """Rows with a `semcon` get a label link semcon → axon(from, to) with the same stake."""
    rows = store.arrow(sql.STAGE_SEMCONS.format(stage=item.stage))
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
        store.execute(sql.INSERT_LABELS.format(stage=item.stage), params)
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
