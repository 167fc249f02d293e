"""The certificate: checks run on every compile, recomputed by `graft verify`.

P-EMBED  ‖E Hᵀ − M‖_F / ‖M‖_F of the factorisation (reported against the 0.05 target; not a gate)
P-ATTN   Pearson(W_Q W_Kᵀ, P) per layer and head with links (min ≥ 0.7)
P-LAYER  layer-to-layer change of the hidden state non-increasing on a seeded length-128 input
P-DET    the weights of two compiles of the snapshot are byte-identical
P-LOAD   AutoModelForCausalLM loads with no missing/unexpected/mismatched keys; logits finite
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from compiler.types import SPECIAL_TOKENS

EMBED_TARGET = 0.05
ATTN_MIN = 0.7
PROBE_LENGTH = 128


def p_embed(value: float) -> dict:
    """A report, not a gate (DESIGN §2): a sparse graph at d ≪ V rarely reaches the target."""
    return {"value": value, "target": EMBED_TARGET, "meets_target": bool(value <= EMBED_TARGET),
            "pass": None}


def p_attn(pearson: np.ndarray) -> dict:
    """pearson (L, h), NaN where a head's P is zero (no k-hop paths of its type)."""
    values = pearson[np.isfinite(pearson)]
    if values.size == 0:
        return {"min": None, "mean": None, "threshold": ATTN_MIN, "pass": True,
                "note": "no head has k-hop paths to approximate"}
    return {"min": float(values.min()), "mean": float(values.mean()), "threshold": ATTN_MIN,
            "heads_checked": int(values.size), "heads_empty": int(pearson.size - values.size),
            "pass": bool(values.min() >= ATTN_MIN)}


def p_det(first: dict[str, str], second: dict[str, str] | None) -> dict:
    if second is None:
        return {"pass": None, "note": "not checked (check_determinism off)"}
    differ = sorted(n for n in first if first[n] != second.get(n))
    return {"pass": not differ, "differing_tensors": differ[:10]}


def load_and_probe(out: Path, seed: int) -> tuple[dict, dict]:
    """P-LOAD and P-LAYER from the files on disk, through transformers itself."""
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True,
                                                       dtype=torch.float32)
    model.eval()
    problems = {k: sorted(info.get(k, [])) for k in ("missing_keys", "unexpected_keys",
                                                     "mismatched_keys", "error_msgs")}
    n_special = len(SPECIAL_TOKENS)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed % (2**63))
    ids = torch.randint(n_special, max(vocab, n_special + 1), (1, PROBE_LENGTH), generator=gen)
    # HF's last hidden state has the final norm applied, so the residual stream after each
    # decoder layer is taken with hooks instead.
    with torch.no_grad():
        states = [model.get_input_embeddings()(ids)[0].double()]   # (128, d) each
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out: states.append((out[0] if isinstance(out, tuple) else out)[0].double()))
        for layer in model.model.layers]
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    finally:
        for hook in hooks:
            hook.remove()
    # max and min are NaN or ±inf exactly when an entry is (torch propagates NaN), with no
    # mask the size of the logits (128 × V: 760 MB at Bostrom scale)
    finite = bool(torch.isfinite(torch.stack([logits.max(), logits.min()])).all())
    load = {"pass": finite and not any(problems.values()), "logits_finite": finite,
            **{k: v for k, v in problems.items() if v}}
    change = [float((b - a).norm(dim=-1).mean()) for a, b in zip(states, states[1:])]
    ok = all(n <= p * (1 + 1e-6) + 1e-9 for p, n in zip(change, change[1:]))
    return load, {"pass": ok, "changes": change}


def write_certificate(out: Path, checks: dict) -> dict:
    checks = {**checks, "pass": all(c.get("pass") is not False for c in checks.values())}
    (out / "certificate.json").write_text(json.dumps(checks, indent=2, sort_keys=True) + "\n")
    return checks
