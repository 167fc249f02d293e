"""`graft suggest`: a new note, or a note of the store without links, gets the latest cycle's
proposals; what it links already and what a curator rejected for it are never proposed."""
from __future__ import annotations

import json

import pytest

from graph.store import Store


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    from tests.conftest import write_wiki
    from tests.loop.test_cycle import graft
    root = tmp_path_factory.mktemp("suggest")
    particles, links, _ = write_wiki(root, pages=50)
    for kind, path in (("particles", particles), ("links", links)):
        assert graft(root, "ingest", kind, str(path)).returncode == 0
    run = graft(root, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "50", "--d",
                "16", "--layers", "1", "--curator", "--out", str(root / "out"))
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def test_a_new_note_gets_the_pages_it_names(wiki):
    from tests.loop.test_cycle import graft
    note = wiki / "idea.md"
    note.write_text("---\ntags: [draft]\n---\nThinking about page07 and page11, "
                    "after [[page03]].\n")
    run = graft(wiki, "suggest", str(note), "--top", "5", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    names = [s["name"] for s in out["suggestions"]]
    assert out["cycle"] == 1 and not out["in_store"] and out["linked"] == ["draft", "page03"]
    assert set(names[:2]) == {"page07", "page11"}              # named, so first
    assert "page03" not in names and "idea" not in names      # linked already; itself
    assert all(0 <= s["confidence"] <= 1 for s in out["suggestions"])
    assert out["suggestions"][0]["lines"] == ["Thinking about page07 and page11, after page03."]
    text = graft(wiki, "suggest", str(note), "--top", "5", "--device", "cpu")
    assert text.returncode == 0 and "[[page07]]" in text.stdout


def test_a_stored_note_keeps_its_links_and_rejections_out(wiki):
    from loop.extract import Proposal
    from loop.review import add_proposals, decide
    from loop.suggest import suggest
    from tests.conftest import pid
    with Store(wiki / "g.duckdb") as store:
        linked = {d for (d,) in store.query("SELECT dst FROM cyberlinks WHERE src = $s",
                                            {"s": pid("page00")})}
        text = store.scalar("SELECT text FROM particles WHERE name = 'page00'")
        first = suggest(store, wiki / "g.duckdb", "page00", text, top=10)
        assert first["in_store"] and not linked & {s["dst"] for s in first["suggestions"]}
        top = first["suggestions"][0]["dst"]
        add_proposals(store, [Proposal(pid("page00"), top, 0.0, 0.1, 0.0, 0.0, None, None, {})],
                      0, "hand", None)
        [i] = [i for (i,) in store.query("SELECT id FROM proposals WHERE src = $s AND dst = $d "
                                         "AND cycle = 0", {"s": pid("page00"), "d": top})]
        decide(store, reject=[i])
        again = suggest(store, wiki / "g.duckdb", "page00", text, top=10)
    assert top not in {s["dst"] for s in again["suggestions"]}


def test_a_note_is_read_as_the_importer_reads_a_page_whatever_its_name():
    from loop.suggest import read_note
    text, linked, links = read_note("inbox/2024: idea?", "---\ntags: [x]\n---\nSee [[a/B]] and "
                             "`code [[c]]`, #t and [[inbox/2024: idea?]].\n")
    assert text == "See a/B and `code [[c]]`, t and inbox/2024: idea?."   # as imported
    assert linked == ["b", "t", "x"]          # Obsidian links by the last part; not itself
    assert links == 2                         # [[a/B]] and #t; x is a front-matter tag
