"""Shared test fixtures: throwaway stores, the tiny named graphs, and ../shared when present."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from graph.ids import particle_of_text  # noqa: E402
from graph.store import Store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "data" / "fixtures"
SHARED = REPO.parent / "shared"
CYBERWIKI = SHARED / "data" / "cyberwiki"

needs_cyberwiki = pytest.mark.skipif(not (CYBERWIKI / "train_links.jsonl").exists(),
                                     reason="../shared/data/cyberwiki is not beside this clone")


def pid(name: str) -> str:
    """The particle id of a name (sha256 of its UTF-8 bytes), as the fixtures use."""
    return particle_of_text(name)


def link(src: str, dst: str, **over) -> dict:
    """A valid link row between two named particles; keyword arguments override fields."""
    row = {"neuron": "tester", "from": pid(src), "to": pid(dst), "token": "link",
           "amount": 1, "valence": 1, "time": 1}
    row.update(over)
    return row


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def store(tmp_path) -> Store:
    with Store(tmp_path / "test.duckdb") as s:
        yield s


def table_counts(store: Store) -> dict:
    """Row counts of every table: 'the store is unchanged' means these are equal."""
    tables = ("cyberlinks", "particles", "neurons", "tokens", "batches", "snapshots", "meta")
    return {t: store.scalar(f"SELECT count(*) FROM {t}") for t in tables}


def ingest_fixture(store: Store, name: str) -> None:
    """Ingest data/fixtures/NAME.particles.jsonl and NAME.links.jsonl into `store`."""
    from graph.ingest import ingest_links
    from graph.ingest_rows import ingest_particles
    ingest_particles(store, [FIXTURES / f"{name}.particles.jsonl"])
    ingest_links(store, [FIXTURES / f"{name}.links.jsonl"])


def write_wiki(root: Path, pages: int = 40, links: int = 4, decoys: int = 3, seed: int = 0,
               mention_links: bool = True) -> tuple[Path, Path, Path]:
    """A seeded toy wiki: page i links `links` random pages; its text names `decoys` other
    pages and, when `mention_links`, every page it links (else only the decoys). Writes
    particles, links and a corpus (the pages' texts, one document each); returns their paths."""
    import numpy as np
    rng = np.random.default_rng(seed)
    names = [f"page{i:02d}" for i in range(pages)]
    particles, rows, docs = [], [], []
    for i, name in enumerate(names):
        others = rng.permutation([j for j in range(pages) if j != i])
        targets, extra = others[:links], others[links:links + decoys]
        said = list(extra) + (list(targets) if mention_links else [])
        text = " ".join(f"see {names[j]}." for j in rng.permutation(said))
        particles.append({"particle": pid(name), "name": name, "text": text})
        rows += [link(name, names[j], time=i) for j in targets]
        docs.append(f"{name}\n{text}")
    return (write_jsonl(root / "wiki.particles.jsonl", particles),
            write_jsonl(root / "wiki.links.jsonl", rows),
            _write_text(root / "wiki.corpus.txt", "\n\n".join(docs) + "\n"))


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def compile_fixture(root: Path, name: str, cfg) -> Path:
    """Ingest data/fixtures/NAME.* into ROOT/g.duckdb and compile it to ROOT/ckpt with
    `cfg` (a CompileConfig); returns ROOT."""
    from compiler.compile import compile_snapshot
    from graph.snapshot import take_snapshot
    with Store(root / "g.duckdb") as store:
        ingest_fixture(store, name)
        compile_snapshot(store, take_snapshot(store), root / "ckpt", cfg)
    return root
