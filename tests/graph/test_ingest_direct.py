"""The direct ingest path stores exactly what the staged path stores, and defers to it."""
from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graph import ingest_direct
from graph.errors import IngestError
from graph.ingest import ingest_links
from graph.store import Store
from tests.conftest import link, table_counts, write_jsonl

EDGE = [link("a", "b", time=0, amount=0), link("b", "c", amount=2**127 - 1, time=1),
        link("c", "a", amount=2**127, time=999_999_999_999_999_999, valence=-1),
        link("a", "c", amount="000" + str(2**200), token="hydrogen", neuron="n2", valence=0),
        link("c", "b", amount="007", token="boot", time=5)]


def _tables(store: Store) -> dict:
    return {t: store.query(f"SELECT * EXCLUDE (created) FROM {t} ORDER BY ALL" if t == "batches"
                           else f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("cyberlinks", "tokens", "neurons", "batches")}


def _ingest_both_ways(tmp_path, monkeypatch, paths) -> tuple[dict, dict]:
    """Tables after ingesting `paths` by the direct path, and by the staged path alone."""
    taken = []
    direct = ingest_direct.write_links
    monkeypatch.setattr(ingest_direct, "write_links",
                        lambda *a: taken.append(direct(*a)) or taken[-1])
    with Store(tmp_path / "direct.duckdb") as s:
        ingest_links(s, paths)
        fast = _tables(s)
    assert taken and taken[0] is not None, "the direct path was not taken"
    monkeypatch.setattr(ingest_direct, "write_links", lambda *a: None)
    with Store(tmp_path / "staged.duckdb") as s:
        ingest_links(s, paths)
        return fast, _tables(s)


def test_direct_and_staged_paths_store_the_same(tmp_path, monkeypatch):
    jsonl = write_jsonl(tmp_path / "l.jsonl", EDGE)
    with open(tmp_path / "l.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(EDGE[0]))
        writer.writeheader()
        writer.writerows([{**EDGE[0], "neuron": "two\nlines"}, *EDGE[1:]])
    typed = pa.table({"neuron": ["p", "q"], "from": [EDGE[0]["from"]] * 2,
                      "to": [EDGE[0]["to"]] * 2, "token": ["zeta", "alpha"],
                      "amount": pa.array([0, 2**64 - 1], pa.uint64()),
                      "valence": pa.array([-1, 1], pa.int8()),
                      "time": pa.array([0, 10**18 - 1], pa.int64())})
    pq.write_table(typed, tmp_path / "typed.parquet")
    text = pa.table({k: [str(r[k]) for r in EDGE] for k in EDGE[0]})
    pq.write_table(text, tmp_path / "text.parquet")
    # Several files in one command: new tokens get ids file by file, as before.
    paths = [jsonl, tmp_path / "l.csv", tmp_path / "typed.parquet", tmp_path / "text.parquet"]
    fast, staged = _ingest_both_ways(tmp_path, monkeypatch, paths)
    assert fast == staged
    assert len(fast["cyberlinks"]) == 2 * len(EDGE) + 2 + len(EDGE)
    assert (2**64 - 1) in [row[5] for row in fast["cyberlinks"]]


@pytest.mark.parametrize("column, values, field, expected", [
    ("amount", pa.array([1, -5], pa.int64()), "amount", "non-negative amount"),
    ("valence", pa.array([1, 2], pa.int8()), "valence", "one of -1, 0, 1"),
    ("time", pa.array([1, 10**18], pa.int64()), "time", "below 2^63"),
    ("time", pa.array([1, 2**64 - 1], pa.uint64()), "time", "below 2^63"),
])
def test_typed_parquet_columns_are_checked_like_text(store, tmp_path, column, values, field,
                                                     expected):
    rows = [link("a", "b"), link("b", "c")]
    table = pa.table({k: values if k == column else [r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, tmp_path / "bad.parquet")
    before = table_counts(store)
    with pytest.raises(IngestError) as info:
        ingest_links(store, [tmp_path / "bad.parquet"])
    [problem] = info.value.problems
    assert (problem.line, problem.field) == (2, field) and expected in problem.expected
    assert table_counts(store) == before


def test_escaped_semcon_key_takes_the_staged_path(store, tmp_path):
    """DuckDB reads "sem\\u0063on" as semcon: the direct path must not drop its label."""
    row = link("cat", "animal")
    line = '{"sem\\u0063on": "is-a", ' + write_jsonl(tmp_path / "x.jsonl", [row]).read_text()[1:]
    [result] = ingest_links(store, [write_jsonl(tmp_path / "typed.jsonl", [line.strip()])])
    assert result.rows == 1 and result.labels == 1
    assert result.batch == 1  # the direct attempt rolled back without taking a batch id
    assert store.scalar("SELECT count(*) FROM cyberlinks") == 2
