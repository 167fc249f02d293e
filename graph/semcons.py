"""Semcons (link types): discover them from label links and assign one to every link."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from graph.errors import GraftError
from graph.ids import ZERO

# Letters: L label links, N links, K distinct ids, S semcons (⊥ included).

_ZERO_BYTES = ZERO.encode("ascii")
_SMALL_INDEX = 1 << 14  # keys that stay in cache: below this, search queries unsorted
_BLOCK = 1 << 16  # ids hashed or compared per block: a block's bytes stay in cache


@dataclass(frozen=True)
class Semcon:
    """One link type: a semcon particle and how much the graph uses it (DESIGN §1).

    Args:
        particle: the semcon's particle id; `graph.ids.ZERO` for the default semcon ⊥.
        score: usage · log2(1 + coverage); 0 for ⊥.
        usage: total effective stake of the particle's label links.
        coverage: number of distinct axons the particle labels.
    """

    particle: str
    score: float
    usage: float
    coverage: int


def discover_semcons(label_src: np.ndarray, label_axon: np.ndarray, label_w: np.ndarray,
                     rel_threshold: float = 1e-3) -> list[Semcon]:
    """Rank the sources of label links as semcons, keep the strong ones, append ⊥.

    Label links from ⊥ itself are not candidates: ⊥ is always present, once, last.

    Args:
        label_src: (L,) str ids of each label link's source: the candidate semcon.
        label_axon: (L,) str ids of the axons the label links point at.
        label_w: (L,) float effective stakes; entries with w ≤ 0 are ignored entirely.
        rel_threshold: keep a candidate when its score ≥ rel_threshold · the best score;
            in [0, 1].

    Returns:
        Kept semcons by score descending (ties: particle id ascending), then ⊥ with
        score 0, usage 0, coverage 0. With no positive label links: [⊥].

    Raises:
        GraftError: arrays of different lengths or not 1-D, ids that are not ASCII
            strings, non-finite stakes, or a threshold outside [0, 1].
    """
    problems = _check_labels(label_src, label_axon, label_w)
    if not (isinstance(rel_threshold, numbers.Real) and 0.0 <= rel_threshold <= 1.0):
        problems.append(f"rel_threshold must be in [0, 1], got {rel_threshold!r}")
    if problems:
        raise GraftError("discover_semcons: " + "; ".join(problems))

    w = np.asarray(label_w, dtype=np.float64)  # (L,)
    bottom = Semcon(particle=ZERO, score=0.0, usage=0.0, coverage=0)
    if w.size == 0:
        return [bottom]
    # Filter int codes rather than the ids: masking (L,) 64-byte strings costs more.
    src_index, src = _index(_ascii(label_src, "label_src"))  # (L,) codes
    _, axon = _index(_ascii(label_axon, "label_axon"))  # (L,) codes
    src_rep = src_index.ids  # (K_src,)
    keep = (w > 0) & (src_rep != _ZERO_BYTES)[src]
    src, axon, w = src[keep], axon[keep], w[keep]
    if w.size == 0:
        return [bottom]

    usage = np.bincount(src, weights=w, minlength=src_rep.size)  # (K_src,)
    # Distinct (source, axon) pairs as one int64 key each (K_src · K_axon ≤ L² < 2⁶³);
    # sort + neighbour compare, as np.unique's hash path is several times slower here.
    stride = int(axon.max()) + 1
    pairs = np.sort(src * stride + axon)  # (L',)
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    coverage = np.bincount(pairs // stride, minlength=src_rep.size)  # (K_src,)
    # 0 for sources whose every label was ignored, > 0 for all others (coverage ≥ 1).
    score = usage * np.log2(1.0 + coverage)  # (K_src,)

    kept = np.flatnonzero((score > 0) & (score >= rel_threshold * score.max()))
    particles = [src_rep[i].decode("ascii") for i in kept]
    # Python's sort on (−score, id) is exact and stable; the kept list is short.
    order = sorted(range(kept.size), key=lambda k: (-score[kept[k]], particles[k]))
    found = [Semcon(particle=particles[k], score=float(score[kept[k]]),
                    usage=float(usage[kept[k]]), coverage=int(coverage[kept[k]]))
             for k in order]
    return found + [bottom]


def assign_semcons(link_axon: np.ndarray, label_src: np.ndarray, label_axon: np.ndarray,
                   label_w: np.ndarray, semcons: list[Semcon]) -> np.ndarray:
    """Type every link by the semcon with the most label stake on its axon.

    Args:
        link_axon: (N,) str axon ids of the links to type.
        label_src: (L,) str ids of the label links' sources.
        label_axon: (L,) str axon ids the label links point at.
        label_w: (L,) float effective stakes; entries with w ≤ 0 are ignored entirely.
        semcons: the list from `discover_semcons`: distinct particles, ⊥ last. Label links
            from a particle not in it are ignored; label links from ⊥ count for ⊥.

    Returns:
        (N,) int32 index into `semcons` per link: the semcon whose label links on that
        axon sum to the most stake (exact float comparison; ties go to the semcon earlier
        in `semcons`), or len(semcons) − 1 (⊥) when no listed semcon labels the axon.

    Raises:
        GraftError: bad arrays (as in `discover_semcons`), or a `semcons` list that is
            empty, has duplicates or does not end with ⊥.
    """
    problems = _check_labels(label_src, label_axon, label_w)
    if np.ndim(link_axon) != 1:
        problems.append(f"link_axon must be 1-D, got shape {np.shape(link_axon)}")
    particles = [s.particle for s in semcons]
    if not particles or particles[-1] != ZERO:
        problems.append("semcons must end with ⊥ (particle graph.ids.ZERO); "
                        f"got {len(particles)} semcons, last {particles[-1:]}")
    if len(set(particles)) != len(particles):
        problems.append("semcons must have distinct particles")
    if problems:
        raise GraftError("assign_semcons: " + "; ".join(problems))

    n_sem = len(semcons)
    links = _ascii(link_axon, "link_axon")
    if links.size == 0:
        return np.zeros(0, dtype=np.int32)
    w = np.asarray(label_w, dtype=np.float64)

    # Which semcon signs each label link: −1 for particles that are not listed semcons.
    sem_index, sem_code = _index(_ascii(np.asarray(particles), "semcons"))
    sem_of = np.empty(n_sem, dtype=np.int64)  # (S,) code → position in `semcons`
    sem_of[sem_code] = np.arange(n_sem)
    found = _find(sem_index, _ascii(label_src, "label_src"))  # (L,)
    sem = np.where(found >= 0, sem_of[found], -1)  # (L,)
    keep = (w > 0) & (sem >= 0)
    if not keep.any():
        return np.full(links.size, n_sem - 1, dtype=np.int32)

    axon_index, axon = _index(_ascii(label_axon, "label_axon"))  # (L,) codes
    axon, sem, w = axon[keep], sem[keep], w[keep]
    # Sum stake per (axon, semcon); after sorting by axon, stake descending, semcon index
    # ascending, the first row of each axon is its winner with ties broken.
    key, inv = np.unique(axon * n_sem + sem, return_inverse=True)  # (G,)
    stake = np.bincount(inv, weights=w)  # (G,)
    group_axon, group_sem = key // n_sem, key % n_sem
    order = np.lexsort((group_sem, -stake, group_axon))
    first = order[np.r_[True, group_axon[order][1:] != group_axon[order][:-1]]]
    best = np.full(axon_index.ids.size, n_sem - 1, dtype=np.int32)  # (K,) ⊥ if unlabelled
    best[group_axon[first]] = group_sem[first]

    hit = _find(axon_index, links)  # (N,)
    return np.where(hit >= 0, best[hit], n_sem - 1).astype(np.int32)


def _check_labels(label_src: object, label_axon: object, label_w: object) -> list[str]:
    """Problems with the three label-link arrays (shapes, stakes), as messages."""
    problems = []
    shapes = {name: np.shape(a) for name, a in
              (("label_src", label_src), ("label_axon", label_axon), ("label_w", label_w))}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        problems.append(f"label arrays must be 1-D of one length, got shapes {shapes}")
    try:
        w = np.asarray(label_w, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"label_w must be numeric, got dtype {np.asarray(label_w).dtype}")
    else:
        bad = np.flatnonzero(~np.isfinite(w.ravel()))
        if bad.size:
            problems.append(f"label_w has {bad.size} non-finite stakes "
                            f"(first at index {bad[0]}: {w.ravel()[bad[0]]!r})")
    return problems


def _ascii(ids: object, name: str) -> np.ndarray:
    """Ids as a fixed-width bytes array (dtype S*), which sorts and compares with memcmp."""
    arr = np.asarray(ids)
    if arr.dtype.kind == "S":
        return arr
    if arr.dtype.kind not in "UO" and arr.size:
        raise GraftError(f"{name} must hold particle id strings, got dtype {arr.dtype}")
    try:
        return arr.astype(bytes)
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise GraftError(f"{name} must hold ASCII particle id strings: {exc}") from exc


@dataclass(frozen=True)
class _Index:
    """Distinct ids and their sorted search keys, for `_find`.

    Args:
        keys: (K,) ascending; 64-bit fingerprints of `ids`, or `ids` themselves when
            `hashed` is False (after a fingerprint collision).
        ids: (K,) the distinct ids, bytes; ids[k] has key keys[k] and code k.
        hashed: whether `keys` are fingerprints.
    """

    keys: np.ndarray
    ids: np.ndarray
    hashed: bool


def _index(ids: np.ndarray) -> tuple[_Index, np.ndarray]:
    """Dense integer codes for bytes ids (equal ids, equal codes) and an index to find them.

    np.unique over 3M 64-byte strings takes ~10 s (2 cores), so ids are grouped by a 64-bit
    fingerprint instead (one uint64 sort) and the grouping is then checked byte for byte;
    a fingerprint collision, astronomically rare, falls back to the exact string sort.
    Codes therefore follow fingerprint order, not id order: callers must not rely on it.

    Args:
        ids: (T,) bytes (S*) ids.

    Returns:
        The index of the K distinct ids, and (T,) int64 codes in [0, K).
    """
    fp = _fingerprint(ids)  # (T,)
    order = np.argsort(fp, kind="stable")  # (T,) measured faster than the default here
    fp = fp[order]
    head = np.r_[True, fp[1:] != fp[:-1]] if fp.size else np.zeros(0, dtype=bool)  # (T,)
    codes = np.empty(ids.size, dtype=np.int64)  # (T,)
    codes[order] = np.cumsum(head) - 1
    rep_at = order[head]  # (K,) where each code's representative id sits
    rep = ids[rep_at]  # (K,)
    # Only ids that are not their group's representative can differ from it; visit them
    # in position order so reading `ids` runs forward through memory.
    others = np.ones(ids.size, dtype=bool)
    others[rep_at] = False
    others = np.flatnonzero(others)  # (T − K,)
    if _equal(ids, others, rep, codes[others]).all():
        return _Index(keys=fp[head], ids=rep, hashed=True), codes
    rep, codes = np.unique(ids, return_inverse=True)
    return _Index(keys=rep, ids=rep, hashed=False), codes.astype(np.int64, copy=False)


def _find(index: _Index, ids: np.ndarray) -> np.ndarray:
    """(T,) int64 code of each bytes id in `index`, or −1 where it is absent; exact."""
    if index.ids.size == 0:
        return np.full(ids.size, -1, dtype=np.int64)
    if index.hashed:
        # Fingerprints depend on the bytes width: hash the queries at the index's width.
        # A query cut short by that cast can only match a candidate it then fails below.
        keys = _fingerprint(ids.astype(index.ids.dtype, copy=False))  # (T,)
    else:
        keys = ids  # (T,)
    if index.keys.size > _SMALL_INDEX:
        # Random queries into a big index miss cache at every bisection step; in sorted
        # order numpy's searchsorted reuses the last bound and walks the index nearly
        # sequentially (4x faster for 3M into 3M, sort included).
        order = np.argsort(keys, kind="stable")  # (T,)
        pos = np.empty(ids.size, dtype=np.int64)  # (T,)
        pos[order] = np.searchsorted(index.keys, keys[order])
    else:
        pos = np.searchsorted(index.keys, keys)  # (T,)
    pos = pos.clip(max=index.ids.size - 1)
    # A fingerprint match is only a candidate: confirm it byte for byte.
    hit = (index.keys[pos] == keys) & _equal(ids, np.arange(ids.size), index.ids, pos)
    return np.where(hit, pos, -1)


def _equal(a: np.ndarray, a_at: np.ndarray, b: np.ndarray, b_at: np.ndarray) -> np.ndarray:
    """(M,) bool a[a_at] == b[b_at] for bytes arrays, compared block by block.

    Gathering all M 64-byte ids at once costs more in page faults for the two copies than
    the compares themselves; blocks reuse the same small buffers.
    """
    out = np.empty(a_at.size, dtype=bool)  # (M,)
    for start in range(0, a_at.size, _BLOCK):  # M / 65536 blocks, not a loop over ids
        part = slice(start, start + _BLOCK)
        out[part] = a[a_at[part]] == b[b_at[part]]
    return out


def _fingerprint(ids: np.ndarray) -> np.ndarray:
    """(T,) uint64 hash of each bytes id: splitmix64's finaliser folded over its 8-byte words.

    The finaliser (Steele et al. 2014) is a bijective avalanche on uint64. Ids go through in
    blocks so each block's words stay in cache across the W column passes
    (3x faster than whole-array passes at 3M ids).
    """
    width = ids.dtype.itemsize
    padded = ids.astype(f"S{width + (-width % 8)}", copy=False)  # NUL-padded to whole words
    padded = np.ascontiguousarray(padded)  # a strided view cannot be reinterpreted as words
    words = padded.view(np.uint64).reshape(ids.size, padded.itemsize // 8)  # (T, W)
    h = np.full(ids.size, width, dtype=np.uint64)  # (T,)
    tmp = np.empty(min(ids.size, _BLOCK), dtype=np.uint64)  # (B,)
    for start in range(0, ids.size, _BLOCK):  # T / 65536 blocks, not a loop over ids
        hb, block = h[start:start + _BLOCK], words[start:start + _BLOCK]  # (B,), (B, W)
        tb = tmp[:hb.size]
        for col in block.T:  # W = ceil(width / 8) words per id
            hb ^= col
            for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
                np.right_shift(hb, np.uint64(shift), out=tb)
                hb ^= tb
                hb *= np.uint64(mult)
            np.right_shift(hb, np.uint64(31), out=tb)
            hb ^= tb
    return h
