"""Pass 1: vocab order, token names, and a tokenizer AutoTokenizer loads."""
from __future__ import annotations

from transformers import AutoTokenizer

from compiler.types import SPECIAL_TOKENS
from compiler.vocab import build_vocab, make_tokenizer, save_tokenizer, token_of
from graph.ingest import ingest_link_rows
from graph.snapshot import take_snapshot
from tests.conftest import ingest_fixture, link, pid


def test_chain_vocab_is_first_appearance_after_specials(store):
    ingest_fixture(store, "chain")
    vocab = build_vocab(store, take_snapshot(store))
    assert vocab.tokens == [*SPECIAL_TOKENS, "a", "b", "c", "d", "e"]
    assert vocab.particles == [pid(n) for n in "abcde"]
    assert vocab.offset == 4 and vocab.adjacency.shape == (5, 5)


def test_names_with_spaces_duplicates_and_unnamed(store):
    particles = [{"name": "green tea"}, {"particle": pid("x"), "name": "dup"},
                 {"particle": pid("y"), "name": "dup"}]
    rows = [link("green tea", "x", time=1), link("x", "y", time=2), link("y", "nameless", time=3)]
    ingest_link_rows(store, rows, source="t", particles=particles)
    vocab = build_vocab(store, take_snapshot(store))
    assert vocab.tokens[4:] == ["green▁tea", f"dup#{pid('x')[:8]}", f"dup#{pid('y')[:8]}",
                                pid("nameless")]
    assert token_of("  a \t b ") == "a▁b"


def test_tokenizer_round_trip_through_auto_tokenizer(store, tmp_path):
    ingest_fixture(store, "typed")
    vocab = build_vocab(store, take_snapshot(store))
    make_tokenizer(vocab).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok("cat dog wolf")["input_ids"]
    assert ids == [vocab.tokens.index("cat"), vocab.tokens.index("dog"), 1]  # wolf → <unk>
    assert tok.decode(ids[:2]) == "cat dog"


def test_save_tokenizer_writes_what_save_pretrained_writes(store, tmp_path):
    particles = [{"name": "grüner tee"}, {"name": "茶"}, {"name": 'quote"back\\slash'}]
    rows = [link("grüner tee", "茶", time=1), link("茶", 'quote"back\\slash', time=2)]
    ingest_link_rows(store, rows, source="t", particles=particles)
    vocab = build_vocab(store, take_snapshot(store))
    make_tokenizer(vocab).save_pretrained(tmp_path / "hf")
    save_tokenizer(vocab, tmp_path / "ours")
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ours").iterdir())
    for name in names:
        assert (tmp_path / "hf" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    tok = AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert tok("茶 grüner▁tee")["input_ids"] == [vocab.tokens.index("茶"), vocab.tokens.index("grüner▁tee")]
