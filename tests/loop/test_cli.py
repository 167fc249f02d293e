"""The `graft` command line, end to end on real stores (in-process: main(argv))."""
from __future__ import annotations

import json

from loop.cli import main
from tests.conftest import CYBERWIKI, FIXTURES, REPO, link, needs_cyberwiki, write_jsonl


def graft(capsys, db, *argv) -> tuple[int, str, str]:
    rc = main(["--db", str(db), *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def stats(capsys, db) -> dict:
    rc, out, _ = graft(capsys, db, "stats", "--json")
    assert rc == 0
    return json.loads(out)


def test_ingest_stats_snapshot_export(capsys, tmp_path):
    db = tmp_path / "g.duckdb"
    assert graft(capsys, db, "init", "--json")[0] == 0
    rc, out, _ = graft(capsys, db, "ingest", "particles", FIXTURES / "typed.particles.jsonl")
    assert rc == 0 and "8 particles as batch 1" in out
    rc, out, _ = graft(capsys, db, "ingest", "links", FIXTURES / "typed.links.jsonl", "--json")
    assert rc == 0 and json.loads(out)["results"][0]["labels"] == 6
    got = stats(capsys, db)
    assert {"particles", "links", "neurons", "semcons"} <= set(got)
    assert got["links"] == 13 and got["neurons"] == 1
    assert got["semcons"] == 3  # is-a, part-of, ⊥
    assert got["top"][0]["name"] in {"mammal", "animal", "cat", "dog"}
    rc, out, _ = graft(capsys, db, "snapshot", "--json")
    snap = json.loads(out)
    assert rc == 0 and snap["links"] == 13
    rc, out, _ = graft(capsys, db, "export", "links", tmp_path / "out.jsonl", "--snapshot", snap["id"][:12])
    assert rc == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 13


def test_bad_row_rejected_with_its_line_and_stats_unchanged(capsys, tmp_path):
    db = tmp_path / "g.duckdb"
    graft(capsys, db, "ingest", "links", FIXTURES / "chain.links.jsonl")
    before = stats(capsys, db)
    rows = [link("a", "b"), link("b", "c"), link("c", "d", valence=4), link("d", "e")]
    rc, _, err = graft(capsys, db, "ingest", "links", write_jsonl(tmp_path / "bad.jsonl", rows))
    assert rc == 1
    assert "graft: error: rejected: 1 problem(s); nothing was written" in err
    assert "bad.jsonl:3: field 'valence' got '4'; expected one of -1, 0, 1" in err
    assert stats(capsys, db) == before


def test_missing_store_is_a_clear_error(capsys, tmp_path):
    rc, _, err = graft(capsys, tmp_path / "nope.duckdb", "stats")
    assert rc == 1 and "no graft store here" in err


def test_graph_format_round_trip_through_the_cli(capsys, tmp_path):
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    graft(capsys, a, "ingest", "links", FIXTURES / "communities.links.jsonl")
    assert graft(capsys, a, "export", "links", tmp_path / "c.graph", "--format", "graph")[0] == 0
    assert (tmp_path / "c.graph").stat().st_size == 15 * 128
    write_jsonl(tmp_path / "tokens.jsonl", [{"token": "link", "id": 0}])
    graft(capsys, b, "ingest", "tokens", tmp_path / "tokens.jsonl")
    assert graft(capsys, b, "ingest", "links", tmp_path / "c.graph")[0] == 0
    graft(capsys, b, "export", "links", tmp_path / "back.graph", "--format", "graph")
    assert (tmp_path / "back.graph").read_bytes() == (tmp_path / "c.graph").read_bytes()


def test_vault_flavours_give_the_same_snapshot(capsys, tmp_path):
    ids = []
    for flavor in ("logseq", "obsidian"):
        db = tmp_path / f"{flavor}.duckdb"
        vault = REPO / "tests" / "fixtures" / f"vault_{flavor}"
        rc, out, _ = graft(capsys, db, "import", "vault", vault, "--flavor", flavor, "--time", 7)
        assert rc == 0 and "20 particles, 47 links" in out
        ids.append(json.loads(graft(capsys, db, "snapshot", "--json")[1])["id"])
        got = stats(capsys, db)
        assert (got["particles"], got["links"]) == (20, 47)
    assert ids[0] == ids[1]


def test_demo_builds_ingests_and_prints_stats(capsys, tmp_path, monkeypatch):
    from loop import demo
    monkeypatch.setattr(demo, "DATA_DIR", tmp_path / "numpy-docs")
    rc, out, err = graft(capsys, tmp_path / "demo.duckdb", "demo")
    assert rc == 0, err
    assert "particles" in out and "top 10 particles by focus" in out
    assert "report: " in out and (tmp_path / "numpy-docs-cycles" / "report.html").exists()
    hidden = (tmp_path / "numpy-docs" / "hidden_links.jsonl").read_text().splitlines()
    assert len(hidden) == round(0.1 * 5322)                 # hidden, then ranked every cycle
    assert "cycle 2: graft" in out and "unlinked mentions" in out
    got = stats(capsys, tmp_path / "demo.duckdb")
    assert got["particles"] > 1000 and got["semcons"] == 3  # see-also, member-of, ⊥
    assert got["links"] > 5322 - len(hidden)                # (+ label links, accepted links)


@needs_cyberwiki
def test_cyberwiki_counts_and_one_bad_row(capsys, tmp_path):
    db = tmp_path / "wiki.duckdb"
    assert graft(capsys, db, "ingest", "particles", CYBERWIKI / "particles.jsonl")[0] == 0
    assert graft(capsys, db, "ingest", "links", CYBERWIKI / "train_links.jsonl")[0] == 0
    got = stats(capsys, db)
    assert (got["particles"], got["links"], got["neurons"]) == (6666, 16701, 1)
    lines = (CYBERWIKI / "train_links.jsonl").read_text().splitlines()
    bad = json.loads(lines[41])
    bad["amount"] = -1
    lines[41] = json.dumps(bad)
    (tmp_path / "one_bad.jsonl").write_text("\n".join(lines) + "\n")
    rc, _, err = graft(capsys, db, "ingest", "links", tmp_path / "one_bad.jsonl")
    assert rc == 1 and "one_bad.jsonl:42: field 'amount' got '-1'" in err
    assert stats(capsys, db) == got
