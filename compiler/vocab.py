"""Pass 1 — vocab: particles in first-appearance order, and a word-level HF tokenizer."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from compiler.types import SPECIAL_TOKENS, Vocab
from graph.snapshot import Snapshot, adjacency
from graph.store import Store

SPACE = "\u2581"  # "▁": a particle name's inner spaces, so one name stays one word


def build_vocab(store: Store, snap: Snapshot, links: pa.Table | None = None) -> Vocab:
    """The snapshot's particles (label links and axons left out) as tokens named after them.

    A token is the particle's name with inner whitespace written as "▁"; a particle without
    a name is its id; a name two particles share gets "#" and the first 8 hex chars of the id.
    `links` (graph.snapshot.typed_edges, shared with the semcons pass) saves a query.
    """
    adj = adjacency(store, snap, links)
    names = store.names_of(adj.index)
    words = [token_of(names.get(pid) or pid) for pid in adj.index]
    clash = {w for w, n in Counter(words).items() if n > 1} | set(SPECIAL_TOKENS)
    tokens = list(SPECIAL_TOKENS) + [f"{w}#{pid[:8]}" if w in clash else w
                                     for pid, w in zip(adj.index, words)]
    aliases = store.aliases_of(adj.index)
    lexicon = [[names[p]] + aliases.get(p, []) if p in names else aliases.get(p, [])
               for p in adj.index]
    return Vocab(particles=adj.index, tokens=tokens, adjacency=adj.matrix, lexicon=lexicon)


def token_of(name: str) -> str:
    """The token string of a particle name: whitespace runs become one "▁"."""
    return SPACE.join(name.split())  # split() and re's \s agree on whitespace: str.isspace


def save_tokenizer(vocab: Vocab, out: Path) -> None:
    """Write make_tokenizer(vocab).save_pretrained(out)'s files without building it whole.

    HF deep-copies the backend on construction and save_pretrained serialises it again:
    two JSON round trips of the vocabulary (~20 s at 1.5M tokens on a loaded machine).
    Here HF builds and saves the special tokens only, and the full word-level vocabulary
    is written into that tokenizer.json, the specials keeping ids 0-3.
    """
    specials = Vocab(particles=[], tokens=list(SPECIAL_TOKENS), adjacency=vocab.adjacency)
    make_tokenizer(specials).save_pretrained(out)
    path = out / "tokenizer.json"
    backend = json.loads(path.read_text(encoding="utf-8"))
    assert backend["model"]["type"] == "WordLevel" and list(backend["model"]["vocab"]) == list(
        SPECIAL_TOKENS) and vocab.tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    backend["model"]["vocab"] = {t: i for i, t in enumerate(vocab.tokens)}
    path.write_text(json.dumps(backend, ensure_ascii=False, indent=2), encoding="utf-8")


def make_tokenizer(vocab: Vocab) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the vocab: text is split on whitespace, each word is one
    particle (unknown words become <unk>); decoding turns "▁" back into spaces."""
    model = models.WordLevel(vocab={t: i for i, t in enumerate(vocab.tokens)}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.Sequence([decoders.WordPiece(prefix="\x00", cleanup=False),
                                     decoders.Replace(SPACE, " ")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
