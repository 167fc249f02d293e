"""Warm starts: the previous compile's subspace as the next compile's starting guess.

A cycle changes a few links, and the leading singular subspace of the adjacency barely
moves. The randomized SVD (compiler/linalg.py) then starts from the previous checkpoint's
right singular directions — its output head H = V√Σ, row by particle, mapped onto the new
vocabulary (particles new to the graph start at zero) — and needs fewer power iterations
(`CompileConfig.warm_power_iters`) to reach the accuracy a cold compile gets with
`power_iters`. The result is deterministic for a given (snapshot, warm start): both are
recorded in compile.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from compiler.types import Vocab
from graph.checkpoint import COMPILE_RECORD, SPECIAL_TOKENS
from graph.errors import GraftError


def load_start(folder: Path, vocab: Vocab) -> tuple[np.ndarray, dict]:
    """((V, d_prev) float32 start block over `vocab`'s particles, a record of it) from the
    checkpoint in `folder`."""
    folder = Path(folder)
    try:
        previous = json.loads((folder / "particles.json").read_text())
        record = json.loads((folder / COMPILE_RECORD).read_text())
        with safe_open(str(folder / "model.safetensors"), framework="np") as f:
            name = "lm_head.weight" if "lm_head.weight" in f.keys() else "model.embed_tokens.weight"
            rows = f.get_tensor(name)[len(SPECIAL_TOKENS):]                    # (V_prev, d)
    except (OSError, ValueError, KeyError) as exc:
        raise GraftError(f"--warm-start {folder}: not a graft checkpoint ({exc})") from None
    at = {p: i for i, p in enumerate(previous)}
    where = np.array([at.get(p, -1) for p in vocab.particles], dtype=np.int64)   # (V,)
    start = np.zeros((len(vocab.particles), rows.shape[1]), dtype=np.float32)
    known = where >= 0
    start[known] = rows[where[known]]
    return start, {"from": str(folder), "snapshot": record.get("snapshot"), "block": name,
                   "d": int(rows.shape[1]), "particles_reused": int(known.sum()),
                   "particles_new": int((~known).sum())}
