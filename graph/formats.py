"""Input files: format detection, digests, the 128-byte .graph record, and exact line numbers.

The fast path reads files with DuckDB; this module holds what DuckDB cannot tell us: which
physical line a row came from, and every syntax error in a file (DuckDB stops at the first).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import blake3
import numpy as np
import pyarrow as pa

from graph.errors import GraftError, Problem, shorten

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet", ".graph": "graph"}

# The .graph record (DESIGN §1): ν 32B · p 32B · q 32B · token u32 · amount u128 ·
# valence i8 · height u64 · 3 pad, little endian — 128 bytes, no alignment padding inside.
GRAPH_RECORD = np.dtype([
    ("neuron", "u1", 32), ("src", "u1", 32), ("dst", "u1", 32), ("token", "<u4"),
    ("amount_lo", "<u8"), ("amount_hi", "<u8"), ("valence", "i1"), ("height", "<u8"),
    ("pad", "V3"),
])
assert GRAPH_RECORD.itemsize == 128


def detect_format(path: Path, given: str | None = None) -> str:
    """The format named by `given`, else by the file's extension."""
    if given:
        if given not in set(FORMATS.values()):
            raise GraftError(f"{path}: unknown format {given!r}; expected one of "
                             f"{sorted(set(FORMATS.values()))}")
        return given
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise GraftError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                         f"expected one of {sorted(FORMATS)} or pass --format")
    return fmt


def file_digest(path: Path) -> str:
    """BLAKE3 of the file's bytes: the identity of an ingested batch."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            hasher.update(chunk)
    return hasher.hexdigest()


# -- line numbers --------------------------------------------------------------------------
def json_lines(path: Path) -> Iterator[tuple[int, str, object]]:
    """(line number, line, its JSON value — or the json.JSONDecodeError parsing raised) of
    each non-blank line of a UTF-8 text file; a file that cannot be read is a GraftError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise GraftError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise GraftError(f"{path}: cannot read it: {exc}") from None
    for number, text in enumerate(lines, 1):
        if text.strip():
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                value = exc
            yield number, text, value


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw


def jsonl_problems(path: Path, cap: int) -> tuple[list[Problem], int]:
    """Every line of a JSONL file that is not UTF-8 or not one JSON object (first `cap`)."""
    problems: list[Problem] = []
    total = 0
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad = raw[max(exc.start - 8, 0): exc.end + 8]
            problem = Problem(str(path), number, "", f"bytes {shorten(bad)} (not UTF-8)",
                              "UTF-8 text")
        except json.JSONDecodeError as exc:
            problem = Problem(str(path), number, "", f"{shorten(raw.decode('utf-8').strip())} "
                              f"({exc.msg} at column {exc.colno})", "one JSON object per line")
        else:
            if isinstance(value, dict):
                continue
            problem = Problem(str(path), number, "", shorten(value), "a JSON object")
        total += 1
        if len(problems) < cap:
            problems.append(problem)
    return problems, total


def jsonl_line_numbers(path: Path) -> np.ndarray:
    """Line number of each non-blank line, in order: row k (1-based) is at result[k - 1]."""
    return np.array([n for n, raw in _lines(path) if raw.strip()], dtype=np.int64)


def csv_header(path: Path) -> list[str]:
    """The header row of a CSV file (UTF-8, comma-separated; a byte-order mark, which
    spreadsheet exports write, is not part of the first name)."""
    with open(path, newline="", encoding="utf-8-sig", errors="strict") as fh:
        try:
            return next(csv.reader(fh))
        except StopIteration:
            return []
        except UnicodeDecodeError:
            return []


def csv_problems(path: Path, cap: int) -> tuple[list[Problem], int]:
    """Every CSV record that is not UTF-8 or has the wrong number of fields (first `cap`)."""
    problems: list[Problem] = []
    total = 0
    width = None
    for number, raw in _lines(path):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            total += 1
            if len(problems) < cap:
                bad = raw[max(exc.start - 8, 0): exc.end + 8]
                problems.append(Problem(str(path), number, "", f"bytes {shorten(bad)} (not UTF-8)",
                                        "UTF-8 text"))
    if total:
        return problems, total
    for start, record in _csv_records(path):
        if not record:
            continue
        if width is None:
            width = len(record)
        elif len(record) != width:
            total += 1
            if len(problems) < cap:
                problems.append(Problem(str(path), start, "", f"{len(record)} fields",
                                        f"{width} fields, as in the header"))
    return problems, total


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) of each CSV record; a quoted field may span lines."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        previous_end = 0
        for record in reader:
            yield previous_end + 1, record
            previous_end = reader.line_num


def csv_line_numbers(path: Path) -> np.ndarray:
    """First line of each non-empty data record: row k (1-based) is at result[k - 1]."""
    starts = [start for start, record in _csv_records(path) if record]
    return np.array(starts[1:], dtype=np.int64)  # drop the header


# -- the .graph record format ---------------------------------------------------------------
def _hex_column(raw: np.ndarray) -> pa.Array:
    """(N, 32) uint8 → N strings of 64 lowercase hex chars, without a Python loop per row."""
    text = raw.tobytes().hex().encode("ascii")
    offsets = np.arange(0, len(text) + 1, 64, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), len(raw),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(text)]).cast(pa.string())


def _amount_column(lo: np.ndarray, hi: np.ndarray) -> pa.Array:
    """u128 stakes as exact decimal strings (Python ints only where the high word is set)."""
    out = pa.array(lo, type=pa.uint64()).cast(pa.string()).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(hi):
        out[i] = str((int(hi[i]) << 64) | int(lo[i]))
    return pa.array(out, type=pa.string())


def read_graph_records(path: Path) -> tuple[pa.Table | None, list[Problem]]:
    """Decode a .graph file into text columns (row, neuron, from, to, token_id, amount, …).

    A truncated file is reported, not half-read: the whole file is rejected.
    """
    size = path.stat().st_size
    if size == 0:
        return None, [Problem(str(path), 0, "", "an empty file", "at least one 128-byte record")]
    if size % GRAPH_RECORD.itemsize:
        whole = size // GRAPH_RECORD.itemsize
        return None, [Problem(str(path), whole + 1, "",
                              f"a truncated record of {size % GRAPH_RECORD.itemsize} bytes at byte {whole * 128}",
                              "128-byte records (the file length must be a multiple of 128)")]
    records = np.fromfile(path, dtype=GRAPH_RECORD)
    n = len(records)
    table = pa.table({
        "row": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "neuron": _hex_column(records["neuron"]),
        "from": _hex_column(records["src"]),
        "to": _hex_column(records["dst"]),
        "token_id": pa.array(records["token"].astype(np.int64)),
        "amount": _amount_column(records["amount_lo"], records["amount_hi"]),
        "valence": pa.array(records["valence"].astype(np.int64)).cast(pa.string()),
        "time": pa.array(records["height"], type=pa.uint64()).cast(pa.string()),
    })
    return table, []


def write_graph_records(path: Path, columns: dict[str, list]) -> int:
    """Write .graph records from equal-length lists: neuron/from/to (64-hex), token_id,
    amount (int < 2^128), valence, time (int < 2^64). Returns the record count."""
    n = len(columns["from"])
    records = np.zeros(n, dtype=GRAPH_RECORD)
    for field, key in (("neuron", "neuron"), ("src", "from"), ("dst", "to")):
        joined = bytes.fromhex("".join(columns[key]))
        records[field] = np.frombuffer(joined, dtype=np.uint8).reshape(n, 32)
    records["token"] = columns["token_id"]
    amounts = [int(a) for a in columns["amount"]]
    records["amount_lo"] = [a & ((1 << 64) - 1) for a in amounts]
    records["amount_hi"] = [a >> 64 for a in amounts]
    records["valence"] = columns["valence"]
    records["height"] = columns["time"]
    records.tofile(path)
    return n


def read_text_rows(path: Path, fmt: str) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Small files (particles, tokens) read in Python: [(line, row dict)] and syntax problems."""
    if fmt == "jsonl":
        problems, _ = jsonl_problems(path, cap=1 << 30)
        if problems:
            return [], problems
        rows = [(n, json.loads(raw)) for n, raw in _lines(path) if raw.strip()]
    elif fmt == "csv":
        problems, _ = csv_problems(path, cap=1 << 30)
        if problems:
            return [], problems
        records = [(s, r) for s, r in _csv_records(path) if r]
        if not records:
            rows = []
        else:
            header = records[0][1]
            rows = [(s, dict(zip(header, r))) for s, r in records[1:]]
    elif fmt == "parquet":
        import pyarrow.parquet as pq
        try:
            rows = list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except (pa.ArrowException, OSError) as exc:
            return [], [Problem(str(path), 0, "", shorten(str(exc)), "a readable Parquet file")]
    else:
        raise GraftError(f"{path}: {fmt} files hold links, not particles or tokens")
    if not rows:
        return [], [Problem(str(path), 0, "", "an empty file", "at least one row")]
    return rows, []

