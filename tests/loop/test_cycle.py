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
    return make_root(tmp_path)


def make_root(root):
    root.mkdir(parents=True, exist_ok=True)
    lines = [x for x in (FIXTURES / "typed.corpus.txt").read_text().splitlines() if x.strip()]
    (root / "corpus.txt").write_text("\n\n".join(lines * 6) + "\n")
    with Store(root / "g.duckdb") as store:
        ingest_fixture(store, "typed")
    return root


def snapshots(root):
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        return [json.loads(d)["snapshot"] for (d,) in store.query(
            "SELECT detail FROM cycle_steps WHERE step = 'snapshot' ORDER BY cycle")]


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
    # the KL against the compiled logits at their best scale can only be the smaller
    assert all(0 <= r["kl_tuned_compiled"] <= r["kl_tuned_compiled_raw"] for r in rows)
    assert (root / "out" / "report.html").exists()
    again = graft(root, *args)                             # everything recorded: no-op
    assert again.returncode == 0 and state(root)["extract_links"] == 4
    assert "already done" in again.stderr
    # the out folder moved away: recorded steps whose outputs are gone are done again
    import shutil
    shutil.move(str(root / "out"), str(root / "moved"))
    redone = graft(root, *args, "--json")
    assert redone.returncode == 0, redone.stderr[-2000:]
    assert "compile was done, but" in redone.stderr and "doing it again" in redone.stderr
    assert (root / "out" / "cycle-2" / "model" / "compile.json").exists()
    assert (root / "out" / "cycle-2" / "adapter").exists()
    assert state(root)["extract_links"] == 4 and all(n == 1 for _, _, n in state(root)["steps"])
    # a run that was never killed reaches the same cycle-2 graph: the staked links' times
    # come from the store, not the clock (the snapshot id hashes them and seeds the compile)
    clean = make_root(root / "clean")
    stopped = graft(clean, *CYCLE, "--corpus", str(clean / "corpus.txt"), "--out",
                    str(clean / "out"), fault="2:snapshot")
    assert stopped.returncode == -9, stopped.stderr[-2000:]
    assert snapshots(clean) == snapshots(root)[:2] and len(snapshots(clean)) == 2


def test_report_is_escaped_html(setup):
    from loop.report import write_report
    page = write_report([{"cycle": 1, "approximation_error": 1.5, "proposals": "<script>",
                          "wall_seconds": 2.0}], setup / "r.html")
    text = page.read_text()
    assert "&lt;script&gt;" in text and "<script>" not in text


def test_a_cycle_fits_its_ranker_on_a_fold_and_ranks_with_it(tmp_path):
    from tests.conftest import write_wiki
    particles, links, corpus = write_wiki(tmp_path, pages=50)
    split = graft(tmp_path, "split-holdout", str(links), "--fraction", "0.1", "--seed", "0",
                  "--train", str(tmp_path / "train.jsonl"), "--holdout", str(tmp_path / "h.jsonl"))
    assert split.returncode == 0, split.stderr[-2000:]
    for kind, path in (("particles", particles), ("links", tmp_path / "train.jsonl")):
        assert graft(tmp_path, "ingest", kind, str(path)).returncode == 0
    run = graft(tmp_path, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "10",
                "--auto-accept", "3", "--d", "16", "--layers", "1", "--corpus", str(corpus),
                "--out", str(tmp_path / "out"), "--holdout", str(tmp_path / "h.jsonl"), "--json",
                "--ranker-features", "all")
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout)["cycles"][0]
    assert row["steps"] == ["snapshot", "compile", "tune", "fit", "extract", "review", "eval"]
    assert row["fold_hidden"] == 18 and row["weights"]["mention"] > 0    # texts name the links
    assert row["eval_mrr"] > row["eval_lm_mrr"] and row["accepted"] == 3
    ranker = tmp_path / "out" / "cycle-1" / "ranker.json"
    assert json.loads(ranker.read_text())["features"][-2:] == ["tuned", "tuned_context"]
    assert set(row["ablation"]) == {"text", "text+compiled", "text+tuned", "all"}
    assert all(set(m) >= {"mrr", "hits1", "hits10", "auc", "weights"}
               for m in row["ablation"].values())
    assert "tuned" not in row["ablation"]["text+compiled"]["weights"]
    assert row["ablation"]["all"]["mrr"] == pytest.approx(row["eval_mrr"], abs=1e-4)
    with Store(tmp_path / "g.duckdb", create=False, read_only=True) as store:
        evidence = [json.loads(e) for (e,) in store.query("SELECT evidence FROM proposals")]
    assert all(set(e) >= {"features", "contributions", "head_deltas", "lines"} for e in evidence)
    first = evidence[0]
    assert first["contributions"]["mention"] == pytest.approx(
        row["weights"]["mention"] * first["features"]["mention"], abs=1e-5)
    # the same ranker through `graft eval --ranker`: graft and graft_lm as the cycle saw them
    again = graft(tmp_path, "eval", "--holdout", str(tmp_path / "h.jsonl"), "--model",
                  str(tmp_path / "out" / "cycle-1" / "model"), "--adapter",
                  str(tmp_path / "out" / "cycle-1" / "adapter"), "--ranker", str(ranker),
                  "--methods", "graft,mentions", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    methods = json.loads(again.stdout)["methods"]
    assert set(methods) == {"graft", "graft_lm", "mentions"}
    assert methods["graft"]["mrr"] == pytest.approx(row["eval_mrr"], abs=1e-6)
    assert methods["graft_lm"]["mrr"] == pytest.approx(row["eval_lm_mrr"], abs=1e-6)
    # no model flags: the latest cycle's model, adapter and ranker; --ablate: its table
    plain = graft(tmp_path, "eval", "--holdout", str(tmp_path / "h.jsonl"), "--ablate",
                  "--methods", "graft", "--json")
    assert plain.returncode == 0, plain.stderr[-2000:]
    out = json.loads(plain.stdout)
    assert out["methods"]["graft"]["mrr"] == pytest.approx(row["eval_mrr"], abs=1e-6)
    assert {k: v["mrr"] for k, v in out["ablation"].items()} == pytest.approx(
        {k: v["mrr"] for k, v in row["ablation"].items()}, abs=1e-6)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "What each part adds" in page and "text+compiled" in page
    # a seeded sample of the held-out links, each ranked as in the whole set
    some = graft(tmp_path, "eval", "--holdout", str(tmp_path / "h.jsonl"), "--methods", "graft",
                 "--queries", "3", "--json")
    assert some.returncode == 0, some.stderr[-2000:]
    assert json.loads(some.stdout)["n"] == 3
    # the bench table: each step's seconds and the peak memory the journal recorded
    assert row["peak_rss_gb"] > 0
    table = subprocess.run([sys.executable, "bench/loop_table.py", "--db",
                            str(tmp_path / "g.duckdb")], cwd=REPO, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "| cycle | snapshot s | compile s |" in table.stdout
    assert "| 1: peak GB so far |" in table.stdout


def test_a_cycle_can_fit_its_ranker_on_several_disjoint_folds(tmp_path):
    """--folds 2: two folds, each compiled and tuned, hide disjoint links; the ranker and its
    calibration are fitted on both folds' queries at once."""
    from tests.conftest import write_wiki
    particles, links, corpus = write_wiki(tmp_path, pages=50)
    for kind, path in (("particles", particles), ("links", links)):
        assert graft(tmp_path, "ingest", kind, str(path)).returncode == 0
    run = graft(tmp_path, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "10",
                "--d", "16", "--layers", "1", "--corpus", str(corpus), "--folds", "2",
                "--out", str(tmp_path / "out"), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(run.stdout)["cycles"][0]
    assert row["folds"] == 2 and row["fold_hidden_each"] == [20, 20]
    assert row["fold_hidden"] == 40
    cycle = tmp_path / "out" / "cycle-1"
    one, two = (json.loads((cycle / f / "hidden.json").read_text()) for f in ("fold", "fold-2"))
    assert len(one) == len(two) == 20 and not {tuple(p) for p in one} & {tuple(p) for p in two}
    assert (cycle / "fold-2" / "adapter").is_dir() and (cycle / "fold-2" / "model").is_dir()
    ranker = json.loads((cycle / "ranker.json").read_text())
    assert ranker["fit"]["queries"] == 40                   # both folds' hidden links
    assert ranker["fit"]["calibration"]["pairs"] > 0
    bad = graft(tmp_path, "cycle", "--cycles", "1", "--folds", "10", "--out",
                str(tmp_path / "bad"), "--corpus", str(corpus))
    assert bad.returncode != 0 and "--folds 10 of a share of 0.1" in bad.stderr


def test_a_graph_too_small_to_fold_falls_back_to_the_lift(setup):
    """… and without --corpus, tunes on the particles' own texts in the store."""
    root = setup
    run = graft(root, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "3",
                "--d", "12", "--layers", "2", "--out", str(root / "out"), "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads(run.stdout)["cycles"][0]
    assert "too few" in row["skipped"] or "hidden links" in row["skipped"]
    assert row["ranker"] is None and row["proposals"] == 3
    corpus = (root / "out" / "corpus.txt").read_text()
    assert "cat\nA small domesticated carnivore.\n\n" in corpus and corpus.count("\n\n") == 7
    tuned = json.loads((root / "out" / "cycle-1" / "adapter" / "tune.json").read_text())
    assert tuned["corpus"] == str((root / "out" / "corpus.txt").resolve())
    assert tuned["coverage"]["sequences"] == 2 and tuned["rows"]["train"] > 0


def test_a_note_added_between_cycles_is_a_new_note(tmp_path):
    """Three pages arrive (text, no links) after cycle 1: cycle 2 records them as new notes,
    its fold empties 5% of the linked pages to calibrate them, and extraction gives them
    that map; a page that was already without links at cycle 1 is not new."""
    from loop.cycle import new_pages
    from tests.conftest import pid, write_jsonl, write_wiki
    particles, links, corpus = write_wiki(tmp_path, pages=50)
    rows = [json.loads(x) for x in particles.read_text().splitlines()]
    late = {pid(f"page{i:02d}") for i in (3, 17, 31)}
    write_jsonl(tmp_path / "old.jsonl", [r for r in rows if r["particle"] not in late]
                + [{"particle": pid("tags"), "name": "tags", "text": "see page01 and page02."}])
    write_jsonl(tmp_path / "new.jsonl", [r for r in rows if r["particle"] in late])
    write_jsonl(tmp_path / "links.jsonl", [r for r in map(json.loads,
                                                          links.read_text().splitlines())
                                           if r["from"] not in late])
    for kind, path in (("particles", tmp_path / "old.jsonl"), ("links", tmp_path / "links.jsonl")):
        assert graft(tmp_path, "ingest", kind, str(path)).returncode == 0
    cycle = ["cycle", "--max-steps", "5", "--top-k", "300", "--d", "16", "--layers", "1",
             "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--json"]
    run = graft(tmp_path, *cycle, "--cycles", "1")
    assert run.returncode == 0, run.stderr[-3000:]
    assert graft(tmp_path, "ingest", "particles", str(tmp_path / "new.jsonl")).returncode == 0
    run = graft(tmp_path, *cycle, "--cycles", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "3 new notes without links" in run.stderr
    with Store(tmp_path / "g.duckdb", create=False, read_only=True) as store:
        assert new_pages(store, 1) == [] and new_pages(store, 2) == sorted(late)
        linkless = {n: {p for (p,) in store.query(
            "SELECT particle FROM cycle_linkless WHERE cycle = $n", {"n": n})} for n in (1, 2)}
        detail = {(c, s): json.loads(d) for c, s, d in store.query(
            "SELECT cycle, step, CAST(detail AS VARCHAR) FROM cycle_steps")}
        new_props = store.query("SELECT count(*) FROM proposals WHERE cycle = 2 AND src IN "
                                "(SELECT particle FROM cycle_linkless WHERE cycle = 2 AND "
                                "particle <> $t)", {"t": pid("tags")})[0][0]
    assert linkless == {1: {pid("tags")}, 2: {pid("tags")} | late}
    assert detail[(1, "fit")]["fold_pages"] == 0.0 and detail[(2, "fit")]["fold_pages"] == 0.05
    # cycle 2 weighed cycle 1's ranker against its new fit and extracts with the better
    kept = detail[(2, "fit")]["incumbent"]
    assert kept["from_cycle"] == 1 and "incumbent" not in detail[(1, "fit")]
    rankers = [json.loads((tmp_path / "out" / f"cycle-{n}" / "ranker.json").read_text())
               for n in (1, 2)]
    assert (rankers[0]["weights"] == rankers[1]["weights"]) == kept["kept"]
    assert rankers[1]["fit"]["cycle"] == (1 if kept["kept"] else 2)
    assert detail[(1, "extract")]["new_notes"] == 0 and detail[(2, "extract")]["new_notes"] == 3
    assert new_props > 0                                     # the new notes get proposals
