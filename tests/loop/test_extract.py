"""The loop's first half on a tiny graph whose text states a missing link: tune on the text,
extract, review, stake — and no duplicates when it runs again."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from compiler.types import CompileConfig
from finetune.trl_jobs import preference_pairs
from finetune.tune import TuneConfig, tune
from graph.errors import GraftError
from graph.store import Store
from loop.cli import main
from loop.extract import ExtractConfig, extract
from loop.review import add_proposals, decide, decisions, list_proposals
from tests.conftest import FIXTURES, compile_fixture, pid


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """typed compiled, then LoRA-tuned on its corpus (each sentence a document, × 6): the
    text says a tail is part of a dog; the graph only links tail → cat."""
    root = tmp_path_factory.mktemp("loop")
    lines = [x for x in (FIXTURES / "typed.corpus.txt").read_text().splitlines() if x.strip()]
    (root / "corpus.txt").write_text("\n\n".join(lines * 6) + "\n")
    compile_fixture(root, "typed", CompileConfig(d=12, heads=3, layers=2,
                                                 check_determinism=False))
    with Store(root / "g.duckdb") as store:
        tune(root / "ckpt", root / "corpus.txt", root / "adapter",
             TuneConfig(max_steps=60, lr=1e-2, eval_every=60, batch_size=8), store=store)
    return root


def test_the_missing_link_the_text_states_is_proposed(tuned):
    with Store(tuned / "g.duckdb") as store:
        props = extract(store, tuned / "ckpt", ExtractConfig(top_k=50, per_source=3),
                        adapter=tuned / "adapter", corpus=tuned / "corpus.txt")
    from_tail = [p for p in props if p.src == pid("tail")]
    assert from_tail and from_tail[0].dst == pid("dog"), [(p.src[:6], p.dst[:6]) for p in props]
    best = from_tail[0]
    assert best.tuned > best.compiled                    # tuning raised the belief
    assert any("tail" in text.lower() and "dog" in text.lower()
               for _, text in best.evidence["lines"])
    assert len(best.evidence["head_deltas"]) == 3 and best.head is not None
    for p in props:                                       # never an existing link or a self-link
        assert p.src != p.dst and (p.src, p.dst) not in {(pid("tail"), pid("cat"))}


def test_review_stakes_accepted_once_and_feeds_dpo(tuned, tmp_path):
    db = tmp_path / "g.duckdb"
    db.write_bytes((tuned / "g.duckdb").read_bytes())
    with Store(db) as store:
        props = extract(store, tuned / "ckpt", ExtractConfig(top_k=50),
                        adapter=tuned / "adapter")
        assert add_proposals(store, props, cycle=1, model="m", adapter="a") == len(props)
        assert add_proposals(store, props, cycle=1, model="m", adapter="a") == 0   # rerun
        listed = list_proposals(store, limit=100)
        assert len(listed) == len(props)
        tail_dog = next(r for r in listed if (r["src_name"], r["dst_name"]) == ("tail", "dog"))
        other = next(r for r in listed if r["src_name"] == "tail" and r["id"] != tail_dog["id"])
        links_before = store.scalar("SELECT count(*) FROM cyberlinks")
        amounts = sorted(a for (a,) in store.query(
            "SELECT amount FROM cyberlinks WHERE origin = 'ingest' AND valence = 1"))
        median = float(np.median(amounts))                     # the typed fixture: 2 .. 5
        result = decide(store, accept=[tail_dog["id"]], reject=[other["id"]], reviewer="ann")
        assert result.decided == sorted([tail_dog["id"], other["id"]]) and result.staked == 1
        row = store.query("SELECT neuron, token, origin, cycle, amount, valence FROM cyberlinks "
                          "WHERE src = ? AND dst = ?", [pid("tail"), pid("dog")])
        assert row == [("graft-extractor", "link", "extract", 1,
                        max(1, round(tail_dog["confidence"] * median)), 1)]
        again = decide(store, accept=[tail_dog["id"]])           # already decided: nothing
        assert again.decided == [] and again.staked == 0
        assert store.scalar("SELECT count(*) FROM cyberlinks") == links_before + 1
        assert preference_pairs(decisions(store)) == [
            {"prompt": "tail", "chosen": "dog", "rejected": other["dst_name"]}]
        with pytest.raises(GraftError, match="no proposal with id 999"):
            decide(store, accept=[999])
        # a rejected pair never returns, not in a later cycle either
        rejected = (pid("tail"), other["dst"])
        assert rejected in {(p.src, p.dst) for p in props}
        later = extract(store, tuned / "ckpt", ExtractConfig(top_k=50),
                        adapter=tuned / "adapter")
        assert rejected not in {(p.src, p.dst) for p in later}
        assert len(later) == len(props) - 2           # and the accepted one is a link now


def test_cli_extract_and_review(tuned, tmp_path, capsys):
    db = tmp_path / "g.duckdb"
    db.write_bytes((tuned / "g.duckdb").read_bytes())
    assert main(["--db", str(db), "extract", str(tuned / "ckpt"), "--adapter",
                 str(tuned / "adapter"), "--top-k", "5", "--cycle", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["new"] == 5 and len(out["proposals"]) == 5
    assert main(["--db", str(db), "review", "--accept-above=-1e9", "--stake-scale", "1000",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["staked"] == 5
    with Store(db) as store:
        staked = store.query("SELECT l.amount, p.confidence FROM cyberlinks l JOIN proposals p "
                             "ON p.staked = l.seq")
    assert len(staked) == 5 and all(a == max(1, round(c * 1000)) for a, c in staked)
    assert main(["--db", str(db), "review", "--status", "accepted", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["proposals"]) == 5


def test_no_target_takes_more_than_its_cap(tuned):
    with Store(tuned / "g.duckdb") as store:
        props = extract(store, tuned / "ckpt", ExtractConfig(top_k=50, per_source=5, per_target=1))
    targets = [p.dst for p in props]
    assert len(targets) == len(set(targets)) and len(props) > 1


def test_semcon_is_the_best_layer0_qk_head_as_trace_computes_it(tuned):
    from compiler.provenance import trace
    with Store(tuned / "g.duckdb") as store:
        props = extract(store, tuned / "ckpt", ExtractConfig(top_k=5))    # compiled only
        for p in props[:3]:
            heads = [h for h in trace(store, tuned / "ckpt", pair=(p.src, p.dst))["heads"]
                     if h["layer"] == 0]
            want = [h["score"] for h in sorted(heads, key=lambda h: h["head"])]
            assert max(map(abs, want)) > 1e-3                  # the test can fail
            assert p.evidence["qk_scores"] == pytest.approx(want, rel=1e-4, abs=1e-6)
            assert p.head == int(max(range(len(want)), key=want.__getitem__))


def test_evidence_lines_name_both_or_the_target_in_the_sources_document(tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from loop.evaluate import EvalGraph
    from loop.extract import _corpus_lines
    graph = EvalGraph(index=["a", "b", "c"], adjacency=sp.csr_array((3, 3)),
                      known=sp.csr_array((3, 3)), link_indegree=np.zeros(3),
                      names={0: ["tail"], 1: ["dog"], 2: ["cat"]})
    corpus = tmp_path / "c.txt"
    corpus.write_text("tail\nit wags for the dog\na tail and a dog\n\ncat\nthe dog again\n")
    lines = _corpus_lines(graph, corpus, np.array([0, 2, 0]), np.array([1, 1, 2]), keep=3)
    assert lines == [[[3, "a tail and a dog"], [2, "it wags for the dog"]],   # both first
                     [[6, "the dog again"]],             # cat's document names the dog
                     []]                                 # no document names tail and cat


def test_scoring_candidates_only_is_the_full_scan_when_they_cover_everything(tuned):
    """On a graph smaller than K_MODEL the compiled model's top-k alone makes every particle
    a candidate: the candidate scan must then propose what the full scan does."""
    got = {}
    with Store(tuned / "g.duckdb") as store:
        for scan in ("all", "candidates"):
            got[scan] = extract(store, tuned / "ckpt", ExtractConfig(top_k=50, scan=scan),
                                adapter=tuned / "adapter")
    assert [(p.src, p.dst) for p in got["candidates"]] == [(p.src, p.dst) for p in got["all"]]
    np.testing.assert_allclose([p.score for p in got["candidates"]],
                               [p.score for p in got["all"]], atol=1e-4)
    with pytest.raises(GraftError, match="scan 'some'"):
        with Store(tuned / "g.duckdb") as store:
            extract(store, tuned / "ckpt", ExtractConfig(scan="some"))


def test_blocks_on_two_threads_extract_what_one_does(tuned):
    """Blocks of a few sources each, scored on one thread and on two (the tuned and compiled
    models take turns: peft switches the adapter off and on around the compiled one)."""
    got = {}
    with Store(tuned / "g.duckdb") as store:
        for scan in ("all", "candidates"):
            for workers in (1, 2):
                got[scan, workers] = extract(
                    store, tuned / "ckpt", ExtractConfig(top_k=50, scan=scan, batch=2,
                                                         workers=workers),
                    adapter=tuned / "adapter")
    for scan in ("all", "candidates"):
        one, two = got[scan, 1], got[scan, 2]
        assert one and [(p.src, p.dst) for p in two] == [(p.src, p.dst) for p in one]
        for a, b in zip(one, two):
            assert (b.score, b.tuned, b.compiled) == pytest.approx(
                (a.score, a.tuned, a.compiled), abs=1e-5)


def test_a_candidate_scan_proposes_only_candidates(tuned, monkeypatch):
    from loop import candidates as cand
    from loop.evaluate import load_graph
    from loop.rank import Features
    monkeypatch.setattr(cand, "K_MODEL", 1)                 # few candidates: the scan must cut
    with Store(tuned / "g.duckdb") as store:
        few = extract(store, tuned / "ckpt", ExtractConfig(top_k=50, scan="candidates"),
                      adapter=tuned / "adapter")
        every = extract(store, tuned / "ckpt", ExtractConfig(top_k=50, scan="all"),
                        adapter=tuned / "adapter")
        graph = load_graph(store)
    feats = Features(graph, tuned / "ckpt", tuned / "adapter")
    rows = np.arange(len(graph.index))
    union = cand.union(cand.candidates(graph, rows, mention=feats.mention, text_vectors=(
        feats.text_vectors() if "text_neighbours" in feats.names else None),
        model=(feats.embed, feats.head, feats.ckpt), k_model=1))
    pos = graph.position()
    assert few and all(union[pos[p.src], pos[p.dst]] for p in few)
    full = {(p.src, p.dst): p.score for p in every}
    for p in few:        # fewer rivals in the softmax: never a lower probability
        if (p.src, p.dst) in full:
            assert p.score >= full[(p.src, p.dst)] - 1e-6


def test_pair_logits_are_log_probabilities_less_a_constant_per_source(tuned):
    from loop.evaluate import load_graph
    from loop.rank import Features
    with Store(tuned / "g.duckdb") as store:
        graph = load_graph(store)
    feats = Features(graph, tuned / "ckpt", tuned / "adapter")
    rng = np.random.default_rng(0)
    src = np.sort(rng.integers(0, len(graph.index), 80))
    dst = rng.integers(0, len(graph.index), 80)
    names = ("compiled", "tuned", "tuned_context")
    exact = feats.pairs(src, dst, names)
    fast = feats.pairs(src, dst, names, normalised=False)
    assert not np.allclose(exact, fast)                    # the partitions were left out
    have = (feats.ckpt[src] >= 0) & (feats.ckpt[dst] >= 0)
    for s in np.unique(src[have]):
        gap = (exact - fast)[have & (src == s)]            # (pairs of s, 3)
        np.testing.assert_allclose(gap, gap[:1].repeat(len(gap), 0), atol=1e-4)
    zero = feats.pairs(src, dst, ("zero_layer",), normalised=False)[have, 0]   # E_p · H_q
    np.testing.assert_allclose(zero, feats.pairs(src, dst, ("zero_layer",))[have, 0],
                               rtol=1e-5, atol=1e-5)


def test_scores_summed_feature_by_feature_equal_the_block_product(tuned):
    from loop.evaluate import load_graph
    from loop.rank import Features, Ranker
    with Store(tuned / "g.duckdb") as store:
        graph = load_graph(store)
    feats = Features(graph, tuned / "ckpt", tuned / "adapter")
    names = feats.names
    ranker = Ranker(names, tuple(np.linspace(-1.5, 2.0, len(names)).tolist()),
                    bounds={"zero_layer": (-0.05, 0.05), "indegree": (0.2, 0.9)})
    sources = np.array([0, 2, 5])
    by_block = ranker.score(feats.block(sources, names))
    np.testing.assert_allclose(feats.scores(sources, ranker), by_block, rtol=1e-5, atol=1e-5)
    assert not np.allclose(by_block, replace(ranker, bounds={}).score(
        feats.block(sources, names)))                       # the bounds clipped something
    other = np.array([1, 4])                                  # a new memo: computed afresh
    np.testing.assert_allclose(feats.scores(other, ranker),
                               ranker.score(feats.block(other, names)), rtol=1e-5, atol=1e-5)


def test_text_embeddings_are_computed_only_for_a_ranker_that_uses_them(tuned, monkeypatch):
    """A ranker fitted without the MiniLM features (`graft cycle --no-text-embed`) must not
    embed every particle's text at extraction (196k texts, 48 min, at 3M particles): neither
    its features nor its candidates use them."""
    from loop import embed
    from loop.rank import Ranker

    def refuse(*args, **kwargs):
        raise AssertionError("embedded texts for a ranker that does not use them")
    monkeypatch.setattr(embed, "particle_embeddings", refuse)
    ranker = Ranker(("mention", "compiled", "tuned"), (1.0, 1.0, 1.0))
    with Store(tuned / "g.duckdb") as store:
        for scan in ("all", "candidates"):
            assert extract(store, tuned / "ckpt", ExtractConfig(top_k=20, scan=scan),
                           adapter=tuned / "adapter", ranker=ranker)
