"""Tests for graph/semcons.py: hand-computed scores, order and tie rules, assignment, errors."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from graph import semcons as semcons_mod
from graph.errors import GraftError
from graph.ids import ZERO, axon, particle_of_text
from graph.semcons import Semcon, assign_semcons, discover_semcons

IS_A, PART_OF, NOISE = (particle_of_text(n) for n in ("is a", "part of", "noise"))
AX = [axon(particle_of_text(f"p{i}"), particle_of_text(f"q{i}")) for i in range(7)]
BOTTOM = Semcon(particle=ZERO, score=0.0, usage=0.0, coverage=0)

# The typed example, label links (semcon, axon, stake):
#   is a    → AX1 2, AX2 1, AX3 1          usage 4, coverage 3, score 4·log2(4) = 8
#   part of → AX1 3, AX1 3 (parallel)      usage 6, coverage 1, score 6·log2(2) = 6
#   noise   → AX4 0.001                    usage 1e-3, coverage 1, score 1e-3 < 1e-3·8: dropped
#   ignored entirely: is a → AX5 stake 0, part of → AX4 stake −5
LABELS = [(IS_A, AX[1], 2.0), (IS_A, AX[2], 1.0), (IS_A, AX[3], 1.0),
          (PART_OF, AX[1], 3.0), (PART_OF, AX[1], 3.0), (NOISE, AX[4], 0.001),
          (IS_A, AX[5], 0.0), (PART_OF, AX[4], -5.0)]


def _arrays(labels: list[tuple[str, str, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label links as the (label_src, label_axon, label_w) arrays a caller extracts."""
    if not labels:
        return np.array([], dtype=object), np.array([], dtype=object), np.array([])
    src, ax, w = zip(*labels)
    return np.array(src, dtype=object), np.array(ax, dtype=object), np.array(w, dtype=float)


def test_discover_hand_computed() -> None:
    found = discover_semcons(*_arrays(LABELS))
    assert found == [Semcon(IS_A, 8.0, 4.0, 3), Semcon(PART_OF, 6.0, 6.0, 1), BOTTOM]


def test_assign_hand_computed() -> None:
    labels = _arrays(LABELS)
    found = discover_semcons(*labels)
    links = np.array([AX[1], AX[2], AX[3], AX[4], AX[5], AX[6], AX[2]], dtype=object)
    got = assign_semcons(links, *labels, found)
    # AX1: part of 6 beats is a 2. AX2, AX3: is a. AX4: noise was not kept and part of's
    # label has negative stake: ⊥. AX5: only a zero-stake label: ⊥. AX6: unlabelled: ⊥.
    assert got.dtype == np.int32
    assert got.tolist() == [1, 0, 0, 2, 2, 2, 0]


def test_threshold_is_inclusive_and_relative() -> None:
    # max score 8 (is a); a third semcon with usage 4, coverage 1 scores exactly 4 = 0.5·8.
    third = particle_of_text("third")
    labels = LABELS + [(third, AX[6], 4.0)]
    kept = [s.particle for s in discover_semcons(*_arrays(labels), rel_threshold=0.5)]
    assert kept == [IS_A, PART_OF, third, ZERO]
    kept = [s.particle for s in discover_semcons(*_arrays(labels), rel_threshold=0.51)]
    assert kept == [IS_A, PART_OF, ZERO]
    everything = discover_semcons(*_arrays(LABELS), rel_threshold=0.0)
    assert [s.particle for s in everything] == [IS_A, PART_OF, NOISE, ZERO]
    assert everything[2].score == pytest.approx(0.001)


def test_score_ties_go_to_smaller_particle_id() -> None:
    a, b = sorted(particle_of_text(n) for n in ("left", "right"))
    # Same usage and coverage; b's labels come first so input order cannot explain the result.
    labels = [(b, AX[1], 1.0), (b, AX[2], 1.0), (a, AX[3], 2.0), (a, AX[4], 0.0), (a, AX[5], 0.0)]
    labels += [(a, AX[1], 0.5), (a, AX[1], 0.5)]  # a: usage 3 over AX3, AX1 = coverage 2
    labels += [(b, AX[2], 1.0)]  # b: usage 3 over AX1, AX2
    found = discover_semcons(*_arrays(labels))
    assert [s.particle for s in found] == [a, b, ZERO]
    assert found[0].score == found[1].score == 3 * math.log2(3)


def test_bottom_always_last_and_never_a_candidate() -> None:
    assert discover_semcons(*_arrays([])) == [BOTTOM]
    assert discover_semcons(*_arrays([(IS_A, AX[1], 0.0), (PART_OF, AX[2], -1.0)])) == [BOTTOM]
    # ⊥ signing label links does not make it a ranked semcon, nor list it twice.
    found = discover_semcons(*_arrays([(ZERO, AX[1], 100.0), (IS_A, AX[2], 1.0)]))
    assert found == [Semcon(IS_A, 1.0, 1.0, 1), BOTTOM]
    assert discover_semcons(*_arrays([(ZERO, AX[1], 5.0)])) == [BOTTOM]


def test_assign_ties_follow_list_order_not_ids() -> None:
    labels = _arrays([(IS_A, AX[1], 2.0), (PART_OF, AX[1], 1.0), (PART_OF, AX[1], 1.0)])
    links = np.array([AX[1]], dtype=object)
    first_is_a = [Semcon(IS_A, 2, 2, 1), Semcon(PART_OF, 1, 2, 1), BOTTOM]
    first_part_of = [Semcon(PART_OF, 1, 2, 1), Semcon(IS_A, 2, 2, 1), BOTTOM]
    # 2 against 1 + 1: a tie, won by whichever semcon the list names first.
    assert assign_semcons(links, *labels, first_is_a).tolist() == [0]  # is a
    assert assign_semcons(links, *labels, first_part_of).tolist() == [0]  # part of


def test_assign_ignores_unlisted_and_counts_bottom_labels() -> None:
    labels = _arrays([(NOISE, AX[1], 50.0), (IS_A, AX[1], 1.0),  # noise is not listed
                      (ZERO, AX[2], 3.0), (IS_A, AX[2], 2.0)])  # an explicit ⊥ label wins
    found = [Semcon(IS_A, 1, 1, 1), BOTTOM]
    links = np.array([AX[1], AX[2], AX[3]], dtype=object)
    assert assign_semcons(links, *labels, found).tolist() == [0, 1, 1]


def test_assign_without_labels_or_links() -> None:
    links = np.array(AX[:3], dtype=object)
    assert assign_semcons(links, *_arrays([]), [BOTTOM]).tolist() == [0, 0, 0]
    out = assign_semcons(np.array([], dtype=object), *_arrays(LABELS), [BOTTOM])
    assert out.shape == (0,) and out.dtype == np.int32


def test_input_dtypes_and_id_widths_agree() -> None:
    # IPFS CIDv0 ids are 46 chars, hex ids 64: arrays of different byte widths must match.
    cid = "Qm" + "a" * 44
    labels = [(cid, AX[1], 1.0), (cid, "Qm" + "b" * 44, 2.0), (IS_A, AX[2], 1.0)]
    src, ax, w = _arrays(labels)
    found = discover_semcons(src, ax, w)
    assert [s.particle for s in found] == [cid, IS_A, ZERO]
    links = ["Qm" + "b" * 44, AX[1], AX[2], "Qm" + "c" * 44]
    expected = [0, 0, 1, 2]
    for kind in (object, str, bytes):
        got = assign_semcons(np.array(links, dtype=kind), src.astype(kind), ax.astype(kind), w,
                             found)
        assert got.tolist() == expected
    only_cids = np.array([cid, cid])  # label_src narrower than the semcon list (⊥ is 64 wide)
    got = assign_semcons(np.array([AX[1], AX[3]]), only_cids, np.array([AX[1], AX[3]]),
                         np.array([1.0, 1.0]), found)
    assert got.tolist() == [0, 0]
    assert discover_semcons(list(src), list(ax), list(w)) == found
    doubled = np.repeat(src.astype(bytes), 2)[::2]  # a strided view of bytes ids
    assert discover_semcons(doubled, np.repeat(ax.astype(bytes), 2)[::2], w) == found


def _reference(link_axon, label_src, label_axon, label_w, rel_threshold=1e-3):
    """A plain-Python transcription of DESIGN §1, for the differential test."""
    usage, axons = defaultdict(float), defaultdict(set)
    for s, a, w in zip(label_src, label_axon, label_w):
        if w > 0 and s != ZERO:
            usage[s] += w
            axons[s].add(a)
    score = {s: usage[s] * math.log2(1 + len(axons[s])) for s in usage}
    top = max(score.values(), default=0.0)
    kept = sorted((s for s in score if score[s] >= rel_threshold * top),
                  key=lambda s: (-score[s], s)) + [ZERO]
    position = {s: k for k, s in enumerate(kept)}
    stake = defaultdict(float)
    for s, a, w in zip(label_src, label_axon, label_w):
        if w > 0 and s in position:
            stake[a, position[s]] += w
    best = {}
    for (a, k), total in stake.items():
        if a not in best or (total, -k) > (stake[a, best[a]], -best[a]):
            best[a] = k
    return kept, [best.get(a, len(kept) - 1) for a in link_axon]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    particles = [particle_of_text(f"s{i}") for i in range(12)] + [ZERO]
    axons = [particle_of_text(f"a{i}") for i in range(300)]
    n = 2000
    src = np.array(particles, dtype=object)[(rng.pareto(1.0, n) * 2).astype(int) % 13]
    ax = np.array(axons, dtype=object)[rng.integers(0, 300, n)]
    w = rng.integers(-2, 6, n).astype(float)  # integer stakes: sums, hence ties, are exact
    links = np.array(axons + [particle_of_text("unlabelled")], dtype=object)
    kept, expected = _reference(links, src, ax, w, rel_threshold=0.05)
    found = discover_semcons(src, ax, w, rel_threshold=0.05)
    assert [s.particle for s in found] == kept
    assert assign_semcons(links, src, ax, w, found).tolist() == expected


def test_fingerprint_collisions_fall_back_to_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _arrays(LABELS)
    links = np.array(AX, dtype=object)
    found = discover_semcons(*labels)
    expected = assign_semcons(links, *labels, found)
    # Every id hashing alike is the worst collision there is; results must not change.
    monkeypatch.setattr(semcons_mod, "_fingerprint",
                        lambda ids: np.zeros(ids.size, dtype=np.uint64))
    assert discover_semcons(*labels) == found
    assert assign_semcons(links, *labels, found).tolist() == expected.tolist()


@pytest.mark.parametrize("args, match", [
    ((np.array([IS_A]), np.array([AX[1], AX[2]]), np.array([1.0])), "1-D of one length"),
    ((np.array([[IS_A]]), np.array([[AX[1]]]), np.array([[1.0]])), "1-D of one length"),
    ((np.array([IS_A]), np.array([AX[1]]), np.array([np.nan])), "1 non-finite stakes"),
    ((np.array([IS_A]), np.array([AX[1]]), np.array(["x"])), "label_w must be numeric"),
    ((np.array([7]), np.array([AX[1]]), np.array([1.0])), "label_src must hold .* strings"),
    ((np.array(["é"]), np.array([AX[1]]), np.array([1.0])), "label_src must hold ASCII"),
])
def test_discover_bad_input(args: tuple, match: str) -> None:
    with pytest.raises(GraftError, match=match):
        discover_semcons(*args)


def test_discover_bad_threshold() -> None:
    with pytest.raises(GraftError, match=r"rel_threshold must be in \[0, 1\], got 1.5"):
        discover_semcons(*_arrays(LABELS), rel_threshold=1.5)


@pytest.mark.parametrize("semcons, match", [
    ([], "must end with ⊥"),
    ([Semcon(IS_A, 1, 1, 1)], "must end with ⊥"),
    ([BOTTOM, Semcon(IS_A, 1, 1, 1)], "must end with ⊥"),
    ([Semcon(IS_A, 1, 1, 1), Semcon(IS_A, 1, 1, 1), BOTTOM], "distinct particles"),
])
def test_assign_bad_semcons(semcons: list[Semcon], match: str) -> None:
    with pytest.raises(GraftError, match=match):
        assign_semcons(np.array([AX[1]]), *_arrays(LABELS), semcons)


def test_assign_bad_links() -> None:
    with pytest.raises(GraftError, match="link_axon must be 1-D"):
        assign_semcons(np.array([[AX[1]]]), *_arrays(LABELS), [BOTTOM])
