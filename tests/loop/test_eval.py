"""`graft eval`: hand-computed ranks on a hand-made graph, what counts as a candidate, the
holdout file, the baselines, the model's scorer, and the CLI (split-holdout, eval --json)."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from graph.errors import GraftError
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from loop import baselines, evaluate
from loop.cli import main
from tests.conftest import CYBERWIKI, link, needs_cyberwiki, pid, write_jsonl

# The hand-made graph. Ground truth (ingest, token `link` unless said): alpha→beta,
# gamma→beta, delta→beta, delta→gamma, epsilon→gamma (`tag`), gamma→delta, zeta→epsilon;
# curator: zeta→alpha. The loop's predictions (extract): alpha→gamma, alpha→delta.
NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
TEXTS = {"alpha": "Alpha cites delta and eps.", "zeta": "zeta is near gamma"}
INGEST = [("alpha", "beta"), ("gamma", "beta"), ("delta", "beta"), ("delta", "gamma"),
          ("epsilon", "gamma", "tag"), ("gamma", "delta"), ("zeta", "epsilon")]
HOLDOUT = [("alpha", "gamma"), ("alpha", "epsilon"), ("zeta", "beta"),
           ("alpha", "beta"),     # an ingest link: skipped, in the store
           ("zeta", "alpha"),     # a curator link: skipped, in the store
           ("alpha", "gamma"),    # again: skipped, duplicate
           ("alpha", "omega")]    # not a particle of the store: skipped, unknown
# Candidates: for alpha all but alpha, beta (ingest) — gamma and delta stay (extract);
# for zeta all but zeta, epsilon (ingest), alpha (curator).


def hand_store(store, tmp_path):
    particles = [{"particle": pid(n), "name": n, "aliases": ["eps"] if n == "epsilon" else [],
                  "text": TEXTS.get(n, "")} for n in NAMES]
    ingest_particles(store, [write_jsonl(tmp_path / "p.jsonl", particles)])
    ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", [
        link(s, d, token=rest[0] if rest else "link") for s, d, *rest in INGEST])])
    ingest_links(store, [write_jsonl(tmp_path / "c.jsonl", [link("zeta", "alpha")])],
                 origin="curator")
    ingest_links(store, [write_jsonl(tmp_path / "x.jsonl", [
        link("alpha", "gamma"), link("alpha", "delta")])], origin="extract", cycle=1)
    holdout = write_jsonl(tmp_path / "holdout.jsonl",
                          [{"from": pid(s), "to": pid(d)} for s, d in HOLDOUT])
    return evaluate.load_graph(store), holdout


def queries_of(graph, holdout):
    return evaluate.select_queries(graph, evaluate.read_holdout(holdout))


def by_name(graph, values: dict[str, float]):
    """A fixed Scorer: the same score row for every source, given per particle name."""
    row = np.array([values[n] for n in names_in_index(graph)])
    return lambda sources: np.tile(row, (len(sources), 1))


def names_in_index(graph):
    back = {pid(n): n for n in NAMES}
    return [back[p] for p in graph.index]


def metrics(mrr, hits1, hits10, auc):
    return {"mrr": mrr, "hits1": hits1, "hits10": hits10, "auc": auc}


# Queries (alpha, gamma), (alpha, epsilon), (zeta, beta): ranks and AUCs by hand.
# popularity (in-stake): beta 3, gamma 2 (the tag counts), delta 1, epsilon 1, alpha 1, zeta 0
#   ranks 1; 1 + 1 above (gamma) + ½ tie (delta) = 2.5; 1   AUC 1, 1 − 1.5/3, 1
# mentions: alpha's text names delta and epsilon (alias "eps"), zeta's gamma; BIG = 3 + 1;
#   `link` in-degree: beta 3, gamma 1 (not the tag), delta 1, epsilon 1, alpha 1 (curator)
#   gamma 1 below delta 5, epsilon 5: rank 3; epsilon ties delta: 1.5; beta 3 below gamma 5: 2
# fixed: beta 5, epsilon 3, zeta 3, gamma −inf, delta −inf, alpha 0
#   gamma −inf: 2 above (epsilon, zeta) + ½ (delta) = 3.5; epsilon ties zeta: 1.5; beta first
EXPECTED = {
    "popularity": metrics((1 + 1 / 2.5 + 1) / 3, 2 / 3, 1.0, (1 + 0.5 + 1) / 3),
    "mentions": metrics((1 / 3 + 1 / 1.5 + 1 / 2) / 3, 0.0, 1.0, (1 / 3 + 5 / 6 + 1 / 2) / 3),
    "fixed": metrics((1 / 3.5 + 1 / 1.5 + 1) / 3, 1 / 3, 1.0, (1 / 6 + 5 / 6 + 1) / 3),
    "constant": metrics((1 / 2.5 + 1 / 2.5 + 1 / 2) / 3, 0.0, 1.0, 0.5),
}
FIXED = {"beta": 5, "epsilon": 3, "zeta": 3, "gamma": -math.inf, "delta": -math.inf, "alpha": 0}


def test_hand_computed_ranks(store, tmp_path):
    graph, holdout = hand_store(store, tmp_path)
    cfg = baselines.BaselineConfig()
    scorers = {"popularity": baselines.popularity(graph, cfg),
               "mentions": baselines.mentions(graph, cfg),
               "fixed": by_name(graph, FIXED), "constant": by_name(graph, dict.fromkeys(NAMES, 0))}
    for batch, workers in ((None, 1), (1, 1), (1, 2)):   # batching and threads change nothing
        result = evaluate.evaluate(graph, queries_of(graph, holdout), scorers, batch=batch,
                                   workers=workers)
        assert result.n == 3
        for name, want in EXPECTED.items():
            assert result.metrics(name) == pytest.approx(want), name


def test_a_seeded_sample_of_queries_is_ranked_as_in_the_whole_set(store, tmp_path):
    graph, holdout = hand_store(store, tmp_path)
    queries = queries_of(graph, holdout)
    scorers = {"mentions": baselines.mentions(graph, baselines.BaselineConfig()),
               "fixed": by_name(graph, FIXED)}
    whole = evaluate.evaluate(graph, queries, scorers)
    assert evaluate.sample_queries(queries, 0) is queries           # 0: all of them
    assert evaluate.sample_queries(queries, 3) is queries           # as many as there are
    some = evaluate.sample_queries(queries, 2, seed=4)
    np.testing.assert_array_equal(some.pairs, evaluate.sample_queries(queries, 2, 4).pairs)
    assert some.skipped == {**queries.skipped, "unsampled": 1}
    at = [queries.pairs.tolist().index(pair) for pair in some.pairs.tolist()]
    assert at == sorted(at) and len(set(at)) == 2                   # a subset, in order
    part = evaluate.evaluate(graph, some, scorers)
    for name in scorers:                          # each still ranked among every candidate
        np.testing.assert_array_equal(part.ranks[name], whole.ranks[name][at])
    with pytest.raises(GraftError, match="sample of -1"):
        evaluate.sample_queries(queries, -1)


def test_extraction_sources_are_pages_when_scanning_candidates(store, tmp_path):
    from loop.extract import source_rows
    graph, _ = hand_store(store, tmp_path)
    pages = sorted(graph.position()[pid(n)] for n in TEXTS)        # alpha and zeta have text
    everyone = list(range(len(graph.index)))
    assert source_rows(graph, "auto", "all").tolist() == everyone
    assert source_rows(graph, "auto", "candidates").tolist() == pages
    assert source_rows(graph, "text", "all").tolist() == pages
    assert source_rows(graph, "all", "candidates").tolist() == everyone
    bare = dataclasses.replace(graph, texts={})            # no page: every particle, auto
    assert source_rows(bare, "auto", "candidates").tolist() == everyone
    with pytest.raises(GraftError, match="no particle in the store has text"):
        source_rows(bare, "text", "candidates")
    with pytest.raises(GraftError, match="sources 'some'"):
        source_rows(graph, "some", "all")


def test_candidates_drop_ingest_and_curator_targets_but_not_extract(store, tmp_path):
    graph, holdout = hand_store(store, tmp_path)
    pos = graph.position()
    queries = queries_of(graph, holdout)
    assert queries.skipped == {"in_store": 2, "duplicate": 1, "unknown": 1}
    index = names_in_index(graph)
    got = {(index[p], index[q]) for p, q in queries.pairs}
    assert got == {("alpha", "gamma"), ("alpha", "epsilon"), ("zeta", "beta")}
    mask = evaluate.candidate_mask(graph, np.array([pos[pid("alpha")], pos[pid("zeta")]]))
    assert sorted(n for n, m in zip(index, mask[0]) if m) == ["delta", "epsilon", "gamma", "zeta"]
    assert sorted(n for n, m in zip(index, mask[1]) if m) == ["beta", "delta", "gamma"]
    # a held-out link the loop already proposed (extract) is still a query
    again = write_jsonl(tmp_path / "again.jsonl", [{"from": pid("alpha"), "to": pid("delta")}])
    assert len(queries_of(graph, again).pairs) == 1


def test_semcons_are_not_candidates_unless_also_linked(store, tmp_path):
    """A link type (a semcon given by name: ingest makes it a named particle) is not a
    target to rank; a semcon that is also the end of a content link stays a particle."""
    ingest_links(store, [write_jsonl(tmp_path / "t.jsonl", [
        link("alpha", "beta", semcon="parent_of"), link("beta", "gamma", semcon="sibling_of"),
        link("gamma", "sibling_of")])])
    graph = evaluate.load_graph(store)
    assert sorted(graph.index) == sorted(pid(n) for n in ["alpha", "beta", "gamma", "sibling_of"])
    assert pid("parent_of") not in graph.names and len(graph.names) == 1   # sibling_of's name


def test_bad_holdout_rows_are_named_and_nan_scores_refused(store, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"from": pid("alpha"), "to": pid("beta")},
                                               {"from": "ALPHA", "to": pid("beta")}, "[1, 2]",
                                               "{not json", {"from": pid("alpha")}])
    with pytest.raises(GraftError) as exc:
        evaluate.read_holdout(bad)
    text = str(exc.value)
    assert "4 bad link row(s)" in text
    assert f"{bad}:2: field 'from' got 'ALPHA'; expected 64 lowercase hex" in text
    assert f"{bad}:3: got [1, 2]; expected a JSON object" in text
    assert f"{bad}:4: got '{{not json'" in text
    assert f"{bad}:5: field 'to' got None" in text
    graph, holdout = hand_store(store, tmp_path)
    nan = by_name(graph, {**dict.fromkeys(NAMES, 0.0), "beta": math.nan})
    with pytest.raises(GraftError, match="'nan' returned NaN"):
        evaluate.evaluate(graph, queries_of(graph, holdout), {"nan": nan})


def test_graph_baselines_by_hand(store, tmp_path):
    graph, _ = hand_store(store, tmp_path)
    pos, cfg = graph.position(), baselines.BaselineConfig()
    alpha = np.array([pos[pid("alpha")]])
    row = dict(zip(names_in_index(graph), baselines.adamic_adar(graph, cfg)(alpha)[0]))
    # undirected neighbours: alpha {beta, zeta}, gamma {beta, delta, epsilon}, epsilon
    # {gamma, zeta}; deg beta = 3, deg zeta = 2
    assert row["gamma"] == pytest.approx(1 / math.log(3))
    assert row["epsilon"] == pytest.approx(1 / math.log(2))
    assert row["delta"] == pytest.approx(1 / math.log(3)) and row["zeta"] == 0
    for name in ("ppmi", "spectral", "focus"):
        scores = baselines.BASELINES[name](graph, cfg)(alpha)
        assert scores.shape == (1, 6) and np.isfinite(scores).all()
        again = baselines.BASELINES[name](graph, cfg)(alpha)
        assert np.array_equal(scores, again), f"{name} is not deterministic"


@pytest.mark.skipif(not baselines.kge_available(), reason="PyKEEN is not installed (graft[kge])")
def test_pykeen_baseline_is_seeded(store, tmp_path):
    import peft  # noqa: F401 — loads bitsandbytes, whose optimizers broke PyKEEN's import
    graph, _ = hand_store(store, tmp_path)
    cfg = baselines.BaselineConfig(kge_epochs=2, kge_dim=8)
    first = baselines.pykeen(graph, cfg)(np.arange(6))
    assert first.shape == (6, 6) and np.isfinite(first).all()
    assert np.array_equal(first, baselines.pykeen(graph, cfg)(np.arange(6)))


def test_model_scorer_maps_checkpoint_tokens_to_the_store(store, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from compiler.compile import compile_snapshot
    from compiler.types import CompileConfig
    from finetune.checkpoints import load_checked
    from graph.snapshot import take_snapshot
    graph, _ = hand_store(store, tmp_path)
    ckpt = tmp_path / "ckpt"
    compile_snapshot(store, take_snapshot(store), ckpt,
                     CompileConfig(d=8, layers=1, check_determinism=False))
    ingest_particles(store, [write_jsonl(tmp_path / "eta.jsonl", [{"name": "eta"}])])
    graph = evaluate.load_graph(store)                     # eta: in the store, not the model
    order = json.loads((ckpt / "particles.json").read_text())
    pos = graph.position()
    sources = np.array([pos[pid(n)] for n in ("eta", "alpha", "delta")])
    scores = evaluate.model_scorer(ckpt, graph.index)(sources)
    assert np.isneginf(scores[0]).all() and np.isneginf(scores[:, sources[0]]).all()
    model = load_checked(ckpt, dtype=torch.float32).eval()
    for row, source in ((1, sources[1]), (2, sources[2])):
        ids = torch.tensor([[4 + order.index(graph.index[source])]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].numpy()
        want = [logits[4 + order.index(p)] if p in order else -np.inf for p in graph.index]
        np.testing.assert_allclose(scores[row], want, rtol=1e-6)
    # a fresh LoRA adapter (B = 0) changes nothing
    lora = get_peft_model(load_checked(ckpt, dtype=torch.float32),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    adapted = evaluate.model_scorer(ckpt, graph.index, tmp_path / "adapter")(sources)
    np.testing.assert_allclose(adapted, scores, rtol=1e-6)
    # spectral from the checkpoint: E_p · H_q of its embed_tokens and lm_head
    spectral = baselines.spectral(graph, baselines.BaselineConfig(checkpoint=str(ckpt)))
    e, h = model.model.embed_tokens.weight.detach().numpy(), model.lm_head.weight.detach().numpy()
    got = spectral(sources[1:2])[0]
    want = [e[4 + order.index(pid("alpha"))] @ h[4 + order.index(p)] if p in order else -np.inf
            for p in graph.index]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def graft_cli(capsys, *argv):
    rc = main([*map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_eval_json_and_table(capsys, tmp_path):
    from graph.store import Store
    db = tmp_path / "g.duckdb"
    with Store(db) as store:
        _, holdout = hand_store(store, tmp_path)
    rc, out, err = graft_cli(capsys, "--db", db, "eval", "--holdout", holdout,
                             "--methods", "popularity,mentions", "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert set(got) == {"n", "methods"} and got["n"] == 3
    assert list(got["methods"]) == ["popularity", "mentions"]
    for name in ("popularity", "mentions"):
        assert got["methods"][name] == pytest.approx(EXPECTED[name])
    assert "'in_store': 2, 'duplicate': 1, 'unknown': 1" in err
    rc, out, _ = graft_cli(capsys, "--db", db, "eval", "--holdout", holdout,
                           "--methods", "mentions")
    assert rc == 0 and out.splitlines()[1].split() == ["mentions", "0.5000", "0.0000",
                                                       "1.0000", "0.5556", "3"]
    assert "skipped held-out links: 2 in store, 1 duplicate, 1 unknown" in out
    rc, _, err = graft_cli(capsys, "--db", db, "eval", "--holdout", holdout, "--methods", "bm25")
    assert rc == 1 and "unknown ['bm25']" in err
    rc, _, err = graft_cli(capsys, "--db", db, "eval", "--holdout", holdout, "--methods", "graft")
    assert rc == 1 and "needs --model" in err


def test_split_holdout_of_cold_pages_takes_every_link_of_them(tmp_path):
    rows = [link(f"p{i}", f"q{j}", time=j) for i in range(10) for j in range(i % 5)]
    src = write_jsonl(tmp_path / "l.jsonl", rows)
    record = evaluate.split_links(src, 0.0, 1, tmp_path / "t", tmp_path / "h", cold_pages=0.5)
    held = [json.loads(x) for x in (tmp_path / "h").read_text().splitlines()]
    pages = {r["from"] for r in held}
    # pages with ≥ 3 links: i % 5 in (3, 4) → 4 pages; half of them, all their links
    assert record["pages"] == len(pages) == 2
    assert all(sum(r["from"] == p for r in rows) >= 3 for p in pages)
    assert len(held) == sum(r["from"] in pages for r in rows) == record["holdout"]
    kept = [json.loads(x) for x in (tmp_path / "t").read_text().splitlines()]
    assert not {r["from"] for r in kept} & pages


def test_split_holdout_is_seeded_and_verbatim(capsys, tmp_path):
    rows = [link(f"n{i}", f"n{i + 1}", token="tag" if i % 4 == 0 else "link") for i in range(40)]
    src = write_jsonl(tmp_path / "links.jsonl", rows)
    outs = []
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        train, held = tmp_path / f"{run}.train", tmp_path / f"{run}.holdout"
        rc, out, err = graft_cli(capsys, "split-holdout", src, "--fraction", 0.25, "--seed", seed,
                                 "--train", train, "--holdout", held, "--token", "link", "--json")
        assert rc == 0, err
        assert json.loads(out) == {"rows": 40, "eligible": 30, "train": 32, "holdout": 8}
        outs.append((train.read_text(), held.read_text()))
        lines = src.read_text().splitlines()
        assert sorted(train.read_text().splitlines() + held.read_text().splitlines()) == sorted(lines)
        assert all(json.loads(x)["token"] == "link" for x in held.read_text().splitlines())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    rc, _, err = graft_cli(capsys, "split-holdout", src, "--fraction", 1.5, "--train",
                           tmp_path / "t", "--holdout", tmp_path / "h")
    assert rc == 1 and "strictly between 0 and 1" in err


@needs_cyberwiki
def test_cyberwiki_smoke(capsys, tmp_path):
    """A 10% split of the train links: the mention baseline is far above popularity (README
    of the data: 0.363 vs 0.021 MRR on the independent holdout)."""
    db = tmp_path / "wiki.duckdb"
    graft_cli(capsys, "split-holdout", CYBERWIKI / "train_links.jsonl", "--seed", 1, "--token",
              "link", "--train", tmp_path / "train.jsonl", "--holdout", tmp_path / "dev.jsonl")
    assert graft_cli(capsys, "--db", db, "ingest", "particles", CYBERWIKI / "particles.jsonl")[0] == 0
    assert graft_cli(capsys, "--db", db, "ingest", "links", tmp_path / "train.jsonl")[0] == 0
    rc, out, err = graft_cli(capsys, "--db", db, "eval", "--holdout", tmp_path / "dev.jsonl",
                             "--methods", "popularity,adamic_adar,mentions", "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["n"] > 1000
    m = got["methods"]
    assert m["mentions"]["mrr"] > 0.2 > m["adamic_adar"]["mrr"] > m["popularity"]["mrr"]
    assert all(0.5 < v["auc"] <= 1 for v in m.values())
