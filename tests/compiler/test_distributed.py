"""The embedding SVD on a Dask cluster (compiler/distributed.py): on a LocalCluster of 2
worker processes it gives the in-process path's singular values and vectors, whatever the
number of workers, and a compile with it passes its certificate beside an in-process one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("dask.distributed")

from compiler import distributed, linalg  # noqa: E402
from compiler.compile import compile_snapshot  # noqa: E402
from compiler.types import CompileConfig  # noqa: E402
from graph.errors import GraftError  # noqa: E402
from graph.ingest import ingest_links  # noqa: E402
from graph.snapshot import take_snapshot  # noqa: E402
from graph.store import Store  # noqa: E402
from tests.compiler.test_warm import _links  # noqa: E402
from tests.conftest import write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.session("local:2") as c:
        yield c


@pytest.mark.parametrize("shape", [(600, 600), (500, 800), (900, 400)])
def test_the_dask_svd_is_the_in_process_svd(client, tmp_path, shape):
    # empty rows and columns dropped, the sketch on the shorter side, the same test matrix
    a = sp.csr_array(sp.random_array(shape, density=0.005, rng=np.random.default_rng(1)))
    assert (np.diff(a.indptr) == 0).any()
    u, s, vt = distributed.randomized_svd(a, 32, client, seed=5, folder=tmp_path / "p")
    u0, s0, vt0 = linalg.randomized_svd(a, 32, seed=5)
    assert u.shape == u0.shape and vt.shape == vt0.shape and u.dtype == np.float32
    np.testing.assert_allclose(s, s0, rtol=1e-6, atol=1e-6 * s0[0])
    np.testing.assert_allclose(u[:, :8], u0[:, :8], atol=1e-4)     # signs included
    np.testing.assert_allclose(vt[:8], vt0[:8], atol=1e-4)
    assert not u[np.diff(a.indptr) == 0].any()


def test_its_bits_depend_on_the_row_blocks_not_the_workers(client, tmp_path):
    a = sp.csr_array(sp.random_array((400, 400), density=0.01, rng=np.random.default_rng(2)))
    two = distributed.randomized_svd(a, 16, client, seed=1, parts=4, folder=tmp_path / "a")
    with distributed.session("local:1") as one_worker:
        one = distributed.randomized_svd(a, 16, one_worker, seed=1, parts=4,
                                         folder=tmp_path / "b")
    for x, y in zip(two, one):
        assert np.array_equal(x, y)


def test_a_rank_deficient_matrix_keeps_the_in_process_zeros(client, tmp_path):
    rng = np.random.default_rng(3)
    a = sp.csr_array(rng.random((300, 5)) @ rng.random((5, 200)))     # rank 5
    _, s, vt = distributed.randomized_svd(a, 12, client, seed=0, folder=tmp_path / "p")
    _, s0, _ = linalg.randomized_svd(a, 12, seed=0)
    np.testing.assert_allclose(s[:5], s0[:5], rtol=1e-6)
    assert (s[5:] == 0).all() and not vt[5:].any()


def test_a_compile_on_the_cluster_passes_beside_the_in_process_one(tmp_path):
    links = _links(np.random.default_rng(0), 1200, 7000)
    with Store(tmp_path / "g.duckdb") as store:
        ingest_links(store, [write_jsonl(tmp_path / "a.jsonl", links)])
        snap = take_snapshot(store)
        here = compile_snapshot(store, snap, tmp_path / "here", CompileConfig(d=32, layers=1))
        there = compile_snapshot(store, snap, tmp_path / "dask",
                                 CompileConfig(d=32, layers=1, dask="local:2"))
    assert here["pass"] and there["pass"] and there["P-DET"]["pass"]
    assert abs(here["P-EMBED"]["value"] - there["P-EMBED"]["value"]) < 1e-6
    record = json.loads((tmp_path / "dask" / "compile.json").read_text())
    assert record["config"]["dask"] == "local:2"
    assert not (tmp_path / "dask" / "_partitions").exists()


def test_bad_dask_settings_are_named():
    for bad in ("local:0", "local:x"):
        with pytest.raises(GraftError, match="local:N"):
            with distributed.session(bad):
                pass
    with pytest.raises(GraftError, match="warm_start"):
        CompileConfig(dask="local:2", warm_start="x")
    with pytest.raises(GraftError, match="dask_parts"):
        CompileConfig(dask_parts=0)


def test_graft_compile_takes_the_cluster_from_the_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    links = _links(np.random.default_rng(1), 400, 2000)
    with Store(tmp_path / "g.duckdb") as store:
        ingest_links(store, [write_jsonl(tmp_path / "a.jsonl", links)])
    run = subprocess.run([sys.executable, "-m", "loop.cli", "--db", str(tmp_path / "g.duckdb"),
                          "compile", "--out", str(tmp_path / "ckpt"), "--d", "16", "--layers",
                          "1", "--dask", "local:1", "--dask-parts", "2", "--no-det-check"],
                         cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    config = json.loads((tmp_path / "ckpt" / "compile.json").read_text())["config"]
    assert config["dask"] == "local:1" and config["dask_parts"] == 2
