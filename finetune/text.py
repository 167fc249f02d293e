"""Text → particles: the longest particle name or alias at each point of the text.

Text and names are cut into units the same way — runs of word characters, and each other
non-space character on its own — and lowercased, so matching is case-insensitive and always
on word boundaries ("cat" never matches inside "cats"; "$a" matches "$A" but "a" alone does
not match the "a" of "$a", which the longer name claims first). At each unit the longest
phrase that is a name or alias wins; words no phrase covers are dropped (DESIGN §3).

A document is a run of non-blank lines (a cyberwiki page: its title line, then its
paragraphs), a line, or a JSONL row's text (corpus_documents); each becomes one particle
sequence.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from graph.checkpoint import LEXICON, SPECIAL_TOKENS

UNIT = re.compile(r"\w+|[^\w\s]")


def units(text: str) -> list[str]:
    return UNIT.findall(text.lower())


@dataclass(frozen=True)
class Coverage:
    """How much of a text the lexicon explains."""

    words: int              # word units seen (punctuation not counted)
    matched: int            # word units inside a matched phrase
    particles: int          # distinct particles seen
    sequences: int          # sequences produced (documents with at least `min_len` particles)
    tokens: int             # particle tokens in those sequences

    @property
    def share(self) -> float:
        return self.matched / self.words if self.words else 0.0

    def to_json(self) -> dict:
        return {**self.__dict__, "share": round(self.share, 4)}


class Lexicon:
    """Phrases (unit tuples) → token ids, for longest-match tokenisation.

    `entries` maps a token id to the names that denote it (name first, then aliases). A
    phrase two particles share goes to the lower token id (the earlier particle in vocab
    order); `ambiguous` counts such phrases.
    """

    def __init__(self, entries: dict[int, list[str]]):
        self.phrases: dict[tuple[str, ...], int] = {}
        self.ambiguous = 0
        for token in sorted(entries):
            for name in entries[token]:
                key = tuple(units(name))
                if not key:
                    continue
                if key in self.phrases and self.phrases[key] != token:
                    self.ambiguous += 1
                    continue
                self.phrases[key] = token
        self.longest: dict[str, int] = {}
        for key in self.phrases:
            self.longest[key[0]] = max(self.longest.get(key[0], 0), len(key))

    @classmethod
    def of_checkpoint(cls, model_dir: Path) -> "Lexicon":
        """The lexicon a compiled checkpoint carries (lexicon.json, written by `compile`)."""
        path = Path(model_dir) / LEXICON
        if not path.exists():
            from graph.errors import GraftError
            raise GraftError(f"{path}: missing — not a graft-compiled checkpoint, or compiled "
                             "before lexicons were written (recompile it)")
        rows = json.loads(path.read_text())
        return cls({i + len(SPECIAL_TOKENS): names for i, names in enumerate(rows)})

    def match(self, text: str) -> tuple[list[int], int, int]:
        """(token ids, word units, matched word units) of one text."""
        us = units(text)
        out, matched = [], 0
        for token, phrase in self._scan(us):
            out.append(token)
            matched += sum(1 for u in phrase if _is_word(u))
        words = sum(1 for u in us if _is_word(u))
        return out, words, matched

    def phrases_of(self, text: str) -> list[tuple[int, tuple[str, ...]]]:
        """(token id, the phrase as matched — its normalised units) of each match, in order:
        which name or alias the text used."""
        return list(self._scan(units(text)))

    def _scan(self, us: list[str]):
        """Longest matches, left to right: (token, phrase units)."""
        i = 0
        while i < len(us):
            for n in range(min(self.longest.get(us[i], 0), len(us) - i), 0, -1):
                token = self.phrases.get(tuple(us[i:i + n]))
                if token is not None:
                    yield token, tuple(us[i:i + n])
                    i += n
                    break
            else:
                i += 1


def _is_word(unit: str) -> bool:
    return unit[0].isalnum() or unit[0] == "_"


def documents(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each run of non-blank lines."""
    start, block = 0, []
    for number, line in enumerate(lines, 1):
        if line.strip():
            if not block:
                start = number
            block.append(line.rstrip("\n"))
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


@dataclass(frozen=True)
class Sequences:
    """A corpus as particle sequences, each with the line its document starts on."""

    ids: list[list[int]]
    lines: list[int]
    coverage: Coverage


DOCS = ("auto", "paragraphs", "lines", "jsonl")


def corpus_documents(path: Path, docs: str = "auto") -> list[tuple[int, str]]:
    """(first line number, text) of each document of a corpus file.

    Args:
        path: UTF-8 text.
        docs: how documents are laid out — `paragraphs`: runs of non-blank lines (a wiki
            page: its title line, then its text); `lines`: one document per line; `jsonl`: one
            JSON object per line, its `text` field (and `title` or `name` first when given);
            `auto`: jsonl for .jsonl/.ndjson files, lines for a file of several lines and no
            blank one, else paragraphs.
    """
    from graph.errors import GraftError
    if docs not in DOCS:
        raise GraftError(f"--docs {docs}: expected one of {', '.join(DOCS)}")
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise GraftError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
    lines = raw.splitlines()
    docs = resolve_docs(path, docs, lines)
    if docs == "paragraphs":
        return list(documents(lines))
    if docs == "lines":
        return [(n, x) for n, x in enumerate(lines, 1) if x.strip()]
    return _jsonl_documents(path, lines)


def corpus_lines(path: Path, docs: str = "auto") -> list[tuple[int, int, str]]:
    """(document number, line number, text) of every line of every document of a corpus
    file (corpus_documents): the lines a proposal's evidence quotes. A JSONL row is one
    line, its title (if any) and text together."""
    jsonl = _is_jsonl(path, docs)
    out = []
    for doc, (start, text) in enumerate(corpus_documents(path, docs)):
        if jsonl:
            out.append((doc, start, text.replace("\n", " ")))
        else:
            out += [(doc, start + i, line) for i, line in enumerate(text.splitlines())]
    return out


def _is_jsonl(path: Path, docs: str) -> bool:
    return docs == "jsonl" or (docs == "auto" and
                               Path(path).suffix.lower() in (".jsonl", ".ndjson"))


def resolve_docs(path: Path, docs: str, lines: list[str]) -> str:
    """The layout `auto` stands for in a file of these `lines` (other values as they are)."""
    if docs != "auto":
        return docs
    if _is_jsonl(path, docs):
        return "jsonl"
    return "lines" if len(lines) > 1 and all(x.strip() for x in lines) else "paragraphs"


def _jsonl_documents(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    from graph.errors import GraftError
    out, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(f"{path}:{n}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            bad.append(f"{path}:{n}: field 'text': expected a string")
            continue
        head = row.get("title") or row.get("name")
        out.append((n, f"{head}\n{row['text']}" if isinstance(head, str) and head else
                    row["text"]))
    if bad:
        raise GraftError(f"{path}: {len(bad)} bad corpus row(s)\n" + "\n".join(bad[:20]))
    return out


def corpus_sequences(path: Path, lexicon: Lexicon, min_len: int = 2,
                     docs: str = "auto") -> Sequences:
    """Every document of a corpus file (corpus_documents) as a particle sequence (shorter
    than `min_len`: dropped, there is nothing to predict)."""
    ids, starts, words, matched, seen = [], [], 0, 0, set()
    for start, text in corpus_documents(path, docs):
        seq, w, m = lexicon.match(text)
        words, matched = words + w, matched + m
        seen.update(seq)
        if len(seq) >= min_len:
            ids.append(seq)
            starts.append(start)
    coverage = Coverage(words=words, matched=matched, particles=len(seen),
                        sequences=len(ids), tokens=sum(map(len, ids)))
    return Sequences(ids=ids, lines=starts, coverage=coverage)
