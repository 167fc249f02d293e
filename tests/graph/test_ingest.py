"""Link ingestion: every format, exact amounts, and every kind of bad input rejected whole."""
from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graph.errors import IngestError
from graph.export import export_links
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_tokens
from graph.snapshot import take_snapshot
from tests.conftest import link, pid, table_counts, write_jsonl

GOOD = [link("a", "b", time=1), link("b", "c", amount=3, time=2), link("c", "a", time=3)]


def _reject(store, path, *, line: int, field: str, expected: str = "") -> IngestError:
    """Ingest must fail naming `line` and `field`, and leave every table as it was."""
    before = table_counts(store)
    with pytest.raises(IngestError) as info:
        ingest_links(store, [path])
    assert table_counts(store) == before
    hits = [p for p in info.value.problems if p.line == line and p.field == field]
    assert hits, f"no problem at line {line} field {field!r}: {info.value}"
    assert expected in hits[0].expected
    assert str(path) in str(info.value)
    return info.value


def test_jsonl_ingest_keeps_order_and_exact_amounts(store, tmp_path):
    huge = 2**200 + 7  # far past u128: kept exactly as a decimal string
    rows = GOOD + [link("a", "c", amount=huge, time=4)]
    [result] = ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", rows)])
    assert result.rows == 4 and result.batch == 1
    from graph.sql import AMOUNT_FLOAT, AMOUNT_TEXT
    got = store.query(f"SELECT src, dst, {AMOUNT_TEXT}, {AMOUNT_FLOAT}, time, amount "
                      "FROM cyberlinks ORDER BY seq")
    assert [(r[0], r[1]) for r in got] == [(r["from"], r["to"]) for r in rows]
    assert got[3][2] == str(huge) and got[3][3] == pytest.approx(float(huge))
    assert got[3][5] is None and got[1][5] == 3  # below 2^127 as HUGEINT, past it as digits
    assert [r[4] for r in got] == [1, 2, 3, 4]


def test_reingest_same_file_is_a_no_op(store, tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", GOOD)
    ingest_links(store, [path])
    before = table_counts(store)
    [again] = ingest_links(store, [path])
    assert again.skipped.startswith("already ingested as batch 1")
    assert table_counts(store) == before


def test_all_four_formats_give_the_same_snapshot(tmp_path):
    from graph.store import Store
    rows = GOOD + [link("a", "c", amount=2**100, time=4)]
    ids = []
    jsonl = write_jsonl(tmp_path / "l.jsonl", rows)
    with Store(tmp_path / "j.duckdb") as s:
        ingest_links(s, [jsonl])
        ids.append(take_snapshot(s).id)
        export_links(s, tmp_path / "l.graph", fmt="graph")
    with open(tmp_path / "l.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = pa.table({k: [str(r[k]) if k == "amount" else r[k] for r in rows] for k in rows[0]})
    pq.write_table(table, tmp_path / "l.parquet")
    for name in ("l.csv", "l.parquet"):
        with Store(tmp_path / f"{name}.duckdb") as s:
            ingest_links(s, [tmp_path / name])
            ids.append(take_snapshot(s).id)
    # .graph holds neurons as 32-byte ids and tokens as u32: register the token id first.
    with Store(tmp_path / "g.duckdb") as s:
        write_jsonl(tmp_path / "tok.jsonl", [{"token": "link", "rho": 1, "id": 0}])
        ingest_tokens(s, [tmp_path / "tok.jsonl"])
        ingest_links(s, [tmp_path / "l.graph"])
        got = s.query("SELECT token, CAST(amount AS VARCHAR) FROM cyberlinks ORDER BY seq")
    assert got[-1] == ("link", str(2**100))
    assert len(set(ids)) == 1, ids


def test_malformed_json_every_line_reported(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], '{"neuron": "x", "from": ', GOOD[1], "[1, 2]"])
    err = _reject(store, path, line=2, field="", expected="one JSON object per line")
    assert any(p.line == 4 and p.expected == "a JSON object" for p in err.problems)


def test_missing_field(store, tmp_path):
    row = dict(GOOD[1])
    del row["amount"]
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], row])
    err = _reject(store, path, line=2, field="amount")
    assert err.problems[0].value == "missing"


def test_wrong_type(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], link("a", "b", amount="ten"),
                                                link("a", "b", time={"h": 1})])
    _reject(store, path, line=2, field="amount", expected="non-negative integer")
    _reject(store, path, line=3, field="time", expected="non-negative integer")


def test_bad_particle_id(store, tmp_path):
    upper = pid("a").upper()
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], link("a", "b", to=upper)])
    err = _reject(store, path, line=2, field="to", expected="64 lowercase hex")
    assert upper[:20] in err.problems[0].value


def test_valence_outside_range(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [link("a", "b", valence=2), GOOD[1]])
    _reject(store, path, line=1, field="valence", expected="one of -1, 0, 1")


def test_negative_amount(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], GOOD[1], link("a", "b", amount=-5)])
    _reject(store, path, line=3, field="amount", expected="non-negative amount")


def test_unknown_token_when_token_table_is_set(store, tmp_path):
    write_jsonl(tmp_path / "tokens.jsonl", [{"token": "link", "rho": 2}])
    ingest_tokens(store, [tmp_path / "tokens.jsonl"])
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], link("a", "b", token="boot")])
    _reject(store, path, line=2, field="token", expected="token table")


def test_non_utf8_bytes(store, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(GOOD[0]).encode()
    path.write_bytes(good + b"\n" + good.replace(b'"tester"', b'"test\xff\xfeer"') + b"\n")
    _reject(store, path, line=2, field="", expected="UTF-8")


def test_truncated_graph_record(store, tmp_path):
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", GOOD)])
    export_links(store, tmp_path / "l.graph", fmt="graph")
    data = (tmp_path / "l.graph").read_bytes()
    (tmp_path / "cut.graph").write_bytes(data[:-5])
    err = _reject(store, tmp_path / "cut.graph", line=3, field="", expected="128-byte records")
    assert "123 bytes" in err.problems[0].value


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.graph", "blank.jsonl"])
def test_empty_file(store, tmp_path, name):
    path = tmp_path / name
    path.write_text("\n\n" if name.startswith("blank") else "")
    _reject(store, path, line=0, field="", expected="")


def test_line_numbers_count_blank_lines_and_quoted_newlines(store, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], "", "   ", GOOD[1], link("a", "b", valence=5)])
    _reject(store, path, line=5, field="valence")
    rows = [GOOD[0], {**GOOD[1], "neuron": "two\nlines"}, link("a", "b", valence=7)]
    with open(tmp_path / "bad.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(GOOD[0]))
        writer.writeheader()
        writer.writerows(rows)
    _reject(store, tmp_path / "bad.csv", line=5, field="valence")


def test_csv_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Spreadsheet exports start with a UTF-8 byte-order mark; it is not part of 'neuron'."""
    from graph.store import Store
    for name, bom in (("plain.csv", ""), ("bom.csv", "\ufeff")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as fh:
            fh.write(bom)
            writer = csv.DictWriter(fh, fieldnames=list(GOOD[0]))
            writer.writeheader()
            writer.writerows(GOOD)
    (tmp_path / "p.csv").write_text("\ufeffparticle,name\n" + pid("a") + ",alpha\n",
                                    encoding="utf-8")
    ids = []
    for name in ("plain.csv", "bom.csv"):
        with Store(tmp_path / f"{name}.duckdb") as s:
            ingest_links(s, [tmp_path / name])
            ids.append(take_snapshot(s).id)
            if name == "bom.csv":
                from graph.ingest_rows import ingest_particles
                ingest_particles(s, [tmp_path / "p.csv"])
                assert s.names_of([pid("a")]) == {pid("a"): "alpha"}
    assert ids[0] == ids[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("\ufeffneuron,from,to,token,amount,valence\nx,a,b,link,1,1\n", encoding="utf-8")
    with Store(tmp_path / "bad.duckdb") as s:
        _reject(s, bad, line=1, field="time", expected="a column named 'time'")


def test_csv_missing_column_and_ragged_rows(store, tmp_path):
    (tmp_path / "nocol.csv").write_text("neuron,from,to,token,amount,valence\nx,a,b,link,1,1\n")
    _reject(store, tmp_path / "nocol.csv", line=1, field="time", expected="a column named 'time'")
    (tmp_path / "ragged.csv").write_text(
        "neuron,from,to,token,amount,valence,time\n"
        f"x,{pid('a')},{pid('b')},link,1,1,1\nx,{pid('a')},{pid('b')},link,1,1,1,extra\n")
    _reject(store, tmp_path / "ragged.csv", line=3, field="", expected="7 fields")


def test_every_problem_reported_up_to_a_cap(store, tmp_path):
    rows = [link("a", "b", valence=9) for _ in range(70)]
    with pytest.raises(IngestError) as info:
        ingest_links(store, [write_jsonl(tmp_path / "bad.jsonl", rows)])
    assert info.value.total == 70 and len(info.value.problems) == 50
    assert "and 20 more problem(s)" in str(info.value)


def test_one_bad_file_rejects_the_whole_command(store, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", GOOD)
    bad = write_jsonl(tmp_path / "bad.jsonl", [link("a", "b", valence=3)])
    before = table_counts(store)
    with pytest.raises(IngestError):
        ingest_links(store, [good, bad])
    assert table_counts(store) == before
    ingest_links(store, [good])  # and the good one still goes in afterwards
    assert store.scalar("SELECT count(*) FROM cyberlinks") == 3


def test_semcon_field_writes_a_label_link(store, tmp_path):
    from graph.ids import axon, particle_of_text
    rows = [link("cat", "animal", semcon="is-a"), link("paw", "cat", semcon="part-of"), GOOD[0]]
    [result] = ingest_links(store, [write_jsonl(tmp_path / "typed.jsonl", rows)])
    assert result.rows == 3 and result.labels == 2
    labels = store.query("SELECT src, dst FROM cyberlinks WHERE seq > 3 ORDER BY seq")
    assert labels == [(particle_of_text("is-a"), axon(pid("cat"), pid("animal"))),
                      (particle_of_text("part-of"), axon(pid("paw"), pid("cat")))]
    names = dict(store.query("SELECT name, particle FROM particles"))
    assert names["is-a"] == particle_of_text("is-a")


def test_sql_axon_matches_python_axon(store, tmp_path):
    from graph.ids import axon
    from graph.snapshot import snapshot_links
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", GOOD)])
    table = snapshot_links(store, take_snapshot(store))
    for row in table.to_pylist():
        assert row["axon"] == axon(row["src"], row["dst"])


def test_rows_from_python_are_checked_like_files(store):
    from graph.ingest import ingest_link_rows
    bad = [GOOD[0], link("a", "b", amount=1.5)]
    with pytest.raises(IngestError) as info:
        ingest_link_rows(store, bad, source="proposals")
    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.field) == ("proposals", 2, "amount")
    assert store.scalar("SELECT count(*) FROM cyberlinks") == 0
    particles = [{"name": "a", "text": "first"}, {"name": "b"}]
    result = ingest_link_rows(store, GOOD, source="vault", kind="vault", particles=particles)
    assert result.rows == 3 and result.batch is not None  # (a rolled-back batch id is not reused)
    assert store.query("SELECT text FROM particles WHERE particle = ?", [pid("a")]) == [("first",)]
    again = ingest_link_rows(store, GOOD, source="vault", kind="vault", particles=particles)
    assert again.skipped.startswith("already ingested")


def test_amount_boundaries_and_leading_zeros(store, tmp_path):
    from graph.sql import AMOUNT_TEXT
    edge = [2**128 - 1, 2**128, "007", "000" + str(2**130)]
    rows = [link("a", "b", amount=a, time=i) for i, a in enumerate(edge)]
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", rows)])
    got = [r[0] for r in store.query(f"SELECT {AMOUNT_TEXT} FROM cyberlinks ORDER BY seq")]
    assert got == [str(2**128 - 1), str(2**128), "7", str(2**130)]
