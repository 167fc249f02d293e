"""Pass 6 pieces: walks, co-occurrence and positive PMI against hand-computed values."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from compiler.mlp import cooccurrence, positive_pmi, random_walks


def chain(n: int) -> sp.csr_array:
    return sp.csr_array((np.ones(n - 1), (np.arange(n - 1), np.arange(1, n))), shape=(n, n))


def test_walks_on_a_chain_are_the_chain():
    walks = random_walks(chain(4), per_node=2, length=5, seed=1)
    # Starts: nodes 0, 1, 2 (node 3 has no out-links), twice each; walkers stop at the end.
    assert walks.tolist() == [[0, 1, 2, 3, -1]] * 2 + [[1, 2, 3, -1, -1]] * 2 + [[2, 3, -1, -1, -1]] * 2


def test_walks_follow_stake():
    a = sp.csr_array(np.array([[0, 1, 3], [0, 0, 0], [0, 0, 0]], dtype=float))
    walks = random_walks(a, per_node=4000, length=2, seed=7)
    share = (walks[:, 1] == 2).mean()
    assert abs(share - 0.75) < 0.03
    assert walks.tolist() == random_walks(a, per_node=4000, length=2, seed=7).tolist()


def test_cooccurrence_counts_by_hand():
    walks = np.array([[0, 1, 2, -1]])
    c = cooccurrence(walks, window=1, v=3).toarray()
    assert c.tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    c2 = cooccurrence(walks, window=2, v=3).toarray()
    assert c2.tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def test_positive_pmi_by_hand():
    # C = [[0,2],[2,1]]: total 5, rows (2, 3), cols (2, 3).
    c = sp.csr_array(np.array([[0.0, 2.0], [2.0, 1.0]]))
    p = positive_pmi(c).toarray()
    assert np.isclose(p[0, 1], np.log(2 * 5 / (2 * 3)))       # log(5/3) > 0: kept
    assert p[1, 1] == 0                                        # log(5/9) < 0: dropped
    assert p[0, 0] == 0
