"""End to end: a snapshot compiles into a checkpoint HF loads, deterministically, whose
predictions match the graph (the differential test)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compiler.compile import compile_snapshot
from compiler.types import CompileConfig
from compiler.verify import verify_checkpoint
from graph.snapshot import adjacency, take_snapshot
from graph.store import Store
from tests.conftest import ingest_fixture

SMALL = CompileConfig(d=8, layers=2, attn_gain=0.3, mlp_gain=0.3)


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """The typed fixture compiled once: (store path, checkpoint dir, certificate)."""
    root = tmp_path_factory.mktemp("typed")
    with Store(root / "g.duckdb") as store:
        ingest_fixture(store, "typed")
        cert = compile_snapshot(store, take_snapshot(store), root / "ckpt",
                                CompileConfig(d=12, heads=3, layers=2, attn_gain=0.3, mlp_gain=0.3))
    return root / "g.duckdb", root / "ckpt", cert


def load(ckpt):
    model, info = AutoModelForCausalLM.from_pretrained(ckpt, output_loading_info=True)
    return model.eval(), info


def test_checkpoint_loads_with_nothing_missing(typed):
    _, ckpt, cert = typed
    model, info = load(ckpt)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info[key], (key, info[key])
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == config["num_attention_heads"] == 3
    assert config["head_dim"] == 4 and config["mlp_bias"] is True
    assert cert["P-LOAD"]["pass"] and cert["P-DET"]["pass"]
    record = json.loads((ckpt / "compile.json").read_text())
    assert record["arch"]["used"]["d"] == 12 and "d_star" in record["arch"]["derived"]
    assert set(record["timings"]) >= {"vocab", "semcons", "architecture", "embedding", "attention", "mlp"}


def test_two_compiles_are_byte_identical(typed, tmp_path):
    db, ckpt, _ = typed
    with Store(db) as store:  # one worker instead of two: the bits must not depend on it
        compile_snapshot(store, take_snapshot(store), tmp_path / "again",
                         CompileConfig(d=12, heads=3, layers=2, attn_gain=0.3, mlp_gain=0.3,
                                       check_determinism=False, workers=1))
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == \
        (ckpt / "model.safetensors").read_bytes()


def test_generates_a_next_particle_for_a_prompt_of_names(typed):
    _, ckpt, _ = typed
    model, _ = load(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok("tail", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=1, do_sample=False)
    assert tok.decode(out[0, -1:]) == "cat"          # tail → cat is tail's only link


def test_compiled_scores_ignore_position(typed):
    """RoPE turns only pair 0, which the compiled heads leave empty."""
    _, ckpt, _ = typed
    model, _ = load(ckpt)
    ids = torch.tensor([[4, 5, 6]])
    with torch.no_grad():
        a = model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2]])).logits
        b = model(input_ids=ids, position_ids=torch.tensor([[40, 41, 42]])).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("graph", ["chain", "star", "communities"])
def test_top_next_particle_is_a_linked_particle(tmp_path, graph):
    """The differential test: after each particle with out-links, the compiled model's top
    next particle is one it links to."""
    with Store(tmp_path / "g.duckdb") as store:
        ingest_fixture(store, graph)
        snap = take_snapshot(store)
        compile_snapshot(store, snap, tmp_path / "ckpt", SMALL)
        adj = adjacency(store, snap)
    model, _ = load(tmp_path / "ckpt")
    a = adj.matrix.toarray()
    for p in np.flatnonzero(a.sum(axis=1) > 0):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[4 + p]])).logits[0, -1, 4:]
        best = int(logits.argmax())
        assert a[p, best] > 0, (graph, p, best)
        assert best == int(a[p].argmax()) or a[p, best] == a[p].max()


def test_verify_recomputes_and_catches_tampering(typed, tmp_path):
    import shutil
    from safetensors.numpy import load_file, save_file
    db, ckpt, _ = typed
    with Store(db, read_only=True) as store:
        result = verify_checkpoint(ckpt, store)
    assert result["pass"] and result["P-DET"]["pass"] and result["INTEGRITY"]["pass"]
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][0] = 2.0
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    result = verify_checkpoint(bad)
    assert not result["pass"] and result["INTEGRITY"]["mismatched"] == ["model.norm.weight"]


def test_padded_takes_a_tail_view_whole_and_copies_anything_else():
    # The compiler moves E and H into (n + V, d) blocks so the state dict need not copy them
    # again; anything that is not exactly such a tail (another dtype, a stride, non-zero
    # special rows, a plain array) gets a fresh block with zero special rows.
    from compiler.pack import padded
    from compiler.types import SPECIAL_TOKENS
    n = len(SPECIAL_TOKENS)
    x = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    block = padded(x)
    assert block.shape == (n + 4, 3) and not block[:n].any() and (block[n:] == x).all()
    assert padded(block[n:]) is block
    assert padded(block[n:].astype(np.float64)) is not block
    assert padded(block[n::2]) is not block and padded(block[n + 1:]) is not block
    block[0, 0] = 1.0
    again = padded(block[n:])
    assert again is not block and not again[:n].any() and (again[n:] == x).all()
