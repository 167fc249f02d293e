"""Training data for a compiled model: text sequences cut into blocks, a held-out slice, and
graph walks to replay against forgetting.

Token ids: particle i of a checkpoint's particles.json is token len(SPECIAL_TOKENS) + i.
Padding is token 0 with label -100 (ignored by the loss).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from graph.checkpoint import COMPILE_RECORD, SPECIAL_TOKENS

PAD, IGNORE = 0, -100


def split(seqs: list[list[int]], holdout: float, seed: int,
          keys: list[int] | None = None) -> tuple[list, list]:
    """(train, held-out) by whole documents, seeded; at least one of each when possible.

    With `keys` (each document's first line in the corpus), a document is held out by a
    seeded hash of its key alone, so the held-out documents stay the same when another
    lexicon (a later cycle's vocabulary) keeps more or fewer documents.
    """
    if keys is not None and len(seqs) > 1:
        held_ids = [i for i, k in enumerate(keys) if _unit_hash(seed, k) < holdout]
        if 0 < len(held_ids) < len(seqs):
            held = set(held_ids)
            return ([s for i, s in enumerate(seqs) if i not in held],
                    [s for i, s in enumerate(seqs) if i in held])
    order = np.random.default_rng(seed).permutation(len(seqs))
    n_held = min(max(int(round(holdout * len(seqs))), 1 if holdout > 0 else 0), len(seqs) - 1)
    held = set(order[:max(n_held, 0)].tolist())
    return ([s for i, s in enumerate(seqs) if i not in held],
            [s for i, s in enumerate(seqs) if i in held])


def _unit_hash(seed: int, key: int) -> float:
    """A uniform number in [0, 1) from (seed, key), the same on every machine."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def blocks(seqs: list[list[int]], block: int) -> list[list[int]]:
    """Each sequence cut into consecutive pieces of at most `block` tokens (pieces of one
    token are dropped: nothing to predict)."""
    out = []
    for s in seqs:
        for i in range(0, len(s), block):
            piece = s[i:i + block]
            if len(piece) >= 2:
                out.append(piece)
    return out


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor        # (B, T) int64
    attention_mask: torch.Tensor   # (B, T) int64
    labels: torch.Tensor           # (B, T) int64, IGNORE on padding
    tokens: int                    # real (non-pad) tokens

    def as_kwargs(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "labels": self.labels}


def collate(rows: list) -> Batch:
    """Right-padded batch of token rows. A row is a token list (every token is a label) or a
    (tokens, context length) pair whose first `context length` tokens are context only
    (IGNORE labels: the loss is on what follows, as in loop/linkrows.py)."""
    rows = [r if isinstance(r, tuple) else (r, 0) for r in rows]
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (r, context) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
        labels[i, context:len(r)] = ids[i, context:len(r)]
    return Batch(ids, mask, labels, int(mask.sum()))


def chunks(rows: list[list[int]], size: int, rng: np.random.Generator | None = None):
    """Lists of `size` rows, shuffled by `rng` (in order when None)."""
    order = rng.permutation(len(rows)) if rng is not None else np.arange(len(rows))
    for i in range(0, len(order), size):
        yield [rows[j] for j in order[i:i + size]]


def batches(rows: list[list[int]], size: int, rng: np.random.Generator | None = None):
    """Collated batches of `size` rows, shuffled by `rng` (in order when None)."""
    for chunk in chunks(rows, size, rng):
        yield collate(chunk)


def checkpoint_graph(store, model_dir: Path) -> sp.csr_array:
    """The (V, V) stake adjacency of the snapshot a checkpoint was compiled from, in the
    checkpoint's particle order (what graph fit and replay walks use)."""
    from graph.errors import GraftError
    from graph.snapshot import adjacency, get_snapshot
    model_dir = Path(model_dir)
    record = json.loads((model_dir / COMPILE_RECORD).read_text())
    adj = adjacency(store, get_snapshot(store, record["snapshot"]))
    particles = json.loads((model_dir / "particles.json").read_text())
    if adj.index != particles:
        raise GraftError(f"{model_dir}: particles.json does not match snapshot "
                         f"{record['snapshot'][:16]}… in the store (another store?)")
    return adj.matrix.tocsr()


def walk_rows(adj: sp.csr_array, n: int, length: int, seed: int) -> list[list[int]]:
    """`n`-ish seeded stake-weighted walks as token rows (walks shorter than 2 are dropped)."""
    from graph.walks import random_walks
    out_deg = np.diff(adj.indptr) > 0
    per_node = max(1, -(-n // max(int(out_deg.sum()), 1)))
    walks = random_walks(adj, per_node, length, seed)
    offset = len(SPECIAL_TOKENS)
    rows = []
    for w in walks:
        w = w[: np.argmax(w < 0)] if (w < 0).any() else w
        if len(w) >= 2:
            rows.append((w + offset).tolist())
    return rows
