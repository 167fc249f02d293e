"""Text → particles: longest match of names and aliases, case-insensitive, on word
boundaries; coverage counted by hand."""
from __future__ import annotations

import json

import pytest

from finetune.text import Lexicon, corpus_documents, corpus_sequences, documents, units
from graph.errors import GraftError

# token ids as a checkpoint numbers them: 4 specials first
LEX = Lexicon({4: ["cat"], 5: ["cat food", "kibble"], 6: ["$a"], 7: ["a"], 8: ["new york"],
               9: ["York"]})


def test_units_split_words_and_marks():
    assert units("The $A-token, x_y!") == ["the", "$", "a", "-", "token", ",", "x_y", "!"]


def test_longest_match_wins_and_case_is_ignored():
    ids, words, matched = LEX.match("Cat food for the CAT in New York")
    assert ids == [5, 4, 8]
    assert (words, matched) == (8, 5)       # cat food | cat | new york


def test_aliases_match_and_word_boundaries_hold():
    assert LEX.match("some kibble")[0] == [5]
    assert LEX.match("cats category concatenate")[0] == []   # never inside a word
    assert LEX.match("$A and a")[0] == [6, 7]                 # "$a" claims its "a"
    assert LEX.match("york")[0] == [9]


def test_shared_phrase_goes_to_the_first_particle():
    lex = Lexicon({4: ["x", "same"], 5: ["same"]})
    assert lex.match("same")[0] == [4]
    assert lex.ambiguous == 1


def test_documents_are_runs_of_non_blank_lines():
    assert list(documents(["a\n", "b\n", "\n", "\n", "c\n"])) == [(1, "a\nb"), (5, "c")]


def test_corpus_sequences_and_coverage(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The cat ate cat food.\n\nNothing here.\n\ncat\n\nNew York, york!\n")
    seqs = corpus_sequences(path, LEX)
    assert seqs.ids == [[4, 5], [8, 9]]          # "cat" alone: too short to predict from
    assert seqs.lines == [1, 7]
    c = seqs.coverage
    assert (c.words, c.matched, c.particles, c.sequences, c.tokens) == (11, 7, 4, 2, 4)
    assert c.share == pytest.approx(7 / 11)


def test_a_document_per_line_paragraphs_and_jsonl(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("cat food and cat\nNew York\nkibble, cat\n")
    # no blank line: one document per line (read as one document it held nothing out)
    assert corpus_documents(lines) == [(1, "cat food and cat"), (2, "New York"),
                                       (3, "kibble, cat")]
    assert corpus_sequences(lines, LEX).ids == [[5, 4], [5, 4]]   # "New York": one particle
    assert corpus_documents(lines, "paragraphs") == [(1, "cat food and cat\nNew York\n"
                                                         "kibble, cat")]
    rows = tmp_path / "docs.jsonl"
    rows.write_text(json.dumps({"title": "cat", "text": "eats cat food"}) + "\n\n"
                    + json.dumps({"text": "kibble and cat"}) + "\n", encoding="utf-8")
    assert corpus_documents(rows) == [(1, "cat\neats cat food"), (3, "kibble and cat")]
    assert corpus_sequences(rows, LEX).lines == [1, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 3}\nnot json\n')
    with pytest.raises(GraftError, match=r"bad.jsonl:1: field 'text'.*\n.*bad.jsonl:2: not JSON"):
        corpus_documents(bad)
    with pytest.raises(GraftError, match="--docs pages"):
        corpus_documents(lines, "pages")


def test_non_utf8_corpus_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"cat\ncat food\n\xff\xfe\n")
    with pytest.raises(GraftError, match=r"bad.txt:3: not UTF-8"):
        corpus_sequences(path, LEX)


def test_checkpoint_lexicon_has_names_and_aliases(tmp_path):
    (tmp_path / "lexicon.json").write_text(json.dumps([["cat", "kitty"], ["dog"], []]))
    lex = Lexicon.of_checkpoint(tmp_path)
    assert lex.match("Kitty dog cat")[0] == [4, 5, 4]
    with pytest.raises(GraftError, match="lexicon.json: missing"):
        Lexicon.of_checkpoint(tmp_path / "nowhere")
