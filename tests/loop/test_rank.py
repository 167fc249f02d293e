"""The extractor's ranker and its fold: mention counts by hand, features against the
checkpoint's own numbers, a fit that finds the feature the hidden links follow (and not when
they don't), and a fold that hides exactly the share asked for."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from compiler.compile import compile_snapshot
from compiler.types import SPECIAL_TOKENS, CompileConfig
from graph.errors import GraftError
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from graph.store import Store
from loop import evaluate
from loop.fold import make_fold
from loop.fit import fit_ranker
from loop.rank import Features, Ranker, mention_matrix
from tests.conftest import pid, table_counts, write_wiki


def test_mention_counts_by_hand():
    names = {0: ["cat", "cats"], 1: ["dog"], 2: ["big dog"], 3: ["eel"]}
    texts = {0: "Cats chase a big dog, a dog and a DOG.", 1: "a cat", 3: "nothing here"}
    graph = evaluate.EvalGraph(index=["a", "b", "c", "d"], adjacency=sp.csr_array((4, 4)),
                               known=sp.csr_array((4, 4)), link_indegree=np.zeros(4),
                               names=names, texts=texts)
    m = mention_matrix(graph).toarray()
    expected = np.zeros((4, 4))
    expected[0, 2] = 1          # "big dog": the longest name wins over "dog"
    expected[0, 1] = 2          # "dog", "DOG"; "Cats" is page 0 itself: left out
    expected[1, 0] = 1
    np.testing.assert_array_equal(m, expected)


def wiki_store(root, **kw):
    particles, links, corpus = write_wiki(root, **kw)
    store = Store(root / "g.duckdb")
    ingest_particles(store, [particles])
    ingest_links(store, [links])
    return store, corpus


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    root = tmp_path_factory.mktemp("wiki")
    store, corpus = wiki_store(root)
    with store:
        compile_snapshot(store, take_snapshot(store), root / "ckpt",
                         CompileConfig(d=16, layers=1, check_determinism=False))
    return root


def test_features_match_the_checkpoint(wiki):
    from safetensors.numpy import load_file
    from finetune.checkpoints import load_checked
    with Store(wiki / "g.duckdb", read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    feats = Features(graph, wiki / "ckpt")
    assert feats.names[:4] == ("mention", "mention_count", "back_mention", "indegree")
    assert feats.names[-3:] == ("in_model", "zero_layer", "compiled")
    with pytest.raises(GraftError, match="a tuned adapter"):
        feats.block(np.array([0]), ("tuned",))
    src = graph.position()[pid("page03")]
    x = feats.block(np.array([src]))[0]                                     # (P, F)
    particles = json.loads((wiki / "ckpt" / "particles.json").read_text())
    offset = len(SPECIAL_TOKENS)
    cols = np.array([graph.position()[p] for p in particles])
    w = load_file(str(wiki / "ckpt" / "model.safetensors"))
    e, h = w["model.embed_tokens.weight"], w["lm_head.weight"]
    row = particles.index(pid("page03"))
    np.testing.assert_allclose(x[cols, feats.names.index("zero_layer")], h[offset:] @ e[offset + row], rtol=1e-5, atol=1e-5)
    model = load_checked(wiki / "ckpt", dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([[offset + row]])).logits[0, -1], -1)
    np.testing.assert_allclose(x[cols, feats.names.index("compiled")], lp[offset:].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x[:, 3], np.log1p(graph.link_indegree).astype(np.float32))
    assert x[cols, feats.names.index("in_model")].min() == 1.0
    col = feats.names.index
    np.testing.assert_allclose(x[:, col("link_prob_mention")],
                               x[:, col("mention")] * x[:, col("link_prob")], rtol=1e-6)
    mentioned = feats.mention[[src]].toarray()[0] > 0
    np.testing.assert_array_equal(x[:, 0] > 0, mentioned)


def fold_features(root, fold_pages: float = 0.0, **kw):
    """(fold graph, its Features, hidden (p, q) positions) of the wiki with 20% hidden (and
    every link of `fold_pages` of its pages)."""
    store, _ = wiki_store(root, **kw)
    with store:
        hidden = make_fold(store, root / "fold.duckdb", 0.2, seed=1, pages=fold_pages)
    with Store(root / "fold.duckdb") as fold:
        compile_snapshot(fold, take_snapshot(fold), root / "fold-ckpt",
                         CompileConfig(d=16, layers=1, check_determinism=False))
        graph = evaluate.load_graph(fold)
    pos = graph.position()
    pairs = np.array([(pos[s], pos[d]) for s, d in hidden])
    return graph, Features(graph, root / "fold-ckpt"), pairs


def fit_on_fold(root, **kw):
    graph, feats, pairs = fold_features(root, **kw)
    return fit_ranker(feats, graph.known, pairs)


def test_the_fit_follows_what_hidden_links_have_in_common(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    said = fit_on_fold(tmp_path / "a", pages=60, mention_links=True)
    unsaid = fit_on_fold(tmp_path / "b", pages=60, mention_links=False)
    w_said = dict(zip(said.features, said.weights))
    w_unsaid = dict(zip(unsaid.features, unsaid.weights))
    # texts name every link and 3 decoys: mentions narrow 59 candidates to ~4 (MRR ≈ 0.5)
    assert w_said["mention"] > 1.0 and said.fit["mrr"] > 0.4
    assert said.fit["mrr"] >= said.fit["mrr_alone"]["mention"] - 0.02
    # texts name decoys only: a mention now speaks against a link
    assert w_unsaid["mention"] < 0 and unsaid.fit["mrr"] < 0.3


def test_ranker_file_round_trip_and_errors(tmp_path):
    r = Ranker(("mention", "compiled"), (2.0, 0.5), {"queries": 3})
    assert Ranker.load(r.save(tmp_path / "r.json")) == r
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(GraftError, match="bad.json: not a ranker file"):
        Ranker.load(tmp_path / "bad.json")
    with pytest.raises(GraftError, match="unknown"):
        Ranker(("telepathy",), (1.0,))


def test_a_ranker_never_extrapolates_beyond_the_range_its_fit_saw(tmp_path):
    """A staked link is compiled into the next model, whose E_p · H_q for it is a memorised
    link's — far beyond any candidate a fold ranks. Clipped to its bounds, a bounded feature
    scores as at the bound; the models' log P (logits on the candidate path) are never
    bounded; the bounds survive the file."""
    r = Ranker(("mention", "zero_layer", "compiled"), (1.0, -0.5, 2.0), {},
               bounds={"zero_layer": (-1.0, 3.0)})
    x = np.array([[[1.0, 40.0, -1.0], [1.0, 3.0, -1.0], [0.0, -9.0, -50.0]]], np.float32)
    np.testing.assert_allclose(r.score(x), [[1 - 1.5 - 2, 1 - 1.5 - 2, 0.5 - 100]])
    np.testing.assert_allclose(r.contributions(x[0])[:, 1], [-1.5, -1.5, 0.5])
    assert x[0, 0, 1] == 40.0                              # the caller's features untouched
    assert Ranker.load(r.save(tmp_path / "r.json")) == r
    with pytest.raises(GraftError, match="cannot bound: \\['compiled'\\]"):
        Ranker(("compiled",), (1.0,), bounds={"compiled": (-3.0, 0.0)})


@pytest.mark.parametrize("scan", ["all", "candidates"])
def test_a_fit_records_each_bounded_features_range_over_its_candidates(tmp_path, scan):
    """The bounds are the least and greatest value over the candidates of the fitted sources
    (their hidden targets among them), not over their known links — a fold's own links are
    memorised, the very values the bounds keep out."""
    from loop.fit import fit_on, fit_queries
    graph, feats, pairs = fold_features(tmp_path)
    q = fit_queries(feats, graph.known, pairs, scan=scan)
    r = fit_on(q)
    assert set(r.bounds) == {n for n in q.names if n not in ("compiled", "tuned",
                                                             "tuned_context")}
    sources = np.unique(pairs[:, 0])
    x = feats.block(sources, q.names)                                          # (S, P, F)
    seen = np.ones(x.shape[:2], bool)
    seen[np.arange(len(sources)), sources] = False
    r_, c_ = graph.known[sources].nonzero()
    seen[r_, c_] = False
    if scan == "candidates":                               # each source's own candidates
        seen[:] = False
        for i, cols in enumerate(q.columns):
            seen[i, cols[cols >= 0]] = True
    z = q.names.index("zero_layer")
    assert r.bounds["zero_layer"] == pytest.approx((x[..., z][seen].min(),
                                                    x[..., z][seen].max()), abs=1e-5)
    linked = x[..., z][r_, c_]
    assert linked.max() > r.bounds["zero_layer"][1]        # memorised links lie beyond them


def _queries_where(signal: str, seed: int = 0):
    """FitQueries over 300 sources × 30 candidates with text, compiled and tuned features:
    `mention` marks the target and 4 decoys; `signal` (a feature name, or "") also tells the
    target from the decoys; the other features are noise."""
    from loop.fit import FitQueries
    rng = np.random.default_rng(seed)
    names = ("mention", "indegree", "zero_layer", "compiled", "tuned", "tuned_context")
    x = rng.normal(size=(300, 30, len(names))).astype(np.float32)
    x[..., 0] = 0.0
    target = rng.integers(0, 30, size=300)
    for s, t in enumerate(target):
        named = np.r_[t, rng.choice(np.setdiff1d(np.arange(30), [t]), 4, replace=False)]
        x[s, named, 0] = 1.0
        if signal:
            x[s, t, names.index(signal)] += 2.5
    return FitQueries(names, torch.from_numpy(x), torch.arange(300), torch.as_tensor(target),
                      torch.ones(300, 30, dtype=torch.bool))


@pytest.mark.parametrize("signal, chosen", [("zero_layer", "text+compiled"),
                                            ("tuned", "text+tuned")])
def test_a_feature_group_is_kept_only_when_it_earns_its_place(signal, chosen):
    """Cross-validated on the fold's sources: a group that tells links apart is kept, and the
    groups of pure noise beside it are left out (the fewest features within one standard
    error of the best)."""
    from loop.ablate import choose_subset, fit_subsets
    q = _queries_where(signal, seed=1)
    choice = choose_subset(q, fit_subsets(q, "linear"), seed=1)
    assert choice["subset"] == chosen, choice
    assert choice["cv_mrr"][chosen] > choice["cv_mrr"]["text"] + 0.1


def test_groups_of_noise_are_left_out():
    """Noise beside the mentions: text alone in most draws (a one-standard-error rule lets
    noise in now and then; here it would let it in at most once in five)."""
    from loop.ablate import choose_subset, fit_subsets
    chosen = []
    for seed in range(5):
        q = _queries_where("", seed)
        chosen.append(choose_subset(q, fit_subsets(q, "linear"), seed=seed)["subset"])
    assert chosen.count("text") >= 4, chosen


def test_a_fixed_rankers_mrr_on_a_fold_by_hand():
    """Two sources × three candidates: targets ranked 1st and 3rd → (1 + 1/3) / 2; a ranker
    fitted on the queries scores them as its own fit did; a missing feature gives None."""
    from loop.ablate import fixed_mrr
    from loop.fit import FitQueries, fit_on
    x = torch.tensor([[[3.0], [1.0], [2.0]], [[3.0], [1.0], [2.0]]])
    q = FitQueries(("mention",), x, torch.tensor([0, 1]), torch.tensor([0, 1]),
                   torch.ones(2, 3, dtype=torch.bool))
    assert fixed_mrr(q, Ranker(("mention",), (1.0,))) == pytest.approx((1 + 1 / 3) / 2)
    assert fixed_mrr(q, Ranker(("indegree",), (1.0,))) is None
    q = _queries_where("zero_layer", seed=2)
    fitted = fit_on(q)
    assert fixed_mrr(q, fitted) == pytest.approx(fitted.fit["mrr"], abs=1e-5)


def test_the_previous_ranker_is_kept_only_when_it_ranks_the_new_fold_better(tmp_path):
    """Champion/challenger: cycle 2 weighs cycle 1's ranker (read from the journal) on its
    fold's hidden links against the new fit's cross-validated MRR; the better one extracts,
    and a kept ranker says which cycle fitted it."""
    from dataclasses import replace

    from graph import sql_loop
    from loop.ablate import choose_subset, fit_subsets, fixed_mrr
    from loop.cycle import _previous
    q = _queries_where("zero_layer", seed=1)            # the target stands out in zero_layer
    subsets = fit_subsets(q, "linear", seed=1)
    choice = {**choose_subset(q, subsets, seed=1), "subset": "text"}     # a blind challenger
    challenger = replace(subsets["text"], fit={**subsets["text"].fit, "subset": choice,
                                               "cycle": 2})
    seeing = Ranker(("mention", "zero_layer"), (4.0, 1.0), {"cycle": 1, "mrr": 0.5})
    blind = Ranker(("mention",), (-1.0,), {"cycle": 1})
    with Store(tmp_path / "g.duckdb") as store:
        assert _previous(store, 2, q, challenger, "keep", print) is challenger     # no cycle 1 yet
        for old, kept in ((seeing, True), (blind, False)):
            path = old.save(tmp_path / "ranker.json")
            store.execute("DELETE FROM cycle_steps")
            store.execute(sql_loop.STEP_RECORD, {"cycle": 1, "step": "fit",
                                                 "detail": json.dumps({"ranker": str(path)})})
            used = _previous(store, 2, q, challenger, "keep", print)
            record = used.fit["incumbent"]
            assert record["kept"] is kept and record["from_cycle"] == 1
            assert record["incumbent_mrr"] == pytest.approx(fixed_mrr(q, old), abs=1e-5)
            assert record["challenger_cv_mrr"] == choice["cv_mrr"]["text"]
            assert used.features == (old if kept else challenger).features
            assert used.weights == (old if kept else challenger).weights
        assert used.fit["cycle"] == 2
        assert _previous(store, 1, q, challenger, "keep", print) is challenger     # cycle 1: new
        mean = _previous(store, 2, q, challenger, "average", print)    # blind and text, halved
        assert mean.features == ("mention", "indegree")
        assert mean.weights == pytest.approx((0.5 * (-1.0 + challenger.weights[0]),
                                              0.5 * challenger.weights[1]))
        assert mean.fit["incumbent"]["mode"] == "average" and mean.fit["cycle"] == 2
        assert mean.fit["mrr"] == pytest.approx(fixed_mrr(q, mean), abs=1e-5)


def test_two_rankers_blend_by_hand():
    """Weights averaged over the union of features (0 where one lacks it), ranges united, the
    score the average of the two scores; a booster does not blend."""
    a = Ranker(("mention", "zero_layer"), (2.0, 4.0), {"cycle": 1}, bounds={"zero_layer": (0, 1)})
    b = Ranker(("mention", "indegree"), (1.0, 3.0), {"cycle": 2},
               bounds={"indegree": (0, 9)})
    c = a.blended(b)
    assert c.features == ("mention", "zero_layer", "indegree")
    assert c.weights == (1.5, 2.0, 1.5) and c.fit == {"cycle": 2}
    assert c.bounds == {"zero_layer": (0, 1), "indegree": (0, 9)}
    x = np.random.default_rng(0).uniform(0, 1, size=(4, 5, 3)).astype(np.float32)
    assert c.score(x) == pytest.approx(0.5 * a.score(x[..., [0, 1]]) + 0.5 * b.score(x[..., [0, 2]]),
                                       abs=1e-6)
    assert a.blended(b, 0.25).weights == (1.75, 3.0, 0.75)
    with pytest.raises(GraftError, match="only linear rankers blend"):
        a.blended(Ranker(("mention",), (1.0,), model="tree"))


def test_fold_hides_the_share_and_keeps_the_rest(tmp_path):
    store, _ = wiki_store(tmp_path, pages=30)
    with store:
        store.execute("INSERT INTO cyberlinks SELECT max(seq) + 1, 'x', ?, ?, 'link', 1, NULL, "
                      "1, 9, 'extract', 1, 1 FROM cyberlinks", [pid("page00"), pid("page01")])
        before = table_counts(store)
        hidden = make_fold(store, tmp_path / "fold.duckdb", 0.25, seed=3)
        assert hidden == make_fold(store, tmp_path / "fold2.duckdb", 0.25, seed=3)
        assert hidden != make_fold(store, tmp_path / "fold3.duckdb", 0.25, seed=4)
        pairs = set(store.query("SELECT src, dst FROM cyberlinks WHERE origin = 'ingest'"))
        assert table_counts(store) == before                        # the store is only read
    assert len(hidden) == round(0.25 * len(pairs)) and set(hidden) <= pairs
    with Store(tmp_path / "fold.duckdb", create=False, read_only=True) as fold:
        left = set(fold.query("SELECT src, dst FROM cyberlinks"))
        assert not left & set(hidden)
        assert left | set(hidden) == pairs | {(pid("page00"), pid("page01"))}
        counts = table_counts(fold)
    assert counts["cyberlinks"] == before["cyberlinks"] - len(hidden)
    assert {k: counts[k] for k in ("particles", "neurons", "tokens", "batches")} == \
        {k: before[k] for k in ("particles", "neurons", "tokens", "batches")}
    with pytest.raises(GraftError, match="strictly between 0 and 1"):
        make_fold(Store(), tmp_path / "f.duckdb", 1.0, seed=0)


def test_fold_of_one_relation_can_hide_the_inverse_too(tmp_path):
    from graph.ingest import ingest_links
    from tests.conftest import link, write_jsonl
    rows = [link(f"n{i}", f"n{i + 1}", token="hypernym", time=i) for i in range(20)]
    rows += [link(f"n{i + 1}", f"n{i}", token="hyponym", time=i) for i in range(20)]
    rows += [link(f"n{i}", f"n{i + 2}", token="similar", time=i) for i in range(5)]
    with Store(tmp_path / "g.duckdb") as store:
        ingest_links(store, [write_jsonl(tmp_path / "l.jsonl", rows)])
        plain = make_fold(store, tmp_path / "a.duckdb", 0.25, seed=0, token="hypernym")
        both = make_fold(store, tmp_path / "b.duckdb", 0.25, seed=0, token="hypernym",
                         inverse=True)
    assert plain == both and len(plain) == 5
    for path, gone in (("a.duckdb", set(plain)),
                       ("b.duckdb", set(plain) | {(d, s) for s, d in plain})):
        with Store(tmp_path / path, create=False, read_only=True) as fold:
            left = set(fold.query("SELECT src, dst FROM cyberlinks"))
        assert not left & gone and len(left) == 45 - len(gone)


def test_fold_can_hide_whole_pages_for_cold_start(tmp_path):
    store, _ = wiki_store(tmp_path, pages=30)
    with store:
        plain = make_fold(store, tmp_path / "a.duckdb", 0.1, seed=2)
        cold = make_fold(store, tmp_path / "b.duckdb", 0.1, seed=2, pages=0.2)
        pairs = store.query("SELECT DISTINCT src, dst FROM cyberlinks WHERE origin = 'ingest'")
    assert set(plain) <= set(cold)
    sources = {s for s, _ in pairs}
    whole = {s for s in sources if all((s, d) in set(cold) for t, d in pairs if t == s)}
    assert len(whole) >= round(0.2 * len(sources))          # every page has 4 links ≥ 3
    with Store(tmp_path / "b.duckdb", create=False, read_only=True) as fold:
        left = {s for (s,) in fold.query("SELECT DISTINCT src FROM cyberlinks")}
    assert not left & whole


def test_a_cycles_folds_are_disjoint_parts_of_its_seed(tmp_path):
    """Part 0 is the seed's one fold; parts 1, 2 hide as many other links, and empty other
    pages; asking for more parts than the links allow is an error."""
    store, _ = wiki_store(tmp_path, pages=30)
    with store:
        parts = [make_fold(store, tmp_path / f"p{j}.duckdb", 0.2, seed=5, part=j)
                 for j in range(3)]
        assert parts[0] == make_fold(store, tmp_path / "one.duckdb", 0.2, seed=5)
        assert parts[1] == make_fold(store, tmp_path / "again.duckdb", 0.2, seed=5, part=1)
        paged = [make_fold(store, tmp_path / f"c{j}.duckdb", 0.1, seed=5, pages=0.2, part=j)
                 for j in range(2)]
        assert paged[0] == make_fold(store, tmp_path / "c.duckdb", 0.1, seed=5, pages=0.2)
        pairs = store.query("SELECT DISTINCT src, dst FROM cyberlinks WHERE origin = 'ingest'")
        with pytest.raises(GraftError, match="fold part 6 of a share of 0.2"):
            make_fold(store, tmp_path / "x.duckdb", 0.2, seed=5, part=5)
    assert all(len(p) == round(0.2 * len(pairs)) for p in parts)
    assert not set(parts[0]) & set(parts[1]) and not set(parts[1]) & set(parts[2])
    assert not set(parts[0]) & set(parts[2])

    def emptied(hidden):
        return {s for s, _ in pairs if all((s, d) in set(hidden) for t, d in pairs if t == s)}

    a, b = emptied(paged[0]), emptied(paged[1])
    assert len(a) >= 6 and len(b) >= 6 and not a & b


@pytest.mark.parametrize("scan", ["all", "candidates"])
def test_pooled_folds_rank_each_query_as_its_own_fold_did(tmp_path, scan):
    """Pooling two folds' queries (their candidate slots padded to the wider) leaves every
    query's rank under a ranker as it was in its own fold, and pooling a fold with itself
    fits the same weights as the fold alone."""
    from loop.evaluate import rank_targets
    from loop.fit import fit_on, fit_queries, pooled
    graph, feats, pairs = fold_features(tmp_path)
    full = fit_queries(feats, graph.known, pairs, scan=scan)
    narrow = full.sources[(full.columns >= 0).sum(1).argmin()] if scan == "candidates" \
        else pairs[0, 0]                                   # a source with few candidates
    a = fit_queries(feats, graph.known, pairs[pairs[:, 0] != narrow], scan=scan)
    b = fit_queries(feats, graph.known, pairs[pairs[:, 0] == narrow], scan=scan)
    both = pooled([a, b])
    assert len(both.row) == len(a.row) + len(b.row)
    assert list(both.pages) == list(a.pages) + list(b.pages) and narrow not in set(a.sources)
    assert set(b.pages) == {graph.index[narrow]}
    assert both.x.shape[0] == a.x.shape[0] + b.x.shape[0]
    w = np.random.default_rng(0).normal(size=len(a.names)).astype(np.float32)

    def ranks(q):
        score = (q.x.numpy() @ w)[q.row.numpy()]
        return rank_targets(score, q.target.numpy(), q.mask.numpy())[0]

    np.testing.assert_array_equal(ranks(both), np.concatenate([ranks(a), ranks(b)]))
    if scan == "candidates":
        assert a.x.shape[1] > b.x.shape[1]              # the narrower one was padded
        np.testing.assert_array_equal(both.sources, np.concatenate([a.sources, b.sources]))
    one, twice = fit_on(a), fit_on(pooled([a, a]))
    # the same objective (weights alike only up to its flat, collinear directions)
    assert twice.fit["loss"] == pytest.approx(one.fit["loss"], abs=1e-4)
    assert twice.fit["mrr"] == pytest.approx(one.fit["mrr"], abs=2e-3)
    assert twice.fit["queries"] == 2 * one.fit["queries"]
    assert twice.bounds == one.bounds


def test_text_neighbours_and_their_evidence(wiki):
    from loop import embed
    from loop.extract import linking_neighbours
    if not embed.available():
        pytest.skip("the embedding package is not installed")
    with Store(wiki / "g.duckdb", read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    feats = Features(graph, wiki / "ckpt")
    assert "text_neighbours" in feats.names
    src = np.array([graph.position()[pid("page03")], graph.position()[pid("page05")]])
    x = feats.block(src, ("text_neighbours",))[..., 0]                       # (2, P)
    np.testing.assert_allclose(
        x, embed.neighbour_links(feats.text_vectors(), graph.known, src), rtol=1e-6)
    s, q = np.unravel_index(np.argmax(x), x.shape)          # the best-supported target
    assert x[s, q] > np.log(embed.NEIGHBOUR_FLOOR)
    [alike] = linking_neighbours(feats, src[[s]], np.array([q]))
    assert alike                                            # someone like p links q
    nbr, sim = embed.nearest(feats.text_vectors(), src[[s]])
    expect = {graph.index[n]: c for n, c in zip(nbr[0], sim[0]) if c > 0 and graph.known[n, q]}
    assert {a["particle"]: a["cosine"] for a in alike} == pytest.approx(
        {p: round(float(c), 4) for p, c in expect.items()})


def test_pair_features_are_the_block_at_those_pairs(wiki):
    with Store(wiki / "g.duckdb", read_only=True, create=False) as store:
        graph = evaluate.load_graph(store)
    feats = Features(graph, wiki / "ckpt")
    size = len(graph.index)
    rng = np.random.default_rng(0)
    src = rng.integers(0, size, 60)
    dst = rng.integers(0, size, 60)
    src[:5], dst[:5] = src[0], np.arange(5)            # several pairs of one source
    dense = np.stack([feats.block(np.array([s]))[0, d] for s, d in zip(src, dst)])  # (n, F)
    for batch in (2, None):                            # rows computed a few sources at a time
        np.testing.assert_allclose(feats.pairs(src, dst, batch=batch), dense,
                                   rtol=1e-5, atol=1e-5)
    some = ("compiled", "mention", "indegree")
    np.testing.assert_allclose(feats.pairs(src, dst, some),
                               dense[:, [feats.names.index(n) for n in some]], atol=1e-5)
    with pytest.raises(GraftError, match="a tuned adapter"):
        feats.pairs(src, dst, ("tuned",))


def test_a_fit_over_candidate_slots_is_the_full_fit_when_they_cover_everything(tmp_path):
    from loop.fit import fit_on, fit_queries
    graph, feats, pairs = fold_features(tmp_path)
    dense = fit_queries(feats, graph.known, pairs, scan="all")
    slots = fit_queries(feats, graph.known, pairs, scan="candidates")
    assert slots.columns is not None and dense.columns is None
    for s, c in enumerate(slots.columns):          # the same candidates, as slots
        src = slots.sources[s]
        mine = np.flatnonzero(dense.row.numpy() == s)
        want = np.flatnonzero(dense.mask[mine].any(0).numpy())
        np.testing.assert_array_equal(c[c >= 0], want)
        np.testing.assert_allclose(slots.x[s, :len(want)].numpy(),
                                   dense.x[s, want].numpy(), rtol=1e-5, atol=1e-5)
        assert src == dense.sources[s]
    np.testing.assert_array_equal(slots.columns[slots.row, slots.target], dense.target)
    a, b = fit_on(dense), fit_on(slots)   # weights differ: standardised over other entries
    assert a.fit["mrr"] == pytest.approx(b.fit["mrr"], abs=1e-3)
    assert a.fit["loss"] == pytest.approx(b.fit["loss"], rel=0.02)
    from loop.calibrate import other_pairs
    others = np.setdiff1d(np.arange(len(graph.index)), pairs[:, 0])[:12]
    p_all, _ = other_pairs(feats, graph.known, b, others)
    p_slots, _ = other_pairs(feats, graph.known, b, others, candidates=True)
    np.testing.assert_allclose(np.sort(p_slots), np.sort(p_all), rtol=1e-4, atol=1e-6)


def test_a_fit_over_candidate_slots_by_hand(tmp_path):
    """The slot fit scores the filled slots only (loop/fit.py); its loss, MRR and each
    feature's MRR alone must be the per-query softmax over the source's own candidates,
    computed here in numpy from the fitted raw weights (a shift of a source's scores — the
    standardisation's — changes neither)."""
    from loop.fit import fit_on, fit_queries
    graph, feats, pairs = fold_features(tmp_path)
    q = fit_queries(feats, graph.known, pairs, scan="candidates")
    assert (q.columns < 0).any()                # sources have different numbers of slots
    r = fit_on(q)
    x, w = q.x.numpy().astype(np.float64), np.asarray(r.weights)
    losses, recip = [], []
    alone = {n: [] for n in q.names}
    for s, t in zip(q.row.numpy(), q.target.numpy()):
        mine = np.flatnonzero(q.columns[s] >= 0)
        assert t in mine
        score = x[s, mine] @ w
        top = score.max()
        losses.append(top + np.log(np.exp(score - top).sum()) - x[s, t] @ w)
        for values, out in [(score, recip)] + [(x[s, mine, i], alone[n])
                                                for i, n in enumerate(q.names)]:
            v = values[mine == t][0]
            out.append(1 / (1 + (values > v).sum() + 0.5 * ((values == v).sum() - 1)))
    assert r.fit["loss"] == pytest.approx(np.mean(losses), abs=2e-4)
    assert r.fit["mrr"] == pytest.approx(np.mean(recip), abs=2e-5)
    for n in q.names:
        assert r.fit["mrr_alone"][n] == pytest.approx(np.mean(alone[n]), abs=1e-5), n


def test_features_score_the_same_on_two_threads(tmp_path):
    """Blocks of sources scored at once (graph.runtime.block_pool) share one Features: the
    model runs one block at a time, and each thread keeps its own last block."""
    from graph.runtime import block_pool
    graph, feats, _ = fold_features(tmp_path)
    size = len(graph.index)
    blocks = [np.arange(i, min(i + 7, size)) for i in range(0, min(70, size), 7)]
    dst = [np.roll(b, 3) for b in blocks]
    serial = [(feats.pairs(b, d, normalised=False), feats.block(b)) for b, d in zip(blocks, dst)]
    with block_pool(2) as blocks_map:
        both = list(blocks_map(lambda i: (feats.pairs(blocks[i], dst[i], normalised=False),
                                          feats.block(blocks[i])), range(len(blocks))))
    for (a, b), (c, d) in zip(serial, both):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d, b, rtol=1e-5, atol=1e-5)
