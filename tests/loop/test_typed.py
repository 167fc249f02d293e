"""Typed triples (graph/triples.py): relations become the store's semcons and the compiled
checkpoint's heads; PyKEEN's shipped datasets are found as files (skipped without pykeen)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from compiler.compile import compile_snapshot
from compiler.types import CompileConfig
from graph import triples as tri
from graph.errors import GraftError
from graph.ids import particle_of_text
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from tests.conftest import write_jsonl

TRIPLES = [("ann", "parent_of", "bob"), ("ann", "parent_of", "cy"), ("bob", "sibling_of", "cy"),
           ("cy", "sibling_of", "bob"), ("dan", "married_to", "ann"), ("ann", "married_to", "dan"),
           ("dan", "parent_of", "bob"), ("bob", "parent_of", "eve")]


def test_triples_become_links_typed_by_relation(tmp_path):
    rows = tri.triples_to_links(TRIPLES[:1], neuron="kg")
    assert rows == [{"neuron": "kg", "from": particle_of_text("ann"),
                     "to": particle_of_text("bob"), "token": "parent_of",
                     "semcon": "parent_of", "amount": 1, "valence": 1, "time": 1}]
    assert [p["name"] for p in tri.triples_to_particles(TRIPLES)] == ["ann", "bob", "cy",
                                                                      "dan", "eve"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb\tc\n\nonly\ttwo\n")
    with pytest.raises(GraftError, match=r"bad.txt:3"):
        tri.read_triples(bad)


def test_relations_become_the_checkpoints_semcons(store, tmp_path):
    ingest_particles(store, [write_jsonl(tmp_path / "p.jsonl", tri.triples_to_particles(TRIPLES))])
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", tri.triples_to_links(TRIPLES))])
    out = tmp_path / "ckpt"
    cert = compile_snapshot(store, take_snapshot(store), out,
                            CompileConfig(d=16, layers=1, check_determinism=False))
    assert cert["pass"]
    record = json.loads((out / "compile.json").read_text())
    names = [s["name"] for s in record["semcons"]]
    assert sorted(names[:-1]) == ["married_to", "parent_of", "sibling_of"] and names[-1] == "⊥"
    assert record["arch"]["used"]["heads"] == 4          # h* = semcons, ⊥ included
    lexicon = (out / "lexicon.json").read_text()
    assert all(n in lexicon for n in ("ann", "bob", "eve"))


@pytest.mark.skipif(importlib.util.find_spec("pykeen") is None, reason="pykeen not installed")
def test_pykeen_ships_kinships_and_umls_as_files():
    for name, relations in (("kinships", 25), ("umls", 46)):
        folder = tri.pykeen_dataset_dir(name)
        train = tri.read_triples(folder / "train.txt")
        assert len({r for _, r, _ in train}) <= relations and len(train) > 5000
    with pytest.raises(GraftError, match="not a dataset"):
        tri.pykeen_dataset_dir("no_such_dataset")
