"""Pass 1 — vocab: particles in first-appearance order, and a word-level HF tokenizer."""
from __future__ import annotations

import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from compiler.types import SPECIAL_TOKENS, Vocab
from graph.snapshot import Snapshot, adjacency
from graph.store import Store

SPACE = "\u2581"  # "▁": a particle name's inner spaces, so one name stays one word


def build_vocab(store: Store, snap: Snapshot) -> Vocab:
    """The snapshot's particles (label links and axons left out) as tokens named after them.

    A token is the particle's name with inner whitespace written as "▁"; a particle without
    a name is its id; a name two particles share gets "#" and the first 8 hex chars of the id.
    """
    adj = adjacency(store, snap)
    names = store.names_of(adj.index)
    tokens = list(SPECIAL_TOKENS)
    seen: dict[str, int] = {}
    for pid in adj.index:
        word = token_of(names.get(pid) or pid)
        seen[word] = seen.get(word, 0) + 1
        tokens.append(word)
    for i, (pid, word) in enumerate(zip(adj.index, tokens[len(SPECIAL_TOKENS):])):
        if seen[word] > 1 or word in SPECIAL_TOKENS:
            tokens[len(SPECIAL_TOKENS) + i] = f"{word}#{pid[:8]}"
    aliases = store.aliases_of(adj.index)
    lexicon = [[names[p]] + aliases.get(p, []) if p in names else aliases.get(p, [])
               for p in adj.index]
    return Vocab(particles=adj.index, tokens=tokens, adjacency=adj.matrix, lexicon=lexicon)


def token_of(name: str) -> str:
    """The token string of a particle name: whitespace runs become one "▁"."""
    return re.sub(r"\s+", SPACE, name.strip())


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
