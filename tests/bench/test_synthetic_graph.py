"""bench/synthetic_graph.py at a small size: seeded, ingestible, and the texts say what the
generator says they say (own targets named, held-out links among them)."""
from __future__ import annotations

import json

import numpy as np

from bench import synthetic_graph as sg
from finetune.text import Lexicon
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.store import Store
from loop.evaluate import load_graph


def test_names_are_unique_pseudo_words():
    names = [sg.name_of(i) for i in range(5000)]
    assert len(set(names)) == len(names) and sg.name_of(0) == "bababa"
    assert all(n.isalpha() and len(n) >= 6 for n in names)


def test_a_small_graph_is_seeded_ingestible_and_its_texts_name_the_held_out_links(tmp_path):
    a = sg.generate(tmp_path / "a", 3000, 2700, 200, 0.2, seed=5)
    sg.generate(tmp_path / "b", 3000, 2700, 200, 0.2, seed=5)
    for name in ("links.parquet", "holdout.jsonl", "particles.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["texts"] == 200 and a["held_out"] > 0 and a["named"] < a["particles"]
    with Store(tmp_path / "g.duckdb") as store:
        ingest_particles(store, [tmp_path / "a" / "particles.jsonl"])
        ingest_links(store, [tmp_path / "a" / "links.parquet"])
        graph = load_graph(store)
        (links,) = store.query("SELECT count(*) FROM cyberlinks")[0]
    assert links >= a["links"] and len(graph.texts) == 200    # (typed links add their semcon's)
    pos = graph.position()
    lexicon = Lexicon(graph.names)
    held = [json.loads(x) for x in (tmp_path / "a" / "holdout.jsonl").read_text().splitlines()]
    for h in held:                         # the page names what was held out of its links
        p, q = pos[h["from"]], pos[h["to"]]
        assert q in set(lexicon.match(graph.texts[p])[0])
        assert not graph.known[p, q]
    linked = 0                             # and most of its remaining targets
    for p, text in graph.texts.items():
        said = set(lexicon.match(text)[0])
        own = set(np.flatnonzero(graph.known[[p]].toarray()[0]).tolist())
        linked += len(said & own)
    assert linked > 0.5 * sum(graph.known[[p]].sum() for p in graph.texts)
