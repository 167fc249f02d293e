"""The store's own signals of a pair, by hand on a four-page graph: link probability, first
position of a mention, co-mentions, reverse links; and that the ranker's features are them."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from loop import evaluate
from loop.textstats import text_stats


def graph4() -> evaluate.EvalGraph:
    # a names b twice and c once (c first); b names c; c names a and b; d names b.
    # Links: a → b, b → c, c → a, d → a.
    names = {0: ["alpha"], 1: ["beta", "b"], 2: ["gamma"], 3: ["delta"]}
    texts = {0: "gamma then beta and B", 1: "about gamma", 2: "alpha with beta",
             3: "only beta here"}
    known = sp.csr_array((np.ones(4), ([0, 1, 2, 3], [1, 2, 0, 0])), shape=(4, 4))
    return evaluate.EvalGraph(index=["a", "b", "c", "d"], adjacency=known.copy(), known=known,
                              link_indegree=np.array([2.0, 1, 1, 0]), names=names, texts=texts)


def test_link_probability_by_hand():
    st = text_stats(graph4())
    # pages naming q / naming and linking q:  a: 1 / 1 (c),  b: 3 / 1 (a),  c: 2 / 1 (b),  d: 0 / 0
    expected = np.log(np.array([(1 + .5) / (1 + 2), (1 + .5) / (3 + 2), (1 + .5) / (2 + 2),
                                (0 + .5) / (0 + 2)]))
    np.testing.assert_allclose(st.link_prob, expected, rtol=1e-6)


def test_anchor_probability_by_hand():
    st = text_stats(graph4())
    # phrases used (page: phrase → particle): a: gamma → c, beta → b, b → b; b: gamma → c;
    # c: alpha → a, beta → b; d: beta → b.  Pages using each / whose page links the particle:
    # gamma 2 / 1 (b → c), beta 3 / 1 (a → b), b 1 / 1 (a → b), alpha 1 / 1 (c → a)
    lp = {k: np.log((h + .5) / (n + 2)) for k, (n, h) in
          {"gamma": (2, 1), "beta": (3, 1), "b": (1, 1), "alpha": (1, 1)}.items()}
    a = st.anchor.toarray()
    assert a[0, 1] == np.float32(max(lp["beta"], lp["b"]))    # a names b by both: the best
    assert a[0, 2] == np.float32(lp["gamma"]) and a[1, 2] == np.float32(lp["gamma"])
    assert a[2, 0] == np.float32(lp["alpha"]) and a[3, 1] == np.float32(lp["beta"])
    assert (a != 0).sum() == (st.mention.toarray() != 0).sum()   # exactly where p names q


def test_mentions_first_positions_and_comentions_by_hand():
    st = text_stats(graph4())
    m = st.mention.toarray()
    assert m[0, 1] == 2 and m[0, 2] == 1 and m[1, 2] == 1 and m[3, 1] == 1
    assert np.trace(m) == 0
    early = st.early.toarray()
    # a's matches: gamma, beta, beta → gamma at 0 of 3, beta at 1 of 3
    np.testing.assert_allclose(early[0, [1, 2]], [1 - 1 / 3, 1.0])
    assert early[3, 1] == 1.0 and early[3, 0] == 0.0
    co = st.comention.toarray()
    # pages naming both b and c: a only; both a and b: c; b's own page is never "other"
    assert co[1, 2] == co[2, 1] == 1
    assert co[0, 1] == co[1, 0] == 1
    assert co[0, 2] == 0 and np.trace(co) == 0
    np.testing.assert_array_equal(st.reverse.toarray(), graph4().known.T.toarray())


def test_a_hidden_link_counts_as_a_mention_left_unlinked():
    g = graph4()
    hidden = g.known.tolil()
    hidden[0, 1] = 0                               # hide a → b: a still names b
    fold = evaluate.EvalGraph(index=g.index, adjacency=g.adjacency, known=hidden.tocsr(),
                              link_indegree=g.link_indegree, names=g.names, texts=g.texts)
    assert text_stats(fold).link_prob[1] == np.float32(np.log(0.5 / 5))



def test_the_texts_are_matched_once_per_graph():
    from loop.textstats import mentions
    g = graph4()
    st = text_stats(g)
    assert mentions(g)[0] is st.mention                       # the baseline's, from the memo
    fresh = graph4()
    assert mentions(fresh)[0] is not st.mention
    assert text_stats(fresh).anchor is not None               # anchors still come when asked
    np.testing.assert_array_equal(text_stats(fresh).mention.toarray(), st.mention.toarray())
