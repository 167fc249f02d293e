"""Ingest particle and token files: small tables, validated row by row in Python."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from graph import formats, ids, sql
from graph.errors import GraftError, IngestError, Problem, shorten
from graph.ingest import PROBLEM_CAP, IngestResult, Say, _quiet
from graph.store import Store

PARTICLE_FIELDS = ("particle", "name", "aliases", "text")


def ingest_particles(store: Store, paths: Sequence[str | Path], *, fmt: str | None = None,
                     say: Say = _quiet) -> list[IngestResult]:
    """Validate every particle file, then upsert them all in one transaction — or none.

    A row needs `particle` (an id) or `name` (the id is then the hash of the name). Fields
    other than particle/name/aliases/text are kept in `props`. A particle ingested again
    takes the newer row.

    Raises:
        IngestError: every bad value with file, line and field; nothing is written.
    """
    return _ingest(store, paths, fmt, "particles", particle_table, _write_particles, say)


def ingest_tokens(store: Store, paths: Sequence[str | Path], *, fmt: str | None = None,
                  say: Say = _quiet) -> list[IngestResult]:
    """Declare the token table (name, rho, optional u32 id). Once set, links in tokens
    outside it are rejected."""
    return _ingest(store, paths, fmt, "tokens", _token_rows, _write_tokens, say)


def _ingest(store, paths, fmt, kind, parse, write, say) -> list[IngestResult]:
    results, tables, problems = [], [], []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            problems.append(Problem(str(path), 0, "", "no such file", "a readable file"))
            continue
        digest = formats.file_digest(path)
        done = store.query(sql.BATCH_BY_DIGEST, [digest, kind])
        if done:
            results.append(IngestResult(str(path), 0, skipped=f"already ingested as batch {done[0][0]}"))
            continue
        say(f"reading {path}")
        rows, found = formats.read_text_rows(path, formats.detect_format(path, fmt))
        if not found:
            table, found = parse(store, path, rows)
        problems += found
        if not found:
            tables.append((path, digest, table))
            results.append(IngestResult(str(path), table.num_rows))
    if problems:
        raise IngestError(problems[:PROBLEM_CAP], total=len(problems))
    with store.transaction():
        for (path, digest, table), result in zip(tables, [r for r in results if not r.skipped]):
            result.batch = store.scalar(sql.BATCH_ADD, [kind, str(path), digest, table.num_rows])
            write(store, table, result.batch, path)
    return results


def particle_table(store: Store, path: Path | str, rows: list[tuple[int, dict]]) -> tuple[pa.Table, list[Problem]]:
    """Validate particle rows [(line, dict)] into an Arrow table; the last row for an id wins."""
    problems: list[Problem] = []
    out: dict[str, dict] = {}  # last row for a particle wins
    for line, row in rows:
        bad = _check_particle(str(path), line, row)
        if bad:
            problems += bad
            continue
        name = row.get("name")
        pid = row.get("particle") or ids.particle_of_text(name, store.hash_name)
        extra = {k: v for k, v in row.items() if k not in PARTICLE_FIELDS}
        out[pid] = {"particle": pid, "name": name, "aliases": _aliases(row.get("aliases")),
                    "text": row.get("text"),
                    "props": json.dumps(extra, default=str, ensure_ascii=False) if extra else None}
    schema = pa.schema([("particle", pa.string()), ("name", pa.string()),
                        ("aliases", pa.list_(pa.string())), ("text", pa.string()),
                        ("props", pa.string())])
    return pa.Table.from_pylist(list(out.values()), schema=schema), problems


def _check_particle(file: str, line: int, row: dict) -> list[Problem]:
    problems = []
    pid, name = row.get("particle"), row.get("name")
    if pid in (None, "") and not isinstance(name, str):
        problems.append(Problem(file, line, "particle", "missing",
                                f"{ids.PARTICLE_EXPECTED}, or a name to hash"))
    elif pid not in (None, "") and not ids.is_particle(pid):
        problems.append(Problem(file, line, "particle", shorten(pid), ids.PARTICLE_EXPECTED))
    for key in ("name", "text"):
        if row.get(key) is not None and not isinstance(row[key], str):
            problems.append(Problem(file, line, key, shorten(row[key]), "a string"))
    try:
        _aliases(row.get("aliases"))
    except ValueError:
        problems.append(Problem(file, line, "aliases", shorten(row.get("aliases")),
                                "a list of strings (CSV: separated by ';' or a JSON list)"))
    return problems


def _aliases(value) -> list[str]:
    """Aliases as a list: JSON lists as they are; strings (CSV cells) split on ';'."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            value = json.loads(value)
        else:
            return [a.strip() for a in value.split(";") if a.strip()]
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        return value
    raise ValueError(value)


def _write_particles(store: Store, table: pa.Table, batch: int, path: Path) -> None:
    write_particles(store, table, batch)


def write_particles(store: Store, table: pa.Table, batch: int) -> None:
    """Upsert a validated particle table (inside the caller's transaction)."""
    store.register("particle_view", table)
    try:
        store.execute(sql.UPSERT_PARTICLES, {"batch": batch})
    finally:
        store.unregister("particle_view")


def _token_rows(store: Store, path: Path, rows: list[tuple[int, dict]]):
    problems, names, rhos, token_ids = [], [], [], []
    for line, row in rows:
        name, rho, tid = row.get("token"), row.get("rho", 1), row.get("id")
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem(str(path), line, "token", shorten(name), "a token name"))
        try:
            rho = float(rho)
            if not math.isfinite(rho) or rho < 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(Problem(str(path), line, "rho", shorten(row.get("rho")),
                                    "a finite number >= 0"))
        if tid not in (None, ""):
            try:
                tid = int(tid)
                if not 0 <= tid < 2**32:
                    raise ValueError
            except (TypeError, ValueError):
                problems.append(Problem(str(path), line, "id", shorten(row.get("id")),
                                        "an integer in [0, 2^32)"))
        else:
            tid = None
        names.append(name)
        rhos.append(rho)
        token_ids.append(tid)
    table = pa.table({"id": pa.array(token_ids, pa.int64()), "name": pa.array(names, pa.string()),
                      "rho": pa.array(rhos, pa.float64())}) if not problems else None
    return table, problems


def _write_tokens(store: Store, table: pa.Table, batch: int, path: Path) -> None:
    store.register("token_view", table)
    try:
        clash = store.query(sql.TOKEN_ID_CLASH)
        if clash:
            raise GraftError(f"{path}: token {clash[0][0]!r} asks for id {clash[0][2]}, which "
                             f"clashes with token {clash[0][1]!r} already in the store")
        store.execute(sql.UPSERT_TOKENS)
    finally:
        store.unregister("token_view")
    store.set_meta("token_table", "set")


def import_vault(store: Store, root: Path, flavor: str, *, neuron: str = "vault",
                 time: int | None = None, say: Say = _quiet) -> dict:
    """Read a Logseq/Obsidian vault and write its particles and links in one batch.

    A vault imported before is imported again by what changed (graph/vault_write.py
    reimport_rows): notes changed, added or deleted since, links a curator removed withdrawn.

    Returns:
        {"particles", "links", "batch", "skipped"} — skipped says why nothing was written —
        and on a re-import {"changed_notes", "deleted_notes", "withdrawn", "added"}.
    """
    from graph.ingest import ingest_link_rows
    from graph.vault import read_vault
    from graph.vault_write import record_notes, reimport_rows
    say(f"reading {flavor} vault {root}")
    vault = read_vault(Path(root), flavor, neuron=neuron, hash_name=store.hash_name, time=time)
    delta = reimport_rows(store, Path(root), vault, neuron, at=time)
    rows, particles, counts = delta or (vault.links, vault.particles, {})
    if delta is not None and not rows and not particles:
        return {"particles": 0, "links": 0, "batch": None, **counts,
                "skipped": "no note changed since the last import"}
    say(f"writing {len(particles)} particles and {len(rows)} links"
        + (f" ({counts['changed_notes']} notes new or changed, {counts['deleted_notes']} "
           f"deleted; {counts['withdrawn']} links withdrawn)" if counts else ""))
    result = ingest_link_rows(store, rows, source=str(root), kind="vault", particles=particles)
    record_notes(store, Path(root), flavor, vault.particles)   # what `graft vault apply` may change
    return {"particles": len(particles), "links": len(rows), "batch": result.batch,
            "skipped": result.skipped, **counts}
