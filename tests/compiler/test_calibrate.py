"""The logit scale τ: the minimum of the links' cross-entropy, applied as the final RMSNorm
weight so every logit scales and no rank moves."""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from transformers import AutoModelForCausalLM

from compiler.calibrate import logit_scale
from compiler.compile import compile_snapshot
from compiler.types import CompileConfig
from graph.snapshot import take_snapshot
from graph.store import Store
from tests.conftest import ingest_fixture


def brute_force_ce(a, e, h, tau):
    """Stake-weighted −log softmax(τ E_p Hᵀ)_q over every link, by loops."""
    coo = a.tocoo()
    total, weight = 0.0, 0.0
    for p, q, w in zip(coo.row, coo.col, coo.data):
        s = tau * (e[p].astype(np.float64) @ h.T.astype(np.float64))
        total += w * (math.log(np.exp(s - s.max()).sum()) + s.max() - s[q])
        weight += w
    return total / weight


def test_tau_is_the_minimum_of_the_link_cross_entropy():
    rng = np.random.default_rng(1)
    a = sp.random_array((30, 30), density=0.15, random_state=rng, format="csr")
    u, sigma, vt = np.linalg.svd(a.toarray())          # E·Hᵀ a rank-6 fit of the links
    e = (u[:, :6] * np.sqrt(sigma[:6])).astype(np.float32)
    h = (vt[:6].T * np.sqrt(sigma[:6])).astype(np.float32)
    tau, stats = logit_scale(a, e, h, seed=0)
    grid = np.exp(np.linspace(math.log(1e-2), math.log(1e2), 2001))
    best = grid[np.argmin([brute_force_ce(a, e, h, t) for t in grid])]
    assert tau == np.float32(tau) and abs(math.log(tau / best)) < 0.01
    assert math.isclose(stats["link_ce"], brute_force_ce(a, e, h, tau), rel_tol=1e-5)
    assert math.isclose(stats["link_ce_unscaled"], brute_force_ce(a, e, h, 1.0), rel_tol=1e-5)
    assert stats["link_ce"] <= stats["link_ce_unscaled"]


def test_no_links_keep_scale_one():
    tau, _ = logit_scale(sp.csr_array((5, 5)), np.ones((5, 2), np.float32),
                         np.ones((5, 2), np.float32), seed=0)
    assert tau == 1.0


def test_tau_scales_every_logit_and_moves_no_rank(tmp_path):
    with Store(tmp_path / "g.duckdb") as store:
        ingest_fixture(store, "communities")
        snap = take_snapshot(store)
        base = CompileConfig(d=8, layers=2, check_determinism=False)
        compile_snapshot(store, snap, tmp_path / "on", base)
        compile_snapshot(store, snap, tmp_path / "off",
                         CompileConfig(d=8, layers=2, check_determinism=False, calibrate=False))
    ids = torch.arange(4, 12)[:, None]
    with torch.no_grad():
        on = AutoModelForCausalLM.from_pretrained(tmp_path / "on")(input_ids=ids).logits
        off = AutoModelForCausalLM.from_pretrained(tmp_path / "off")(input_ids=ids).logits
    tau = float(AutoModelForCausalLM.from_pretrained(tmp_path / "on").model.norm.weight[0])
    assert tau != 1.0
    assert torch.allclose(on, tau * off, rtol=1e-4, atol=1e-5)
    top = lambda x: torch.sort(x, dim=-1, stable=True).indices[..., -3:]  # noqa: E731
    assert torch.equal(top(on), top(off))
