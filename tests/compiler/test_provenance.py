"""Provenance: link terms add up to the stored logits and weights they explain, on tiny
graphs where the factorisation is exact (star: rank 1; typed: d above the rank)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from compiler import provenance as pv
from compiler.types import CompileConfig
from graph.errors import GraftError
from graph.ingest_rows import ingest_particles
from graph.store import Store
from loop import cli
from tests.conftest import compile_fixture, pid, write_jsonl

TYPED = CompileConfig(d=12, heads=3, layers=2, attn_gain=0.3, mlp_gain=0.3, check_determinism=False)


def _compile(root, fixture: str, cfg: CompileConfig):
    compile_fixture(root, fixture, cfg)
    return root / "g.duckdb", root / "ckpt"


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("star"), "star",
                    CompileConfig(d=4, layers=1, check_determinism=False))


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("typed"), "typed", TYPED)


@pytest.fixture(scope="module")
def typed_focus_tied(tmp_path_factory):
    cfg = CompileConfig(**{**TYPED.to_json(), "focus_weighting": True, "tie": True})
    return _compile(tmp_path_factory.mktemp("typedft"), "typed", cfg)


def opened(db, ckpt):
    store = Store(db, read_only=True)
    return store, pv.Trace(store, ckpt)


def _sums_to(result: dict, rel: float = 1e-5) -> None:
    """links (all shown) + residual = the stored value, and the residual is rounding."""
    terms = sum(x["term"] for x in result["links"]) + result["other"]["term"]
    assert terms == pytest.approx(result["linear"], rel=1e-9, abs=1e-12)
    assert result["linear"] + result["residual"] == pytest.approx(result["value"], rel=1e-12, abs=1e-12)
    scale = max(abs(result["value"]), 1.0)
    assert abs(result["residual"]) <= rel * scale
    assert sum(n["term"] for n in result["neurons"]) == pytest.approx(result["linear"], abs=1e-9)


@pytest.mark.parametrize("which", ["typed", "typed_focus_tied"])
def test_pair_shares_add_up_to_the_zero_layer_logit(which, request):
    store, tr = opened(*request.getfixturevalue(which))
    with store:
        for k, p in enumerate(tr.particles):           # every row, two targets each
            for q in {tr.particles[k], tr.particles[(k + 2) % len(tr.particles)]}:
                result = pv.trace_pair(tr, p, q, top=None)
                zero = result["zero_layer"]
                _sums_to(zero)
                if zero["value"]:
                    shares = sum(x["share"] for x in zero["links"]) + zero["residual_share"]
                    assert shares == pytest.approx(1.0, abs=1e-9)
                model = result["model"]   # direct logit attribution adds up exactly
                parts = model["embedding"] + sum(x["logit"] for x in model["layers"])
                assert parts == pytest.approx(model["logit"], rel=1e-9, abs=1e-12)


def test_star_top_link_of_a_pair_is_the_direct_link(star):
    # M is one row (hub → leaf k, stake k), rank 1: V = M_hub/‖M_hub‖, so the term of
    # hub → leaf q in logit(hub, leaf r) is ∝ M_q (V_q·V_r) ∝ q²·r: share q²/Σk² = q²/55.
    store, tr = opened(*star)
    with store:
        for r in range(1, 6):
            zero = pv.trace_pair(tr, "hub", f"leaf{r}", top=None)["zero_layer"]
            shares = {x["dst"]: x["share"] for x in zero["links"]}
            assert shares == pytest.approx({f"leaf{k}": k * k / 55 for k in range(1, 6)}, abs=1e-6)
            _sums_to(zero)
        top = pv.trace_pair(tr, "hub", "leaf5", top=1)["zero_layer"]
        assert [x["seq"] for x in top["links"]] == [5] and top["other"]["links"] == 4


def test_filled_row_logit_splits_over_in_links(star):
    store, tr = opened(*star)
    with store:
        result = pv.trace_pair(tr, "leaf5", "leaf3", top=None)
    zero = result["zero_layer"]
    assert result["p"]["filled"] and "in-links" in zero["rule"]
    assert [(x["src"], x["dst"]) for x in zero["links"]] == [("hub", "leaf5")]
    assert zero["links"][0]["share"] == pytest.approx(1.0, abs=1e-6)
    _sums_to(zero)


@pytest.mark.parametrize("which", ["typed", "typed_focus_tied"])
def test_embedding_and_head_entries_sum_to_the_stored_weights(which, request):
    db, ckpt = request.getfixturevalue(which)
    weights = load_file(ckpt / "model.safetensors")
    store, tr = opened(db, ckpt)
    with store:
        names = [pv.EMBED] + ([] if tr.tied else [pv.HEAD])
        for name in names:
            for i in range(4, weights[name].shape[0]):
                for j in (0, 5, weights[name].shape[1] - 1):
                    result = pv.trace_tensor(tr, name, (i, j), top=None)
                    assert result["value"] == float(weights[name][i, j]) and result["exact"]
                    _sums_to(result)
                row = pv.trace_tensor(tr, name, (i, None), top=None)   # projections on the row
                assert row["value"] == pytest.approx(np.linalg.norm(weights[name][i]), rel=1e-6)
                _sums_to(row)
        special = pv.trace_tensor(tr, pv.EMBED, (1, 0))
        assert special["value"] == 0.0 and "special" in special["rule"]


def test_attention_entries_split_over_their_heads_links(typed):
    store, tr = opened(*typed)
    with store:
        seen = 0
        for layer in range(2):                       # power 1, then power 2
            for kind in "qkvo":
                name = f"model.layers.{layer}.self_attn.{kind}_proj.weight"
                w = tr.tensor(name)
                for i, j in zip(*np.nonzero(np.abs(w) > 1e-6)):
                    result = pv.trace_tensor(tr, name, (int(i), int(j)), top=None)
                    assert not result["exact"] and result["power"] == layer + 1
                    _sums_to(result, rel=1e-5 * float(np.abs(w).max()))
                    seen += 1
        assert seen > 40
        is_a = pv.trace_tensor(tr, "model.layers.0.self_attn.q_proj.weight", (1, 0), top=None)
        assert is_a["semcons"] == ["is-a"] and {x["seq"] for x in is_a["links"]} <= {1, 2, 3}
        mlp = pv.trace_tensor(tr, "model.layers.0.mlp.gate_proj.weight", (0, 0))
        assert mlp["attributable"] is False and "walks" in mlp["why"]


def test_link_trace_touches_its_rows_and_head(typed):
    store, tr = opened(*typed)
    with store:
        by_seq = pv.trace_link(tr, ["1"])                 # cat → mammal, typed is-a
        by_pair = pv.trace_link(tr, ["cat", "mammal"])
        label = pv.trace_link(tr, ["9"])
        pair = pv.trace_pair(tr, "cat", "mammal", top=None)["zero_layer"]
    assert by_seq["touches"] == by_pair["touches"] and by_seq["records"][0]["seq"] == 1
    tensors = {t["tensor"]: t for t in by_seq["touches"]}
    assert tensors[pv.EMBED]["row"] == 4 and tensors[pv.HEAD]["row"] == 5
    assert tensors["zero-layer logit(P→Q)"]["term"] == pytest.approx(
        next(x["term"] for x in pair["links"] if x["seq"] == 1), rel=1e-9)
    assert {h["semcon"] for h in by_seq["heads"]} == {"is-a"} and by_seq["heads"][0]["delta_P_fro"] > 0
    assert label["touches"] == [] and "is-a" in label["why"]


def test_names_resolve_or_fail_clearly(typed, tmp_path):
    store, tr = opened(*typed)
    with store:
        assert tr.resolve("cats") == tr.resolve("CAT") == tr.resolve(pid("cat")[:10]) == 0
        with pytest.raises(GraftError, match="unknown particle 'wolf'"):
            tr.resolve("wolf")
        with pytest.raises(GraftError, match="not in the vocabulary"):
            tr.resolve("is-a")                        # a semcon: in the store, not a token
        with pytest.raises(GraftError, match="seq 99"):
            pv.trace_link(tr, ["99"])
        with pytest.raises(GraftError, match="is not a tensor"):
            pv.trace_tensor(tr, "model.nope.weight", (0, 0))
    # Name "dog" "cat" too: particle names are not part of the snapshot, the checkpoint holds.
    db, ckpt = typed
    shutil.copy(db, tmp_path / "g.duckdb")
    with Store(tmp_path / "g.duckdb") as store:
        ingest_particles(store, [write_jsonl(tmp_path / "p.jsonl", [{"particle": pid("dog"),
                                                                    "name": "cat"}])])
        tr = pv.Trace(store, ckpt)
        with pytest.raises(GraftError, match="'cat' is ambiguous: 2 particles"):
            tr.resolve("cat")
        assert tr.resolve(f"cat#{pid('dog')[:8]}") == tr.index[pid("dog")]


def test_one_token_forward_matches_hf(typed):
    db, ckpt = typed
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    store, tr = opened(db, ckpt)
    with store, torch.no_grad():
        for p, q in [("cat", "mammal"), ("tail", "cat"), ("animal", "dog")]:
            result = pv.trace_pair(tr, p, q)
            token = result["p"]["token"]
            logits = model(torch.tensor([[token]])).logits[0, -1]
            assert result["model"]["logit"] == pytest.approx(float(logits[result["q"]["token"]]),
                                                             rel=1e-4, abs=1e-4)


def test_cli_trace_prints_text_and_json(typed, capsys):
    db, ckpt = typed
    base = ["--db", str(db), "trace", str(ckpt)]
    assert cli.main(base + ["--pair", "cat", "mammal"]) == 0
    assert "cat → mammal" in capsys.readouterr().out
    for extra in (["--pair", "cat", "mammal"], ["--link", "1"], ["--link", "cat", "mammal"],
                  ["--tensor", pv.EMBED, "--index", "4,0"], ["--tensor", pv.HEAD, "--index", "5"]):
        assert cli.main(base + extra + ["--json"]) == 0, extra
        result = json.loads(capsys.readouterr().out)
        assert result["query"] in ("pair", "link", "tensor")
    assert cli.main(base + ["--pair", "cat", "wolf"]) == 1
    assert "unknown particle 'wolf'" in capsys.readouterr().err
    assert cli.main(base + ["--tensor", pv.EMBED]) == 1
    assert "--index" in capsys.readouterr().err


def test_records_aggregate_into_neurons_and_other(typed):
    store, tr = opened(*typed)
    with store:
        recs = pv.Records(seq=np.array([1, 2, 3]), neuron=["ann", "bob", "ann"],
                          src=np.array([0, 1, 2]), dst=np.array([2, 2, 3]), amount=["2", "2", "3"],
                          w=np.array([2.0, 2.0, 3.0]), m=np.array([2.0, 2.0, 3.0]), clipped=0)
        result = pv.explain(tr, recs, np.array([1.0, -3.0, 0.5]), value=-1.0, top=1)
    assert [x["seq"] for x in result["links"]] == [2] and result["links"][0]["share"] == 3.0
    assert result["other"] == {"links": 2, "term": 1.5, "share": -1.5}
    assert [(n["neuron"], n["term"]) for n in result["neurons"]] == [("bob", -3.0), ("ann", 1.5)]
    assert result["residual"] == pytest.approx(0.5) and result["residual_share"] == pytest.approx(-0.5)
