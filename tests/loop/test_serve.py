"""`graft serve`: the workbench's API over a real store (the typed graph, compiled, with
proposals and a cycle journal), its safety checks, the CLI and the page deciding at once,
and one real browser session."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from compiler.compile import compile_snapshot
from compiler.types import CompileConfig
from graph import sql_loop
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from graph.store import Store
from loop.extract import Proposal
from loop.review import add_proposals
from loop.serve import check_bind, create_app
from tests.conftest import REPO, ingest_fixture, link, pid, write_jsonl

EVIL = "<script>alert(1)</script>"
EVIL_TEXT = "Looks <img src=x onerror=alert(2)> harmless & \"quoted\"."
BASE = "http://127.0.0.1:8765"
NAMES = ["cat", "dog", "mammal", "animal", "tail", "paw"]
SHOTS = os.environ.get("GRAFT_SHOTS")   # also copy the screenshots here (they stay in tmp_path)


def proposal(src: str, dst: str, score: float, lines=(), **evidence) -> Proposal:
    return Proposal(src=pid(src), dst=pid(dst), score=score, confidence=min(1.0, score / 4),
                    tuned=-1.0, compiled=-2.0, head=1, semcon=pid("part-of"),
                    evidence={"lines": [list(x) for x in lines], "head_deltas": [0.1, 0.8, 0.0],
                              **evidence})


def proposals() -> list[Proposal]:
    """tail → dog (the corpus says so), the evil particle → dog, and every other unlinked
    ordered pair of the typed graph's animals, scores falling."""
    rows = [proposal("cat", "dog", 3.0, [(7, "The cat chased the dog around the garden.")]),
            proposal("tail", "dog", 2.5, [(8, "A tail is part of a dog as well, and a dog wags "
                                             "it when it is happy.")],
                     features={"mention": 1.0, "indegree": 0.69, "tuned": -1.0},
                     contributions={"mention": 11.7, "indegree": 0.2, "tuned": -0.04}),
            proposal(EVIL, "dog", 2.0, [(9, f"{EVIL} chases the dog {EVIL_TEXT}")],
                     note="<b>not bold</b>")]
    taken = {(p.src, p.dst) for p in rows}
    score = 1.9
    for a in NAMES:
        for b in NAMES:
            if a != b and (pid(a), pid(b)) not in taken:
                rows.append(proposal(a, b, score))
                score -= 0.05
    return rows


def journal(store: Store, model: Path) -> None:
    """Two cycles' steps as `graft cycle` records them (cycle 2 without eval)."""
    for n, err in ((1, 2.31), (2, 2.12)):
        steps = {"compile": {"model": str(model), "certificate": True},
                 "tune": {"approximation_error": err, "tuned_heldout_loss": err - 0.4,
                          "graph_mrr_after": 0.5},
                 "extract": {"proposals": 10 * n, "new": 10 * n},
                 "review": {"auto_accepted": n, "accepted": n, "staked": n}}
        if n == 1:
            steps["eval"] = {"eval": {"n": 5, "methods": {"graft": {"mrr": 0.41, "hits10": 0.8}}}}
        for step, detail in steps.items():
            store.execute(sql_loop.STEP_RECORD, {"cycle": n, "step": step,
                                                 "detail": json.dumps({**detail, "seconds": 1.5})})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The typed graph plus a particle named like a script tag, compiled, with proposals."""
    root = tmp_path_factory.mktemp("serve")
    write_jsonl(root / "evil.particles.jsonl", [{"name": EVIL, "text": EVIL_TEXT}])
    write_jsonl(root / "evil.links.jsonl", [link(EVIL, "cat", time=9)])
    with Store(root / "g.duckdb") as store:
        ingest_fixture(store, "typed")
        ingest_particles(store, [root / "evil.particles.jsonl"])
        ingest_links(store, [root / "evil.links.jsonl"])
        compile_snapshot(store, take_snapshot(store), root / "ckpt",
                         CompileConfig(d=12, heads=3, layers=2, check_determinism=False))
        add_proposals(store, proposals(), cycle=1, model=str(root / "ckpt"), adapter=None)
        journal(store, root / "ckpt")
    return root


@pytest.fixture
def db(built, tmp_path) -> Path:
    shutil.copy(built / "g.duckdb", tmp_path / "g.duckdb")
    return tmp_path / "g.duckdb"


def client(db: Path, token: str | None = None, **kw) -> TestClient:
    return TestClient(create_app(db, token, **kw), base_url=BASE)


def csrf(c: TestClient) -> dict:
    """The headers the page sends with a decision: its CSRF token, read from the page."""
    page = c.get("/")
    assert page.status_code == 200, page.text
    token = re.search(r'<meta name="csrf" content="([^"]+)">', page.text).group(1)
    return {"X-CSRF-Token": token, "Origin": BASE}


def ids_by_pair(c: TestClient) -> dict[tuple[str, str], int]:
    rows = c.get("/api/proposals", params={"status": "all", "limit": 500}).json()["proposals"]
    return {(r["src_name"], r["dst_name"]): r["id"] for r in rows}


def extract_links(db: Path) -> list[tuple]:
    with Store(db, create=False, read_only=True) as store:
        return store.query("SELECT src, dst, count(*) FROM cyberlinks WHERE origin = 'extract' "
                           "GROUP BY src, dst ORDER BY src, dst")


# -- the API -------------------------------------------------------------------------------
def test_queue_then_accept_and_reject_as_graft_review_does(db):
    c = client(db)
    data = c.get("/api/proposals").json()
    rows = data["proposals"]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert data["counts"] == {"pending": len(proposals())}
    tail_dog = next(r for r in rows if (r["src_name"], r["dst_name"]) == ("tail", "dog"))
    assert tail_dog["src_aliases"] == ["tails"] and tail_dog["semcon_name"] == "part-of"
    assert tail_dog["evidence"]["lines"][0][0] == 8 and len(tail_dog["evidence"]["head_deltas"]) == 3
    other = rows[-1]
    got = c.post("/api/decide", json={"accept": [tail_dog["id"]], "reject": [other["id"]],
                                      "reviewer": "ann"}, headers=csrf(c))
    assert got.json() == {"decided": sorted([tail_dog["id"], other["id"]]), "staked": 1}
    with Store(db, create=False, read_only=True) as store:
        median = store.scalar("SELECT median(amount) FROM cyberlinks WHERE origin = 'ingest'")
        assert store.query("SELECT neuron, origin, cycle, amount FROM cyberlinks WHERE src = ? "
                           "AND dst = ?", [pid("tail"), pid("dog")]) == [
            ("graft-extractor", "extract", 1, max(1, round(tail_dog["confidence"] * median)))]
        assert dict((i, (st, who)) for i, st, who in store.query(
            "SELECT id, status, reviewer FROM proposals WHERE status <> 'pending'")) == {
            tail_dog["id"]: ("accepted", "ann"), other["id"]: ("rejected", "ann")}
    again = c.post("/api/decide", json={"accept": [tail_dog["id"]]}, headers=csrf(c))
    assert again.json() == {"decided": [], "staked": 0}
    unknown = c.post("/api/decide", json={"accept": [99999]}, headers=csrf(c))
    assert unknown.status_code == 400 and "no proposal with id 99999" in unknown.json()["error"]


def test_accept_all_above_a_threshold(db):
    c = client(db)
    above = c.get("/api/above", params={"threshold": 2.0}).json()["ids"]
    assert len(above) == 3                                 # cat→dog, tail→dog, evil→dog
    got = c.post("/api/decide", json={"accept_above": 2.0}, headers=csrf(c)).json()
    assert got == {"decided": sorted(above), "staked": 3}
    assert len(extract_links(db)) == 3


def test_particle_page_has_text_links_focus_and_pending(db):
    c = client(db)
    d = c.get("/api/particle", params={"ref": "Dogs"}).json()      # by alias, any case
    assert d["particle"] == pid("dog") and d["text"] == "A domesticated descendant of the wolf."
    assert 0 < d["focus"] < 1 and d["focus_rank"] >= 1 and d["out_degree"] >= 1
    assert {(l["out"], l["other_name"]) for l in d["links"]} >= {(True, "mammal"), (False, "paw")}
    assert {r["src_name"] for r in d["proposals"] if r["dst"] == pid("dog")} >= {"cat", "tail", EVIL}
    assert all(pid("dog") in (r["src"], r["dst"]) for r in d["proposals"])
    assert c.get("/api/particle", params={"ref": "no such thing"}).status_code == 404


def test_why_traces_the_pair_and_says_when_no_checkpoint_is_known(db, built, tmp_path):
    c = client(db)                        # the checkpoint comes from the cycle journal
    d = c.get("/api/why", params={"p": pid("tail"), "q": pid("dog")}).json()
    assert d["available"] and d["model"] == str(built / "ckpt")
    z = d["trace"]["zero_layer"]
    assert z["links"] and z["links"][0]["src"] == "tail" and z["neurons"][0]["neuron"] == "fixture"
    bare = tmp_path / "bare.duckdb"
    with Store(bare) as store:
        ingest_fixture(store, "typed")
    d = client(bare).get("/api/why", params={"p": "tail", "q": "dog"}).json()
    assert not d["available"] and "graft serve --model DIR" in d["message"]
    d = client(bare, model_dir=built / "ckpt").get("/api/why", params={"p": "tail", "q": "dog"})
    assert d.status_code == 400 and "does not hold" in d.json()["error"]   # another snapshot


def test_cycles_metrics(db):
    d = client(db).get("/api/cycles").json()
    assert [(r["cycle"], r["approximation_error"], r["proposals"], r["accepted"], r.get("eval_mrr"))
            for r in d["cycles"]] == [(1, 2.31, 10, 1, 0.41), (2, 2.12, 20, 2, None)]


# -- safety --------------------------------------------------------------------------------
def test_names_and_text_from_the_store_are_escaped(db):
    c = client(db)
    for response in (c.get("/api/proposals"), c.get("/api/particle", params={"ref": EVIL})):
        assert response.status_code == 200
        assert "<script>" not in response.text and "<img" not in response.text
        assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in response.text
    d = c.get("/api/particle", params={"ref": EVIL}).json()
    assert (d["name"], d["text"]) == (EVIL, EVIL_TEXT)    # escaped on the wire, exact in JSON
    page = c.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = (REPO / "loop" / "static" / "app.js").read_text()
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script)


def test_state_changes_need_post_json_csrf_and_same_origin(db):
    c = client(db)
    ok = csrf(c)
    body = {"accept": [1]}
    assert c.post("/api/decide", json=body).status_code == 403                 # no CSRF token
    assert c.post("/api/decide", json=body, headers={**ok, "X-CSRF-Token": "x"}).status_code == 403
    assert c.post("/api/decide", json=body,
                  headers={**ok, "Origin": "http://evil.example"}).status_code == 403
    assert c.post("/api/decide", data={"accept": "1"}, headers=ok).status_code == 415
    assert c.get("/api/decide", params=body).status_code == 405                # GET changes nothing
    rebound = TestClient(c.app, base_url="http://evil.example:8765")
    assert rebound.get("/api/proposals").status_code == 403                    # DNS rebinding
    assert c.get("/api/proposals").json()["counts"] == {"pending": len(proposals())}


def test_a_token_guards_every_request(db):
    c = client(db, token="s3cret")
    assert c.get("/api/proposals").status_code == 401
    assert c.get("/").status_code == 401
    assert c.get("/api/proposals", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/proposals", headers={"X-Graft-Token": "wrong"}).status_code == 401
    first = c.get("/", params={"token": "s3cret"}, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert "httponly" in first.headers["set-cookie"].lower()
    assert c.get("/api/proposals").status_code == 200                          # the cookie now
    assert c.post("/api/decide", json={"accept": [1]}).status_code == 403      # cookie: CSRF too
    api = TestClient(c.app, base_url=BASE, headers={"Authorization": "Bearer s3cret"})
    assert api.post("/api/decide", json={"accept": [1]}).json()["decided"] == [1]


def test_a_public_host_without_a_token_is_refused_at_start(db):
    run = subprocess.run([sys.executable, "-m", "loop.cli", "--db", str(db), "serve", "--host",
                          "0.0.0.0", "--port", "1"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "GRAFT_TOKEN": ""})
    assert run.returncode == 1
    assert "refusing to serve on 0.0.0.0 without --token" in run.stderr
    check_bind("0.0.0.0", "T")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)


# -- the CLI and the page at once -----------------------------------------------------------
def test_cli_and_page_decide_at_once_and_nothing_is_lost(db):
    """Three `graft review` processes and the page decide overlapping sets while each
    holds the file in turn: every decision lands once and every accepted proposal is
    staked once."""
    c = client(db, wait=60)
    headers = csrf(c)
    ids = sorted(ids_by_pair(c).values())
    cli_sets = [ids[0:6], ids[6:12], ids[12:18]]
    page_ids = ids[3:9] + ids[18:26]                     # overlaps two CLI sets
    rejected = ids[26:29]
    env = {**os.environ, "GRAFT_LOCK_WAIT": "60"}
    procs = [subprocess.Popen([sys.executable, "-m", "loop.cli", "--db", str(db), "review",
                               "--accept", *map(str, s), "--reviewer", f"cli{k}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k, s in enumerate(cli_sets)]
    results = []
    reject = threading.Thread(target=lambda: results.append(c.post(
        "/api/decide", json={"reject": rejected, "reviewer": "page"}, headers=headers)))
    reject.start()
    for i in page_ids:                   # one request each, spread over the CLI processes' run
        results.append(c.post("/api/decide", json={"accept": [i], "reviewer": "page"},
                              headers=headers))
        c.get("/api/proposals")
        time.sleep(0.15)
    reject.join()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    accepted = set().union(*map(set, cli_sets), page_ids)
    with Store(db, create=False, read_only=True) as store:
        status = dict(store.query("SELECT id, status FROM proposals"))
        staked = store.query("SELECT staked FROM proposals WHERE status = 'accepted'")
        links = store.scalar("SELECT count(*) FROM cyberlinks WHERE origin = 'extract'")
    assert {i for i, s in status.items() if s == "accepted"} == accepted
    assert {i for i, s in status.items() if s == "rejected"} == set(rejected)
    assert links == len(accepted) and None not in {s for (s,) in staked}
    assert len({s for (s,) in staked}) == len(accepted)
    assert all(n == 1 for *_, n in extract_links(db))


# -- a real browser ------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(db):
    """A real uvicorn server on a free loopback port, with a token, in a thread."""
    uvicorn = pytest.importorskip("uvicorn")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(db, "tok3n"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_curator_accepts_a_proposal_in_chromium(served, db, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install '.[dev]'")
    rows = TestClient(create_app(db), base_url=BASE).get("/api/proposals").json()["proposals"]
    pages = list(dict.fromkeys(r["src_name"] for r in rows))   # the queue: a page at a time
    order = [(r["src_name"], r["dst_name"]) for page in pages for r in rows
             if r["src_name"] == page]
    steps = order.index(("tail", "dog"))
    dialogs, shots = [], tmp_path / "shots"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{served}/?token=tok3n")
        page.wait_for_selector("#queue tr.sel")
        assert page.url == f"{served}/"                      # the token left the address bar
        page.screenshot(path=shots / "1-queue.png")
        for _ in range(steps):
            page.keyboard.press("j")
        assert page.text_content("#detail h2") == "tail → dog"
        assert page.locator("#queue tr.page").count() == len(pages)
        assert "relation" not in page.text_content("#queue tr")     # one relation: no column
        page.keyboard.press("y")
        page.wait_for_selector("#why figure svg rect")
        assert "weight × value" in page.text_content("#detail")     # the ranker's chart
        page.screenshot(path=shots / "2-why.png", full_page=True)
        page.keyboard.press("a")
        page.wait_for_selector("#status.ok")     # (the page's CSP forbids wait_for_function's eval)
        assert "1 link(s) staked" in page.text_content("#status")
        assert page.text_content("#detail h2") != "tail → dog"      # the queue moved on
        page.screenshot(path=shots / "3-accepted.png")
        page.goto(f"{served}/#/particle/{pid(EVIL)}")
        page.wait_for_selector("#particle-name")
        assert page.text_content("#particle-name") == EVIL
        assert page.text_content("#particle-text") == EVIL_TEXT
        page.screenshot(path=shots / "4-particle.png")
        page.goto(f"{served}/#/cycles")
        page.wait_for_selector("#cycle-charts svg polyline")
        page.screenshot(path=shots / "5-cycles.png", full_page=True)
        injected = page.evaluate("document.querySelectorAll('main script, main img').length")
        browser.close()
    assert dialogs == [] and injected == 0
    assert extract_links(db) == [(pid("tail"), pid("dog"), 1)]
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        for shot in sorted(shots.iterdir()):
            shutil.copy(shot, Path(SHOTS) / shot.name)


# -- the new-note view -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vault_cycle(tmp_path_factory):
    """An Obsidian vault made of the toy wiki (pages link their targets, name decoys),
    imported, and one cycle run on it."""
    from tests.conftest import write_wiki
    from tests.loop.test_cycle import graft
    root = tmp_path_factory.mktemp("vault")
    particles, links, _ = write_wiki(root, pages=50)
    vault = root / "vault"
    vault.mkdir()
    by_id = {r["particle"]: r for r in map(json.loads, particles.read_text().splitlines())}
    targets: dict[str, list[str]] = {}
    for row in map(json.loads, links.read_text().splitlines()):
        targets.setdefault(row["from"], []).append(by_id[row["to"]]["name"])
    for p, row in by_id.items():
        text = row["text"]
        for name in targets.get(p, []):
            text = text.replace(f"see {name}.", f"see [[{name}]].")
        (vault / f"{row['name']}.md").write_text(text + "\n")
    assert graft(root, "import", "vault", str(vault), "--flavor", "obsidian").returncode == 0
    run = graft(root, "cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "50", "--d",
                "16", "--layers", "1", "--curator", "--out", str(root / "out"))
    assert run.returncode == 0, run.stderr[-3000:]
    return root, vault


def test_a_curator_writes_a_new_note_and_accepts_a_link_in_chromium(vault_cycle, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install '.[dev]'")
    uvicorn = pytest.importorskip("uvicorn")
    root, vault = vault_cycle
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(root / "g.duckdb"), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    shots = tmp_path / "shots"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#/note")
            page.wait_for_selector("#note-text")
            page.fill("#note-name", "idea")
            page.fill("#note-text", "Thinking about page07 and page11 today.\n")
            page.click("#suggest")
            page.wait_for_selector("#suggestion-list li")
            first = page.text_content("#suggestion-list li strong")
            assert first in ("page07", "page11")
            page.screenshot(path=shots / "6-new-note.png", full_page=True)
            page.click("#suggestion-list li button.accept")
            page.wait_for_selector("#status.ok")
            assert f"wrote [[{first}]] into idea.md" in page.text_content("#status")
            assert f"[[{first}]]" in page.input_value("#note-text")
            page.screenshot(path=shots / "7-accepted.png", full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    note = (vault / "idea.md").read_text()
    assert note == "Thinking about page07 and page11 today.\n".replace(first, f"[[{first}]]")
    with Store(root / "g.duckdb", create=False, read_only=True) as store:
        rows = store.query("SELECT status, reviewer, staked IS NOT NULL FROM proposals "
                           "WHERE cycle = 0")
    assert rows == [("accepted", "curator", True)]
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        for shot in sorted(shots.iterdir()):
            shutil.copy(shot, Path(SHOTS) / shot.name)
