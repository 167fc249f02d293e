"""The loop's approximation error (loop/approx.py): with the model as its own reference it is
tune's tempered held-out loss; over another checkpoint's vocabulary it equals a hand
computation on the restricted logits; its first/rest split adds up; particles the model
lacks are dropped, not scored as <unk>."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from transformers import AutoModelForCausalLM

from compiler.compile import compile_snapshot
from compiler.types import CompileConfig
from finetune import data
from finetune.forgetting import tempered_text_loss
from finetune.text import Lexicon
from finetune.tune import TuneConfig, scale_rows, text_rows
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from graph.store import Store
from loop.approx import approximation_error
from tests.conftest import compile_fixture, link, pid, write_jsonl

CFG = TuneConfig(holdout=0.5, seed=3)
DOCS = ["a1 a2 c1 a3 a4", "b1 c1 b2 b3", "a2 a3 a1 c1", "b4 b3 c1 b2 b1", "a4 a1 a2",
        "c1 b2 b1 b4", "a3 a4 c1 a1 a2", "b4 b3 b2 b1 c1"] * 3


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """(root, reference checkpoint, a later checkpoint with one more particle `c1`)."""
    root = compile_fixture(tmp_path_factory.mktemp("approx"), "communities",
                           CompileConfig(d=8, layers=2, attn_gain=0.3, mlp_gain=0.3))
    (root / "corpus.txt").write_text("\n\n".join(DOCS) + "\n")
    write_jsonl(root / "c1.particles.jsonl", [{"particle": pid("c1"), "name": "c1",
                                               "aliases": [], "text": "c1"}])
    write_jsonl(root / "c1.links.jsonl", [link("a1", "c1"), link("c1", "b1", time=2)])
    with Store(root / "g.duckdb") as store:
        ingest_particles(store, [root / "c1.particles.jsonl"])
        ingest_links(store, [root / "c1.links.jsonl"])
        compile_snapshot(store, take_snapshot(store), root / "later",
                         CompileConfig(d=8, layers=2, attn_gain=0.3, mlp_gain=0.3))
    return root, root / "ckpt", root / "later"


def model_of(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_own_vocabulary_is_tunes_tempered_loss(two):
    root, ref, _ = two
    _, train_rows, held_rows = text_rows(Lexicon.of_checkpoint(ref), root / "corpus.txt", CFG)
    model = model_of(ref)
    loss, scale = tempered_text_loss(
        model, scale_rows(train_rows, model.config.vocab_size, CFG.seed), held_rows)
    got = approximation_error(ref, ref, root / "corpus.txt", CFG)
    assert got["error"] == pytest.approx(loss, abs=1e-5)
    assert got["scale"] == pytest.approx(scale, abs=1e-5)
    assert got["tokens"] == sum(len(r) - 1 for r in held_rows) and got["dropped"] == 0


def test_a_larger_vocabulary_is_scored_over_the_reference_particles(two):
    root, ref, later = two
    assert model_of(later).config.vocab_size == model_of(ref).config.vocab_size + 1
    _, train_rows, held_rows = text_rows(Lexicon.of_checkpoint(ref), root / "corpus.txt", CFG)
    # by hand: reference tokens → the later model's tokens by particle id, then the softmax
    # over the reference's particles only, at the scale that fits the training rows best
    ref_ids = json.loads((ref / "particles.json").read_text())
    own = {p: i + 4 for i, p in enumerate(json.loads((later / "particles.json").read_text()))}
    to_later = np.array([0, 1, 2, 3] + [own[p] for p in ref_ids])
    model = model_of(later)

    def logits_targets(rows):
        out, tgt = [], []
        with torch.no_grad():
            for r in rows:
                lg = model(input_ids=torch.as_tensor(to_later[r])[None]).logits[0, :-1]
                out.append(lg[:, torch.tensor(to_later)])
                tgt.append(torch.tensor(r[1:]))
        return torch.cat(out), torch.cat(tgt)

    fl, ft = logits_targets(scale_rows(train_rows, len(to_later), CFG.seed))
    hl, ht = logits_targets(held_rows)
    ce = lambda lg, t, s: float(torch.nn.functional.cross_entropy(lg * s, t))  # noqa: E731
    best = minimize_scalar(lambda x: ce(fl, ft, np.exp(x)), bounds=(np.log(1 / 50), np.log(50)),
                           method="bounded", options={"xatol": 1e-9})
    got = approximation_error(later, ref, root / "corpus.txt", CFG)
    assert got["scale"] == pytest.approx(np.exp(best.x), rel=1e-3)
    assert got["error"] == pytest.approx(ce(hl, ht, got["scale"]), abs=1e-5)
    assert got["tokens"] == approximation_error(ref, ref, root / "corpus.txt", CFG)["tokens"]


def test_first_and_rest_add_up_and_first_is_one_per_held_out_document(two):
    root, ref, later = two
    seqs, _, _ = text_rows(Lexicon.of_checkpoint(ref), root / "corpus.txt", CFG)
    _, held_docs = data.split(seqs.ids, CFG.holdout, CFG.seed, keys=seqs.lines)
    got = approximation_error(later, ref, root / "corpus.txt", CFG)
    assert got["first_tokens"] == len(held_docs)
    rest = got["tokens"] - got["first_tokens"]
    assert got["error"] * got["tokens"] == pytest.approx(
        got["first"] * got["first_tokens"] + got["rest"] * rest, rel=1e-5)


def test_particles_the_model_lacks_are_dropped_not_scored_as_unk(two):
    root, ref, later = two
    _, _, held_rows = text_rows(Lexicon.of_checkpoint(later), root / "corpus.txt", CFG)
    c1 = 4 + json.loads((later / "particles.json").read_text()).index(pid("c1"))
    targets = [t for r in held_rows for t in r[1:]]
    got = approximation_error(ref, later, root / "corpus.txt", CFG)   # `ref` lacks c1
    assert got["dropped"] == targets.count(c1) > 0
    assert got["tokens"] == len(targets) - targets.count(c1)


def test_kl_of_tuned_against_compiled_at_first_positions_by_hand(two, tmp_path):
    """KL(tuned ‖ compiled) after each held-out document's first particle, over the
    reference's particles: the tuned model as it is, the compiled logits at the scale that
    brings them closest (found here by scipy), and raw. A fresh adapter changes nothing: 0
    both ways, at scale 1."""
    from finetune.tune import tune
    from peft import PeftModel
    from scipy.optimize import minimize_scalar
    root, ref, later = two
    fresh = TuneConfig(holdout=0.5, seed=3, max_steps=1, lr=1e-12, eval_every=1)
    tune(later, root / "corpus.txt", tmp_path / "fresh", fresh)
    got = approximation_error(later, ref, root / "corpus.txt", CFG, adapter=tmp_path / "fresh")
    assert got["kl"] == pytest.approx(0, abs=1e-6) and got["kl_raw"] == pytest.approx(0, abs=1e-6)
    assert got["kl_scale"] == pytest.approx(1, rel=0.02)
    moved = TuneConfig(holdout=0.5, seed=3, max_steps=10, lr=5e-2, eval_every=5)
    tune(later, root / "corpus.txt", tmp_path / "moved", moved)
    got = approximation_error(later, ref, root / "corpus.txt", CFG, adapter=tmp_path / "moved")
    seqs, _, _ = text_rows(Lexicon.of_checkpoint(ref), root / "corpus.txt", CFG)
    _, held_docs = data.split(seqs.ids, CFG.holdout, CFG.seed, keys=seqs.lines)
    ref_ids = json.loads((ref / "particles.json").read_text())
    own = {p: i + 4 for i, p in enumerate(json.loads((later / "particles.json").read_text()))}
    cols = torch.tensor([0, 1, 2, 3] + [own[p] for p in ref_ids])
    compiled = model_of(later)
    tuned = PeftModel.from_pretrained(model_of(later), str(tmp_path / "moved")).eval()
    ts, zs = [], []
    with torch.no_grad():
        for doc in held_docs:
            ids = torch.tensor([[int(cols[doc[0]])]])
            ts.append(torch.log_softmax(tuned(input_ids=ids).logits[0, -1, cols], -1))
            zs.append(compiled(input_ids=ids).logits[0, -1, cols])

    def kl(s: float) -> float:
        return float(np.mean([float((t.exp() * (t - torch.log_softmax(s * z, -1))).sum())
                              for t, z in zip(ts, zs)]))
    best = minimize_scalar(kl, bounds=(0.02, 50), method="bounded", options={"xatol": 1e-6})
    assert got["kl_raw"] == pytest.approx(kl(1.0), abs=1e-5) and got["kl_raw"] > 0.01
    assert got["kl"] == pytest.approx(best.fun, abs=1e-5) and got["kl"] < got["kl_raw"]
    assert got["kl_scale"] == pytest.approx(best.x, rel=0.01)
    assert kl(got["kl_scale"]) == pytest.approx(got["kl"], abs=1e-5)


def test_a_large_vocabulary_scores_seeded_whole_documents_within_the_budget():
    from loop.approx import budget_docs
    docs = [[4] * n for n in (3, 5, 2, 7, 4)]
    assert budget_docs(docs, 10, 0, 10 ** 6) is docs                    # fits: all of them
    some = budget_docs(docs, 10, 0, 100)                                # ≤ 10 tokens
    assert 0 < sum(map(len, some)) <= 10 and all(d in docs for d in some)
    assert some == budget_docs(docs, 10, 0, 100)                        # seeded
    assert len(budget_docs(docs, 10, 0, 1)) == 1                        # at least one
