"""`graft tune` on a compiled tiny graph: LoRA invariants, merge, round trips, QLoRA, and
forgetting measured (full fine-tuning on unrelated text lowers graph fit; replay helps)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from compiler.types import CompileConfig
from finetune.checkpoints import merge_adapter
from finetune.tune import TuneConfig, tune
from graph.errors import GraftError
from graph.store import Store
from tests.conftest import compile_fixture

IDS = torch.tensor([[4, 5, 6, 7, 8, 9], [10, 11, 4, 6, 8, 10]])
RELATED = "\n\n".join(["a1 a2 a3 a4", "a2 a3 a1", "b1 b2 b3 b4", "b3 b4 b1 b2", "a4 a1 a2",
                       "b2 b1 b4", "a3 a4 a1 a2", "b4 b3 b2 b1"] * 3) + "\n"
# every sentence pairs a particle with the other community: what the graph does not say
UNRELATED = "\n\n".join(f"{a} {b} {a} {b}" for a in ("a1", "a2", "a3", "a4")
                        for b in ("b1", "b2", "b3", "b4")) + "\n"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The communities fixture compiled once: (store path, checkpoint dir)."""
    root = compile_fixture(tmp_path_factory.mktemp("communities"), "communities",
                           CompileConfig(d=8, layers=2, attn_gain=0.3, mlp_gain=0.3))
    (root / "related.txt").write_text(RELATED)
    (root / "unrelated.txt").write_text(UNRELATED)
    return root


def logits(model, ids=IDS):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def base(ckpt):
    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)


def test_a_fresh_lora_adapter_changes_nothing(compiled):
    before = logits(base(compiled / "ckpt"))
    lora = get_peft_model(base(compiled / "ckpt"), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert torch.equal(logits(lora), before)


def test_adapter_round_trip_and_merge_keep_logits(compiled, tmp_path):
    torch.manual_seed(0)
    lora = get_peft_model(base(compiled / "ckpt"), LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():                     # a non-zero adapter, so the checks can fail
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tuned = logits(lora)
    assert (tuned - logits(base(compiled / "ckpt"))).abs().max() > 1e-2
    lora.save_pretrained(tmp_path / "adapter")
    again = PeftModel.from_pretrained(base(compiled / "ckpt"), tmp_path / "adapter")
    assert torch.equal(logits(again), tuned)
    merge_adapter(tmp_path / "adapter", tmp_path / "merged", base=compiled / "ckpt")
    merged, info = AutoModelForCausalLM.from_pretrained(tmp_path / "merged",
                                                        output_loading_info=True)
    assert not any(info.values())
    assert torch.allclose(logits(merged), tuned, atol=1e-4)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["architectures"]


def test_tune_lora_writes_adapter_curves_and_record(compiled, tmp_path):
    with Store(compiled / "g.duckdb", create=False, read_only=True) as store:
        record = tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "out",
                      TuneConfig(max_steps=6, eval_every=2, batch_size=4, holdout=0.25),
                      store=store)
    out = tmp_path / "out"
    for name in ("adapter_config.json", "adapter_model.safetensors", "curves.csv",
                 "curves.png", "tune.json", "lexicon.json", "particles.json"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader(open(out / "curves.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["heldout_loss"] != "" for r in rows] == [False, True] * 3
    assert record["steps"] == 6 and record["coverage"]["share"] == 1.0
    assert record["before"]["graph"]["links"] == 13       # distinct linked pairs
    assert 0 < record["before"]["graph"]["mrr"] <= 1
    assert record["best_heldout_loss"] <= record["before"]["heldout_loss"] + 1e-6
    assert not list(out.glob("*.bin"))             # safetensors only


def test_qlora_trains_a_four_bit_model(compiled, tmp_path):
    pytest.importorskip("bitsandbytes")
    record = tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "q",
                  TuneConfig(method="qlora", max_steps=3, eval_every=3, batch_size=4))
    assert record["steps"] == 3 and "graph" not in record["after"]
    cfg = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    assert cfg["r"] == 8


def test_replay_needs_the_store(compiled, tmp_path):
    with pytest.raises(GraftError, match="--replay needs the store"):
        tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "x",
             TuneConfig(max_steps=1, replay=0.5))


def test_full_tuning_on_unrelated_text_forgets_and_replay_reduces_it(compiled, tmp_path):
    mrr = {}
    with Store(compiled / "g.duckdb", create=False, read_only=True) as store:
        for replay in (0.0, 1.0):
            r = tune(compiled / "ckpt", compiled / "unrelated.txt", tmp_path / f"r{replay}",
                     TuneConfig(method="full", lr=1e-2, max_steps=60, eval_every=60,
                                batch_size=4, holdout=0.25, replay=replay), store=store)
            mrr["before"] = r["before"]["graph"]["mrr"]
            mrr[replay] = r["after"]["graph"]["mrr"]
    # measured: 1.0 → 0.24 without replay, 0.65 with one walk row per text row
    assert mrr[0.0] < mrr["before"] - 0.3, mrr            # it forgot
    assert mrr[1.0] > mrr[0.0] + 0.2, mrr                 # replay kept more of the graph


def test_tempered_loss_is_the_best_scale_and_no_worse_than_raw(compiled):
    from finetune import forgetting
    from finetune.data import blocks
    model = base(compiled / "ckpt")
    rows = blocks([[4, 5, 6, 7, 8, 9, 10, 11], [10, 11, 4, 6, 8, 10, 5, 7]] * 4, 8)
    loss, scale = forgetting.tempered_text_loss(model, rows, rows)
    grid = {s: forgetting.text_loss(model, rows, scale=s) for s in (scale / 1.5, scale * 1.5)}
    assert all(loss <= v + 1e-6 for v in grid.values())             # a minimum, as fitted
    assert loss <= forgetting.text_loss(model, rows) + 1e-6         # never worse than s = 1
    assert forgetting.text_loss(model, rows, scale=scale) == pytest.approx(loss, abs=1e-6)


def test_measurements_in_passes_of_few_rows_equal_one_pass(compiled, monkeypatch):
    """A vocabulary of millions caps the rows of a measuring pass (BATCH_LOGITS): passes of
    one row must measure what one pass of every row does."""
    from finetune import forgetting
    from finetune.data import blocks
    model = base(compiled / "ckpt")
    rows = blocks([[4, 5, 6, 7, 8, 9, 10, 11], [10, 11, 4, 6, 8, 10, 5, 7, 9]] * 3, 8)
    adj = sp.csr_array(np.ones((4, 4)) - np.eye(4))
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
    whole = (forgetting.text_loss(model, rows, scale=1.3), forgetting.logits_of(model, rows),
             forgetting.graph_fit(model, adj, pairs))
    assert forgetting.batch_rows(model, 32, rows) == 32 > len(rows)
    monkeypatch.setattr(forgetting, "BATCH_LOGITS", 1)
    assert forgetting.batch_rows(model, 32, rows) == 1
    assert forgetting.text_loss(model, rows, scale=1.3) == pytest.approx(whole[0], rel=1e-6)
    logits, targets = forgetting.logits_of(model, rows)
    torch.testing.assert_close(logits, whole[1][0], atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, whole[1][1])
    assert forgetting.graph_fit(model, adj, pairs) == whole[2]


def test_split_by_keys_keeps_documents_whatever_else_is_kept():
    from finetune.data import split
    docs = [[i, i + 1] for i in range(200)]
    keys = list(range(1000, 1200))
    train, held = split(docs, 0.1, 0, keys=keys)
    assert 5 < len(held) < 40 and len(train) + len(held) == 200
    # drop every third document (another lexicon kept fewer): the rest stay where they were
    kept = [i for i in range(200) if i % 3]
    _, held2 = split([docs[i] for i in kept], 0.1, 0, keys=[keys[i] for i in kept])
    assert held2 == [d for d in held if d[0] % 3]


def test_device_is_resolved_and_recorded(compiled, tmp_path):
    from graph.errors import GraftError
    from graph.runtime import resolve_device
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(GraftError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
    record = tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "cpu",
                  TuneConfig(max_steps=2, eval_every=2, batch_size=4, holdout=0.25,
                             device="cpu"))
    assert (record["device"], record["device_name"]) == ("cpu", "cpu")
    if not torch.cuda.is_available():                  # asked for, and absent: said, not CPU
        with pytest.raises(GraftError, match="torch sees no CUDA device"):
            tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "cuda",
                 TuneConfig(max_steps=2, batch_size=4, holdout=0.25, device="cuda"))


def test_sampled_loss_over_the_whole_vocabulary_is_the_full_loss(compiled):
    import numpy as np
    from finetune.data import collate
    from finetune.tune import sampled_loss
    model = base(compiled / "ckpt")
    batch = collate([[4, 5, 6, 7, 8], ([10, 11, 4, 6], 2)])
    full = model(**batch.as_kwargs()).loss
    vocab = model.config.vocab_size
    whole = sampled_loss(model, batch, 20 * vocab, np.random.default_rng(0))   # draws all
    assert torch.allclose(whole, full, atol=1e-5), (whole, full)
    few = sampled_loss(model, batch, 2, np.random.default_rng(0))    # fewer rivals: lower
    assert few < full - 1e-3


def test_sampled_tuning_trains_and_is_recorded(compiled, tmp_path):
    cfg = TuneConfig(max_steps=6, eval_every=3, batch_size=4, holdout=0.25, sampled=3)
    assert cfg.sampled_for(10 ** 6) == 3 and TuneConfig().sampled_for(40_000) == 8192
    assert TuneConfig().sampled_for(6_000) == 0 and cfg.sampled_for(3) == 0
    record = tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "s", cfg)
    assert record["sampled"] == 3 and record["steps"] == 6
    assert record["best_heldout_loss"] < record["before"]["heldout_loss"]
    with pytest.raises(GraftError, match="sampled >= 0"):
        TuneConfig(sampled=-1)


def test_held_out_loss_is_measured_on_rows_within_the_logit_budget(compiled, tmp_path):
    from finetune.tune import budget_rows
    rows = [[4, 5, 6, 7]] * 100
    assert budget_rows(rows, 10, 0, 10 ** 6) is rows                    # fits: all of them
    some = budget_rows([[i, i + 1] for i in range(100)], 10, 0, 400)    # 400 // 20 = 20 rows
    assert len(some) == 20 and some == sorted(some)
    record = tune(compiled / "ckpt", compiled / "related.txt", tmp_path / "m",
                  TuneConfig(max_steps=2, eval_every=2, batch_size=4, holdout=0.25,
                             measure_logits=1))
    assert record["rows"]["heldout_measured"] == min(8, record["rows"]["heldout"])


def test_two_processes_tune_in_lockstep(compiled, tmp_path):
    """Under `torchrun --nproc_per_node 2` (what `accelerate launch` does across GPUs) each
    process trains on half of every batch and the gradients are averaged before each step:
    both must end with the same weights (tune compares digests and fails otherwise), and
    process 0 writes the outputs."""
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "loop.cli",
         "--db", str(compiled / "g.duckdb"), "tune", str(compiled / "ckpt"),
         "--corpus", str(compiled / "related.txt"), "--out", str(out), "--max-steps", "6",
         "--eval-every", "2", "--batch-size", "4", "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "tune.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 6
    assert (out / "adapter_model.safetensors").exists()
    assert record["best_heldout_loss"] < record["before"]["heldout_loss"]
