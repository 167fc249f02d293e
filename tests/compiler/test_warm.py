"""Warm-started compiles (compiler/warm.py): after a few links change, a compile that starts
its SVD from the previous checkpoint's subspace with one power iteration matches a cold
compile of the same snapshot, passes its certificate and is deterministic."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.compile import compile_snapshot
from compiler.linalg import randomized_svd
from compiler.types import CompileConfig
from graph.ingest import ingest_links
from graph.snapshot import take_snapshot
from graph.store import Store
from tests.conftest import link, write_jsonl


def _links(rng, n, m, time0=0):
    src = rng.zipf(1.3, m) % n
    dst = (rng.zipf(1.2, m) * 7 + rng.integers(0, 3, m)) % n
    return [link(f"p{s}", f"p{d}", time=time0 + i) for i, (s, d) in enumerate(zip(src, dst))
            if s != d]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """A 1500-particle power-law graph compiled cold, then 1% more links compiled cold and
    warm from the first checkpoint."""
    root = tmp_path_factory.mktemp("warm")
    rng = np.random.default_rng(0)
    first = _links(rng, 1500, 9000)
    more = _links(rng, 1500, 90, time0=10**6)
    cfg = CompileConfig(d=48, layers=1, check_determinism=False)
    with Store(root / "g.duckdb") as store:
        ingest_links(store, [write_jsonl(root / "a.jsonl", first)])
        compile_snapshot(store, take_snapshot(store), root / "one", cfg)
        ingest_links(store, [write_jsonl(root / "b.jsonl", more)])
        snap = take_snapshot(store)
        cold = compile_snapshot(store, snap, root / "cold", cfg)
        warm_cfg = CompileConfig(d=48, layers=1, warm_start=str(root / "one"),
                                 check_determinism=True)
        warm = compile_snapshot(store, snap, root / "warm", warm_cfg)
    return root, cold, warm


def test_a_warm_compile_matches_a_cold_one_and_passes(graphs):
    root, cold, warm = graphs
    assert warm["pass"] and cold["pass"]
    assert warm["P-DET"]["pass"]                                # deterministic given the start
    assert abs(warm["P-EMBED"]["value"] - cold["P-EMBED"]["value"]) <= 1e-3
    record = json.loads((root / "warm" / "compile.json").read_text())
    first = json.loads((root / "one" / "compile.json").read_text())
    used = record["embedding"]["warm_start"]
    assert used["snapshot"] == first["snapshot"] and used["particles_reused"] > 1000
    assert record["config"]["warm_start"] == str(root / "one")


def test_the_start_block_makes_one_power_iteration_as_good_as_four(graphs):
    import scipy.sparse as sp
    from compiler.embedding import relative_residual
    rng = np.random.default_rng(1)
    n, k = 3000, 40
    a = sp.random_array((n, n), density=0.004, rng=rng, format="csr")
    a = (a + sp.diags_array(np.linspace(3, 0.1, n))).tocsr()    # a decaying spectrum
    b = (a + sp.random_array((n, n), density=0.00004, rng=rng)).tocsr()   # a few more entries
    _, _, vt = randomized_svd(a, k, seed=0, power_iters=4)
    cold4 = relative_residual(b, randomized_svd(b, k, seed=1, power_iters=4)[1])
    cold1 = relative_residual(b, randomized_svd(b, k, seed=1, power_iters=1)[1])
    warm1 = relative_residual(b, randomized_svd(b, k, seed=1, power_iters=1, start=vt.T)[1])
    assert warm1 <= cold4 + 1e-3 and warm1 < cold1
