"""The graph store: one DuckDB file, versioned migrations, and the only module that runs SQL."""
from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from graph import sql
from graph.errors import GraftError, StoreBusy
from graph.ids import HASHES

DEFAULT_DB = "graft.duckdb"
# DuckDB lets one process open a file read-write, and readers cannot open it while a writer
# holds it; graft commands are short, so waiting a little for the other one beats failing.
LOCK_WAIT = float(os.environ.get("GRAFT_LOCK_WAIT", "5"))


def default_path() -> str:
    """The store path: $GRAFT_DB, else ./graft.duckdb."""
    return os.environ.get("GRAFT_DB") or DEFAULT_DB


class Store:
    """A graft store in one DuckDB file. Use as a context manager, or call close()."""

    def __init__(self, path: str | os.PathLike = ":memory:", *, create: bool = True,
                 hash_name: str = "sha256", read_only: bool = False,
                 wait: float | None = None):
        """Open (and migrate) the store at `path`.

        Args:
            path: the DuckDB file; ":memory:" for a throwaway store.
            create: when False, a missing file is an error rather than a new store.
            hash_name: the content hash a new store declares (sha256 or blake3); an existing
                store keeps the hash it declared.
            read_only: open without write access (several readers may share a file).
            wait: seconds to keep retrying while another process holds the file (default
                LOCK_WAIT: $GRAFT_LOCK_WAIT or 5).
        """
        self.path = str(path)
        if self.path != ":memory:" and not create and not Path(self.path).exists():
            raise GraftError(f"{self.path}: no graft store here; run `graft init` or pass --db")
        if hash_name not in HASHES:
            raise GraftError(f"hash {hash_name!r} is not one of {HASHES}")
        self.con = _connect(self.path, read_only, LOCK_WAIT if wait is None else wait)
        if not read_only:
            self._migrate(hash_name)
        self.hash_name = self.meta("hash") or hash_name

    # -- lifecycle ------------------------------------------------------------------------
    def _migrate(self, hash_name: str) -> None:
        self.execute(sql.SCHEMA_VERSION_CREATE)
        have = self.scalar(sql.SCHEMA_VERSION_GET)
        for version, script in enumerate(sql.MIGRATIONS[have:], start=have + 1):
            with self.transaction():
                self.con.execute(script).fetchall()
                self.execute(sql.SCHEMA_VERSION_ADD, [version])
                if version == 1:
                    self.execute(sql.META_SET, ["hash", hash_name])

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN … COMMIT, or ROLLBACK on any exception: writes are all-or-nothing."""
        self.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    # -- small accessors --------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self.query(sql.META_GET, [key])
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute(sql.META_SET, [key, value])

    def query(self, statement: str, params: list | dict | None = None) -> list[tuple]:
        """Run one statement from graph.sql and return all rows."""
        return self.con.execute(statement, _used(statement, params)).fetchall()

    def arrow(self, statement: str, params: list | dict | None = None) -> pa.Table:
        """Run one statement from graph.sql and return an Arrow table."""
        return self.con.sql(statement, params=_used(statement, params) or None).to_arrow_table()

    def arrow_batches(self, statement: str, params: list | dict | None = None,
                      rows: int = 1 << 17) -> pa.RecordBatchReader:
        """Stream a result as Arrow record batches of about `rows` rows."""
        return self.con.sql(statement, params=_used(statement, params) or None).to_arrow_reader(rows)

    def scalar(self, statement: str, params: list | dict | None = None):
        """The first column of the first row (results are always fetched to the end:
        DuckDB refuses new work on a connection with an unfinished result)."""
        return self.con.execute(statement, _used(statement, params)).fetchall()[0][0]

    def execute(self, statement: str, params: list | dict | None = None) -> None:
        self.con.execute(statement, _used(statement, params)).fetchall()

    def names_of(self, particles: list[str]) -> dict[str, str]:
        """The names the particles table holds for these ids (unnamed ones are left out)."""
        return {p: n for p, n in self.of_ids(particles, sql.NAMES_OF) if n}

    def aliases_of(self, particles: list[str]) -> dict[str, list[str]]:
        """The aliases the particles table holds for these ids (ones without are left out)."""
        return {p: list(a) for p, a in self.of_ids(particles, sql.ALIASES_OF)}

    def of_ids(self, particles: list[str], statement: str) -> list[tuple]:
        """Run `statement` against the id list exposed as `id_view(particle)`."""
        self.register("id_view", pa.table({"particle": pa.array(particles, pa.string())}))
        try:
            return self.query(statement)
        finally:
            self.unregister("id_view")

    def register(self, name: str, table: pa.Table) -> None:
        """Expose an Arrow table to SQL under `name` (for staging and id lists)."""
        self.con.register(name, table)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)


# DuckDB's allocator keeps what a big query freed until it next allocates (its jemalloc has
# no background purge by default): after the compiler's link query at 3.14M particles, 1 GB
# held for the rest of the compile. Background threads return it within milliseconds.
_CONFIG = {"allocator_background_threads": True}


def _connect(path: str, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried with backoff for `wait` seconds while another process holds
    the file's lock; any other failure is reported at once."""
    deadline, delay = time.monotonic() + wait, 0.02
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=_CONFIG)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise GraftError(f"{path}: cannot open the store: {exc}") from exc
            left = deadline - time.monotonic()
            if left <= 0:
                holder = re.search(r"held in (.+)$", str(exc).split(". See")[0])
                raise StoreBusy(f"{path}: another process holds the store"
                                f"{f' ({holder.group(1)})' if holder else ''} and DuckDB allows "
                                f"one writer; waited {wait:g} s. Retry when it finishes (`graft "
                                "serve` holds it only per request; `graft cycle` for its "
                                "whole run)") from exc
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.25)
        except duckdb.Error as exc:
            raise GraftError(f"{path}: cannot open the store: {exc}") from exc


def _used(statement: str, params: list | dict | None) -> list | dict:
    """Named parameters that `statement` references: DuckDB rejects unused ones, and one
    parameter dict can then serve the several statements of a step."""
    if not isinstance(params, dict):
        return params or []
    return {k: v for k, v in params.items() if re.search(rf"\${re.escape(k)}\b", statement)}
