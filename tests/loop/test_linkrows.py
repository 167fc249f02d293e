"""Link rows: the page, </s>, the targets; the loss only on the targets; the scoring context
the same layout; and a model tuned on them ranks a hidden link that plain text cannot."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compiler.compile import compile_snapshot
from compiler.types import SPECIAL_TOKENS, CompileConfig
from finetune.data import IGNORE, collate
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from graph.store import Store
from loop import evaluate
from loop.linkrows import EOS, LinkRowConfig, PageContexts
from tests.conftest import pid, write_wiki


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    root = tmp_path_factory.mktemp("linkrows")
    particles, links, corpus = write_wiki(root, pages=30)
    with Store(root / "g.duckdb") as store:
        ingest_particles(store, [particles])
        ingest_links(store, [links])
        compile_snapshot(store, take_snapshot(store), root / "ckpt",
                         CompileConfig(d=16, layers=1, check_determinism=False))
        graph = evaluate.load_graph(store)
    return root, graph


def test_rows_put_the_page_then_the_other_targets_then_the_answer(wiki):
    root, graph = wiki
    pages = PageContexts(graph, root / "ckpt", LinkRowConfig(links=2, seed=1))
    particles = json.loads((root / "ckpt" / "particles.json").read_text())
    token = {p: i + len(SPECIAL_TOKENS) for i, p in enumerate(particles)}
    p = graph.position()[pid("page05")]
    own = token[pid("page05")]
    rows = [(r, c) for r, c in pages.rows() if r[0] == own]
    truth = sorted(token[graph.index[q]] for q in graph.known[[p]].nonzero()[1])
    assert sorted(r[-1] for r, _ in rows) == truth           # one row per link, each answered
    named = pages.page[p]
    assert own not in named and named
    for r, context in rows:
        assert context == len(r) - 1 and r[context - 1] == EOS
        others = r[1 + len(named):context - 1]
        assert r[1:1 + len(named)] == named
        assert len(others) == 2 and r[-1] not in others and set(others) <= set(truth)
    ctx = pages.context(p)
    assert ctx[-1] == EOS and ctx[:1 + len(named)] == [own, *named]
    assert set(ctx[1 + len(named):-1]) <= set(truth) and len(ctx) == len(named) + 4
    batch = collate([rows[0], [5, 6, 7]])
    r, c = rows[0]
    assert (batch.labels[0, :c] == IGNORE).all() and batch.labels[0, c] == r[-1]
    assert batch.labels[1, :3].tolist() == [5, 6, 7]


def test_the_context_scores_as_it_would_alone(wiki):
    """Left padding in a batch of contexts leaves each row's next-particle scores as they are
    one row at a time (RoPE sees relative positions only)."""
    from loop.rank import Features
    root, graph = wiki
    feats = Features(graph, root / "ckpt", embed=False)
    feats.pages = PageContexts(graph, root / "ckpt")
    rows = feats.ckpt[feats.have[:5]]
    together = feats._context_logits(rows)
    alone = np.concatenate([feats._context_logits(rows[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    ids = torch.tensor([feats.pages.context(int(feats.have[0]))])
    with torch.no_grad():
        direct = torch.log_softmax(feats.model(input_ids=ids).logits[0, -1], -1)
    cols = len(SPECIAL_TOKENS) + feats.ckpt[feats.have]
    np.testing.assert_allclose(together[0], direct[cols].numpy(), rtol=1e-4, atol=1e-4)


def test_cross_fitted_pages_are_scored_by_the_adapter_that_never_saw_them(wiki, tmp_path):
    from peft import PeftModel

    from finetune.checkpoints import load_checked
    from finetune.tune import TuneConfig
    from loop.linkrows import OTHER, tune_model
    from loop.rank import Features
    root, graph = wiki
    cfg = TuneConfig(max_steps=4, eval_every=2, link_rows=1.0, batch_size=4)
    with Store(root / "g.duckdb", read_only=True, create=False) as store:
        tune_model(store, root / "ckpt", root / "wiki.corpus.txt", tmp_path / "ad", cfg,
                   LinkRowConfig())
    assert (tmp_path / "ad" / OTHER / "adapter_config.json").exists()
    pages = PageContexts(graph, root / "ckpt")
    halves = {h: [p for p in range(len(graph.index)) if pages.ckpt[p] >= 0
                  and pages.half(p) == h] for h in (0, 1)}
    assert halves[0] and halves[1]
    mine = {r[0][0] for r in pages.rows(half=0)}
    assert mine == {pages.token(p) for p in halves[0] if len(pages.targets(p))}
    feats = Features(graph, root / "ckpt", tmp_path / "ad", embed=False)
    assert feats.halves and feats.lm_feature == "tuned_context"
    p0, p1 = halves[0][0], halves[1][0]
    got = feats.block(np.array([p0, p1]), ("tuned_context",))[..., 0]           # (2, P)
    cols = feats.have
    for p, folder in ((p0, tmp_path / "ad" / OTHER), (p1, tmp_path / "ad")):
        model = PeftModel.from_pretrained(load_checked(root / "ckpt", dtype=torch.float32),
                                          str(folder)).eval()
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([pages.context(p)]))
                                   .logits[0, -1], -1)
        want = lp[len(SPECIAL_TOKENS) + feats.ckpt[cols]].numpy()
        np.testing.assert_allclose(got[[p0, p1].index(p), cols], want, rtol=1e-4, atol=1e-4)
