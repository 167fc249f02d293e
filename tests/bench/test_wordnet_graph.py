"""bench/wordnet_graph.py on a hand-written data.noun snippet in WordNet's format (no download)."""
from __future__ import annotations

import pytest

from bench import wordnet_graph as wg
from finetune.text import Lexicon, documents
from graph import ids
from graph.errors import GraftError

# wndb(5WN): offset lex_filenum ss_type w_cnt [word lex_id]… p_cnt [symbol offset pos s/t]…
# | gloss. Pointers to organism, genus Canis, a verb and "woman" leave the snippet: dropped.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by  
00015388 03 n 02 animal 0 beast 0 003 @ 00004475 n 0000 ~ 02084071 n 0000 ~ 02121620 n 0000 | a living organism characterized by voluntary movement  
02084071 05 n 02 dog 0 domestic_dog 0 002 @ 00015388 n 0000 #m 02083863 n 0000 | a member of the genus Canis that has been domesticated by man; "the dog barked all night"  
02121620 05 n 02 cat 0 true_cat 0 002 @ 00015388 n 0000 + 01263445 v 0101 | feline mammal usually having thick soft fur; "a cat is an animal"  
10114209 18 n 02 frump 0 dog 0 001 @ 10787470 n 0000 | a dull unattractive unpleasant girl or woman  
"""
INDEX_SENSE = """\
dog%1:05:00:: 02084071 1 42
dog%1:18:01:: 10114209 3 0
"""
ANIMAL, DOG, CAT, FRUMP = "00015388-n", "02084071-n", "02121620-n", "10114209-n"


@pytest.fixture
def synsets():
    return wg.parse_data(DATA_NOUN, "n", "data.noun")


def test_parse_data(synsets):
    assert [s.key for s in synsets] == [ANIMAL, DOG, CAT, FRUMP]   # licence header skipped
    dog = synsets[1]
    assert dog.lemmas == ("dog", "domestic dog")
    assert dog.pointers == (("hypernym", ANIMAL), ("member holonym", "02083863-n"))
    assert synsets[2].pointers[1] == ("derivation", "01263445-v")
    assert dog.gloss.endswith('"the dog barked all night"')


def test_parse_data_names_bad_lines():
    bad = DATA_NOUN + "02121620 05 n 02 cat 0 001 @ 00015388 n 0000 | short of a word\n"
    with pytest.raises(GraftError, match="data.noun:6"):
        wg.parse_data(bad, "n", "data.noun")


def test_particles_and_links(synsets):
    graph = wg.build_graph(synsets, wg.parse_senses(INDEX_SENSE))
    by_key = {p["synset"]: p for p in graph.particles}
    # "dog" is a lemma of two synsets: the names say which; the alias goes to the tagged sense.
    assert [(by_key[k]["name"], by_key[k]["aliases"]) for k in (ANIMAL, DOG, CAT, FRUMP)] == [
        ("animal", ["beast"]), ("dog (n.1)", ["dog", "domestic dog"]),
        ("cat", ["true cat"]), ("frump", [])]
    assert by_key[CAT]["text"].startswith("feline mammal")
    pid = {k: wg.particle_id(k) for k in by_key}
    assert all(ids.is_particle(p) and by_key[k]["particle"] == p for k, p in pid.items())
    got = {(r["from"], r["token"], r["to"]) for r in graph.links}
    assert got == {(pid[ANIMAL], "hyponym", pid[DOG]), (pid[ANIMAL], "hyponym", pid[CAT]),
                   (pid[DOG], "hypernym", pid[ANIMAL]), (pid[CAT], "hypernym", pid[ANIMAL])}
    assert all(r["semcon"] == r["token"] and r["amount"] == 1 and r["valence"] == 1
               for r in graph.links)
    assert graph.dropped == {"outside the graph": 4}


def test_corpus_reads_back_into_its_particles(synsets):
    graph = wg.build_graph(synsets, wg.parse_senses(INDEX_SENSE))
    docs = [text for _, text in documents(graph.corpus.splitlines())]
    assert docs[1].splitlines() == ["dog (n.1)", "a member of the genus Canis that has been "
                                    "domesticated by man", "the dog barked all night"]
    lexicon = Lexicon({i: [p["name"], *p["aliases"]] for i, p in enumerate(graph.particles)})
    # Each document opens with its own particle; plain "dog" is the animal, not the frump.
    assert [lexicon.match(d)[0][0] for d in docs] == [0, 1, 2, 3]
    assert lexicon.match(docs[1])[0] == [1, 1]
    assert lexicon.match("a cat is an animal")[0] == [2, 0]


def test_subset_is_the_hyponym_closure(synsets):
    keep = wg.closure({s.key: s for s in synsets}, ANIMAL)
    assert keep == {ANIMAL, DOG, CAT}
    graph = wg.build_graph(synsets, wg.parse_senses(INDEX_SENSE), keep)
    assert [p["name"] for p in graph.particles] == ["animal", "dog", "cat"]  # dog: no rival here
    assert len(graph.links) == 4


@pytest.mark.parametrize("seed", range(4))
def test_holdout_drops_the_inverse(synsets, seed):
    links = wg.build_graph(synsets, {}).links
    train, holdout = wg.split_holdout(links, "hypernym", 0.5, seed)
    assert len(holdout) == 1 and holdout[0]["token"] == "hypernym"
    p, q = holdout[0]["from"], holdout[0]["to"]
    pairs = {(r["from"], r["to"]) for r in train}
    assert (p, q) not in pairs and (q, p) not in pairs      # the answer does not leak
    assert len(train) == 2 and {r["token"] for r in train} == {"hypernym", "hyponym"}
    again = wg.split_holdout(links, "hypernym", 0.5, seed)
    assert again == (train, holdout)
