"""Pass 8 — pack: HF Llama names and layout, config, tokenizer, compile.json.

(Pass 7, norms, is here too: every RMSNorm weight is 1 and RoPE's theta comes from the
config.) Tensors get their final HF names where they are made into the state dict below;
provenance uses the same names.
"""
from __future__ import annotations

import json
from pathlib import Path

import blake3
import numpy as np
from safetensors.numpy import save_file
from transformers import LlamaConfig

from compiler.types import LEXICON, SPECIAL_TOKENS, Compiled
from compiler.vocab import save_tokenizer
from graph.checkpoint import COMPILE_RECORD

WEIGHTS = "model.safetensors"
PROVENANCE = "provenance.safetensors"


def state_dict(c: Compiled) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint under its HF Llama name, [out, in] layout, float32."""
    d = c.arch.d
    tensors = {"model.embed_tokens.weight": padded(c.embedding.E),   # τ scales every logit,
               "model.norm.weight": np.full(d, c.embedding.logit_scale, np.float32)}  # no rank moves
    if not c.config.tie:
        tensors["lm_head.weight"] = padded(c.embedding.H)
    kappa = float(c.arch.derived.get("kappa", 0.85))
    r = c.arch.intermediate
    for layer in range(c.arch.layers):
        pre = f"model.layers.{layer}"
        gain = c.config.mlp_gain * kappa ** layer
        tensors.update({
            f"{pre}.input_layernorm.weight": np.ones(d, np.float32),
            f"{pre}.post_attention_layernorm.weight": np.ones(d, np.float32),
            f"{pre}.self_attn.q_proj.weight": c.attention.q[layer],
            f"{pre}.self_attn.k_proj.weight": c.attention.k[layer],
            f"{pre}.self_attn.v_proj.weight": c.attention.v[layer],
            f"{pre}.self_attn.o_proj.weight": c.attention.o[layer],
            f"{pre}.mlp.gate_proj.weight": c.mlp.gate,
            f"{pre}.mlp.gate_proj.bias": np.zeros(r, np.float32),
            f"{pre}.mlp.up_proj.weight": np.zeros((r, d), np.float32),
            f"{pre}.mlp.up_proj.bias": np.ones(r, np.float32),
            f"{pre}.mlp.down_proj.weight": (gain * c.mlp.down).astype(np.float32),
            f"{pre}.mlp.down_proj.bias": np.zeros(d, np.float32),
        })
    return {name: np.ascontiguousarray(x, dtype=np.float32) for name, x in tensors.items()}


def padded(x: np.ndarray) -> np.ndarray:
    """(n + V, d) float32: the special tokens' zero rows, then x's (V, d) rows.

    When x is already the tail x = b[n:] of such a block b (the compiler moves E and H into
    theirs, compiler.compile._weights), b itself is returned: no (V, d) copy, 1.7 GB each
    at 3.14M particles.
    """
    n = len(SPECIAL_TOKENS)
    b = x.base
    if (isinstance(b, np.ndarray) and b.dtype == np.float32 and b.flags.c_contiguous
            and b.shape == (len(x) + n, x.shape[1]) and x.dtype == np.float32
            and x.ctypes.data == b[n:].ctypes.data and x.strides == b[n:].strides
            and not b[:n].any()):
        return b
    out = np.zeros((len(x) + n, x.shape[1]), np.float32)
    out[n:] = x
    return out


def llama_config(c: Compiled) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=len(c.vocab.tokens), hidden_size=c.arch.d,
        intermediate_size=c.arch.intermediate, num_hidden_layers=c.arch.layers,
        num_attention_heads=c.arch.heads, num_key_value_heads=c.arch.heads,
        head_dim=c.arch.head_dim, hidden_act="silu", max_position_embeddings=4096,
        rms_norm_eps=c.config.rms_norm_eps, tie_word_embeddings=c.config.tie,
        rope_parameters={"rope_type": "default", "rope_theta": c.config.rope_theta},
        attention_bias=False, mlp_bias=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    config.architectures = ["LlamaForCausalLM"]  # save_pretrained omits it otherwise
    return config


def digest(x: np.ndarray) -> str:
    """BLAKE3 of the array's bytes, read in place (tobytes() would copy a 3 GB embedding)."""
    return blake3.blake3(memoryview(np.ascontiguousarray(x)).cast("B")).hexdigest()


def pack_llama(c: Compiled, out: Path, tensors: dict[str, np.ndarray]) -> dict:
    """Write the checkpoint folder; returns compile.json's content.

    Checks shapes and finiteness first: nothing is written for a broken model.
    """
    # max and min are NaN or ±inf exactly when an entry is, without a mask the size of x
    bad = [n for n, x in tensors.items() if x.size and not np.isfinite([x.max(), x.min()]).all()]
    if bad:
        raise ValueError(f"non-finite values in {bad[:5]}; refusing to write {out}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    save_file({"embedding.scale": c.embedding.scale.astype(np.float64),
               "embedding.filled": c.embedding.filled.astype(np.uint8),
               "embedding.sigma": c.embedding.sigma.astype(np.float64)},
              str(out / PROVENANCE), metadata={"format": "np"})
    llama_config(c).save_pretrained(out)
    save_tokenizer(c.vocab, out)
    (out / "particles.json").write_text(json.dumps(c.vocab.particles) + "\n")
    (out / LEXICON).write_text(json.dumps(c.vocab.lexicon, ensure_ascii=False) + "\n")
    record = {
        "snapshot": c.snapshot,
        "config": c.config.to_json(),
        "arch": {"derived": c.arch.derived,
                 "used": {"d": c.arch.d, "heads": c.arch.heads, "head_dim": c.arch.head_dim,
                          "layers": c.arch.layers, "intermediate": c.arch.intermediate}},
        "vocab": {"particles": len(c.vocab.particles), "tokens": len(c.vocab.tokens)},
        "semcons": [{"particle": p, "name": n} for p, n in zip(c.semcons.particles, c.semcons.names)],
        "attention_powers": c.attention.powers,
        "embedding": c.embedding.stats,
        "mlp": c.mlp.stats,
        "tensors": {n: {"shape": list(x.shape), "dtype": str(x.dtype), "blake3": digest(x)}
                    for n, x in sorted(tensors.items())},
        "timings": c.timings,
    }
    (out / COMPILE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
