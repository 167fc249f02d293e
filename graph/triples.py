"""Typed triples (head, relation, tail) → graft link and particle rows.

A knowledge-graph triple becomes one cyberlink head → tail whose `semcon` is the relation's
name: ingest then writes the label link relation → axon(head, tail), which is what types a
link (DESIGN §1), so every relation becomes a semcon and the compiler gives it a head. The
relation is also the link's `token` (ρ = 1 unless a token table says otherwise), so
`graft split-holdout --token R` can hold out one relation. Entities become particles with
their names (ids: the store's hash of the name), so the compiled tokenizer and lexicon know
them.

Caveat: a semcon types an axon, not a row, so a pair (p, q) that holds several relations
(common in UMLS) gets the one with the most label stake (ties: the higher-scored semcon),
and its rows sum into one entry of the adjacency.

PyKEEN ships some small datasets as plain files inside its wheel (Kinships, UMLS, Nations:
`pykeen/datasets/NAME/{train,valid,test}.txt`, tab-separated); `pykeen_dataset_dir` finds
them without importing PyKEEN (whose import is slow) and without any download.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

from graph.errors import GraftError
from graph.ids import particle_of_text

Triple = tuple[str, str, str]
SPLITS = ("train", "valid", "test")


def pykeen_dataset_dir(name: str) -> Path:
    """The folder of a dataset that ships inside the installed pykeen package.

    Raises:
        GraftError: pykeen is not installed, or has no such folder with train/valid/test.
    """
    spec = importlib.util.find_spec("pykeen")
    if spec is None or not spec.submodule_search_locations:
        raise GraftError("pykeen is not installed (pip install 'graft[kge]')")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / name.lower()
    missing = [s for s in SPLITS if not (folder / f"{s}.txt").exists()]
    if missing:
        raise GraftError(f"{folder}: no {', '.join(s + '.txt' for s in missing)} "
                         f"(not a dataset shipped as files in this pykeen)")
    return folder


def read_triples(path: Path) -> list[Triple]:
    """Tab-separated `head relation tail` lines (blank lines skipped).

    Raises:
        GraftError: naming the first bad line (not three non-empty fields).
    """
    out: list[Triple] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3 or not all(p.strip() for p in parts):
                raise GraftError(f"{path}:{number}: expected head<TAB>relation<TAB>tail, "
                                 f"got {line[:80]!r}")
            out.append((parts[0].strip(), parts[1].strip(), parts[2].strip()))
    return out


def triples_to_links(triples: Iterable[Triple], *, neuron: str = "triples", time: int = 1,
                     hash_name: str = "sha256") -> list[dict]:
    """One link row per triple: from/to the entities' particle ids, `semcon` and `token`
    the relation's name, stake 1, valence +1. Duplicate triples stay duplicate rows."""
    return [{"neuron": neuron, "from": particle_of_text(h, hash_name),
             "to": particle_of_text(t, hash_name), "token": r, "semcon": r,
             "amount": 1, "valence": 1, "time": time} for h, r, t in triples]


def triples_to_particles(triples: Iterable[Triple], hash_name: str = "sha256") -> list[dict]:
    """One particle row per distinct entity (heads and tails, first-appearance order) with
    its name; relations are not rows here (ingest names a semcon given by name itself)."""
    seen: dict[str, None] = {}
    for h, _, t in triples:
        seen.setdefault(h)
        seen.setdefault(t)
    return [{"particle": particle_of_text(n, hash_name), "name": n} for n in seen]
