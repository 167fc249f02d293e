"""`graft cycle`: runs, records every step, resumes after SIGKILL without duplicating links
or proposals, and reports."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from graph.store import Store
from loop.cycle import cycle_metrics
from tests.conftest import FIXTURES, REPO, ingest_fixture


@pytest.fixture
def setup(tmp_path):
    lines = [x for x in (FIXTURES / "typed.corpus.txt").read_text().splitlines() if x.strip()]
    (tmp_path / "corpus.txt").write_text("\n\n".join(lines * 6) + "\n")
    with Store(tmp_path / "g.duckdb") as store:
        ingest_fixture(store, "typed")
    return tmp_path


def graft(root, *args, fault=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("GRAFT_FAULT", None)
    if fault:
        env["GRAFT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "loop.cli", "--db", str(root / "g.duckdb"),
                           *args], cwd=REPO, env=env, capture_output=True, text=True)


CYCLE = ["cycle", "--cycles", "2", "--max-steps", "20", "--top-k", "5", "--auto-accept", "2",
         "--d", "12", "--layers", "2"]


def state(root):
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        return {
            "proposals": store.query("SELECT cycle, count(*), count(DISTINCT (src, dst)) "
                                     "FROM proposals GROUP BY cycle ORDER BY cycle"),
            "extract_links": store.scalar("SELECT count(*) FROM cyberlinks "
                                          "WHERE origin = 'extract'"),
            "steps": store.query("SELECT cycle, step, count(*) FROM cycle_steps "
                                 "GROUP BY cycle, step ORDER BY cycle, step"),
            "metrics": cycle_metrics(store)}


def test_cycles_resume_after_a_kill_without_duplicates(setup):
    root = setup
    args = [*CYCLE, "--corpus", str(root / "corpus.txt"), "--out", str(root / "out")]
    # killed after cycle 1's review committed its decisions, before the journal saw it
    killed = graft(root, *args, fault="1:review-")
    assert killed.returncode == -9, killed.stderr[-2000:]
    mid = state(root)
    assert mid["extract_links"] == 2 and ("1", "review") not in {
        (str(c), s) for c, s, _ in mid["steps"]}
    done = graft(root, *args, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    after = state(root)
    assert after["proposals"] == [(1, 5, 5), (2, 5, 5)]
    assert after["extract_links"] == 4                     # 2 per cycle, never 2 more
    assert all(n == 1 for _, _, n in after["steps"])       # each step recorded once
    rows = json.loads(done.stdout)["cycles"]
    assert [r["cycle"] for r in rows] == [1, 2]
    assert all(r["approximation_error"] > 0 and r["accepted"] == 2 for r in rows)
    assert (root / "out" / "report.html").exists()
    again = graft(root, *args)                             # everything recorded: no-op
    assert again.returncode == 0 and state(root)["extract_links"] == 4
    assert "already done" in again.stderr


def test_report_is_escaped_html(setup):
    from loop.report import write_report
    page = write_report([{"cycle": 1, "approximation_error": 1.5, "proposals": "<script>",
                          "wall_seconds": 2.0}], setup / "r.html")
    text = page.read_text()
    assert "&lt;script&gt;" in text and "<script>" not in text
