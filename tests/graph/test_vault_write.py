"""The vault round trip (graph/vault_write.py): accepted links written into the notes at
their first plain mention and nowhere else, byte for byte; idempotent; the changed-note guard;
dry runs; atomic writes; and re-imports that add what changed and withdraw what a curator
removed, which the next compile honours."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graph.ids import particle_of_text
from graph.ingest_rows import import_vault
from graph.snapshot import adjacency, take_snapshot
from graph.store import Store
from graph.vault_write import apply_vault, first_mention, protected
from loop.extract import Proposal
from loop.review import add_proposals, decide

REPO = Path(__file__).resolve().parents[2]
T = 1_700_000_000
UUID = "6650a1b2-0000-4000-8000-000000000001"

OBSIDIAN = {
    # every syntax the importer reads, each naming a target where a link must never go
    "Tea.md": (
        "---\r\naliases: [camellia]\r\ntags: [drink]\r\nnote: about kyusu\r\n---\r\n"
        "# Kyusu and tea\r\n"
        "Brewed in a `kyusu` or [[Gaiwan]]; see ![[Kettle]] and #kyusu/old.\r\n"
        "%% kyusu in a comment %%\r\n"
        "```\r\nkyusu = 1\r\n```\r\n"
        "A [[Kettle|kyusu-like kettle]] is not one. https://example.com/kyusu\r\n"
        "Use a Kyusu for green tea. ^block-1\r\n"
        "Later kyusu again.\r\n"),
    "Kyusu.md": "---\naliases: [side-handle pot]\n---\nA side-handle pot.\n",
    "Gaiwan.md": "A lidded bowl. Not a kettle.\n",
    "Kettle.md": "Boils water",
}
LOGSEQ = {
    "Tea.md": (
        "alias:: camellia\ntags:: drink\n\n"
        "- Brewed in a `kyusu` or [[Gaiwan]]; {{embed [[Kettle]]}} #green-tea\n"
        "  id:: " + UUID + "\n"
        "- ```\n  kyusu = 1\n  ```\n"
        "- ((" + UUID + ")) and a side-handle pot for sencha.\n"
        "- A kettle heats the water.\n"),
    "Kyusu.md": "alias:: side-handle pot\n\n- A pot.\n",
    "Gaiwan.md": "- A lidded bowl.\n",
    "Kettle.md": "- Boils water.\n",
}


def write(root: Path, flavor: str, files: dict[str, str]) -> Path:
    folder = root / flavor
    pages = folder / "pages" if flavor == "logseq" else folder
    pages.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (pages / name).write_bytes(text.encode("utf-8"))
    return folder


def pid(name: str) -> str:
    return particle_of_text(name)


def accept(store: Store, pairs: list[tuple[str, str]], reviewer: str = "curator") -> list[int]:
    """Proposals of the named pairs, accepted and staked through the review path."""
    add_proposals(store, [Proposal(pid(s), pid(d), 1.0 - i / 10, 0.9 - i / 10, 0.0, 0.0, None,
                                   None, {}) for i, (s, d) in enumerate(pairs)], 1, "model", None)
    ids = [i for (i,) in store.query("SELECT id FROM proposals WHERE status = 'pending' "
                                     "ORDER BY id")]
    decide(store, accept=ids, reviewer=reviewer, at=T + 5)
    return ids


def snapshot_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.md"))}


@pytest.fixture
def obsidian(tmp_path):
    folder = write(tmp_path, "obsidian", OBSIDIAN)
    store = Store(tmp_path / "g.duckdb")
    import_vault(store, folder, "obsidian", time=T)
    yield store, folder
    store.close()


def test_only_plain_text_is_a_mention():
    text = OBSIDIAN["Tea.md"]
    found = first_mention(text, "obsidian", ["kyusu"])
    assert text[found[0]:found[1]] == "Kyusu" and text[:found[0]].endswith("Use a ")
    spans = protected(text, "obsidian")
    for word in ("note: about kyusu", "# Kyusu", "`kyusu`", "#kyusu/old", "kyusu = 1",
                 "%% kyusu", "kyusu-like", "example.com/kyusu"):
        at = text.index(word) + word.lower().index("kyusu")
        assert any(s <= at < e for s, e in spans), word


def test_accepted_links_land_on_their_first_mention_and_nowhere_else(obsidian):
    store, folder = obsidian
    before = snapshot_of(folder)
    accept(store, [("tea", "kyusu"), ("gaiwan", "kettle"), ("kettle", "tea"),
                   ("tea", "gaiwan")])
    results = {r.source: r for r in apply_vault(store, folder, "obsidian")}
    after = snapshot_of(folder)
    assert after["Tea.md"] == before["Tea.md"].replace(
        b"Use a Kyusu for", b"Use a [[Kyusu]] for")           # CRLF and the rest untouched
    assert after["Gaiwan.md"] == b"A lidded bowl. Not a [[Kettle|kettle]].\n"
    assert after["Kettle.md"] == before["Kettle.md"]           # never mentions tea: listed
    assert results["Kettle.md"].listed and not results["Kettle.md"].written
    assert results["Tea.md"].already                           # [[Gaiwan]] was there
    assert after["Kyusu.md"] == before["Kyusu.md"]
    assert apply_vault(store, folder, "obsidian") and snapshot_of(folder) == after  # twice
    written = store.query("SELECT source, how FROM vault_writes ORDER BY source")
    assert written == [("Gaiwan.md", "mention"), ("Tea.md", "mention")]


def test_related_section_for_unmentioned_links(obsidian):
    store, folder = obsidian
    accept(store, [("kettle", "tea"), ("kettle", "gaiwan")])
    apply_vault(store, folder, "obsidian", related="Related")
    assert (folder / "Kettle.md").read_text() == (
        "Boils water\n\n## Related\n- [[Tea]]\n- [[Gaiwan]]\n")
    apply_vault(store, folder, "obsidian", related="Related")
    assert (folder / "Kettle.md").read_text().count("[[Tea]]") == 1


def test_a_note_changed_since_import_is_skipped_unless_forced(obsidian):
    store, folder = obsidian
    accept(store, [("gaiwan", "kettle")])
    (folder / "Gaiwan.md").write_text("A lidded bowl, edited. Not a kettle.\n")
    [result] = apply_vault(store, folder, "obsidian")
    assert "changed since graft last read it" in result.skipped
    assert (folder / "Gaiwan.md").read_text() == "A lidded bowl, edited. Not a kettle.\n"
    apply_vault(store, folder, "obsidian", force=True)
    assert "[[Kettle|kettle]]" in (folder / "Gaiwan.md").read_text()


def test_dry_run_writes_nothing(obsidian):
    store, folder = obsidian
    accept(store, [("tea", "kyusu")])
    before = snapshot_of(folder)
    [result] = apply_vault(store, folder, "obsidian", dry_run=True)
    assert "-Use a Kyusu for green tea. ^block-1" in result.diff
    assert "+Use a [[Kyusu]] for green tea. ^block-1" in result.diff
    assert snapshot_of(folder) == before
    assert store.scalar("SELECT count(*) FROM vault_writes") == 0


def test_logseq_syntax_and_its_protected_spans(tmp_path):
    folder = write(tmp_path, "logseq", LOGSEQ)
    before = snapshot_of(folder)
    with Store(tmp_path / "g.duckdb") as store:
        import_vault(store, folder, "logseq", time=T)
        accept(store, [("tea", "kyusu"), ("tea", "kettle"), ("gaiwan", "kyusu")])
        apply_vault(store, folder, "logseq", related="Related")
    after = snapshot_of(folder)
    tea = before["pages/Tea.md"].decode()
    assert after["pages/Tea.md"].decode() == tea.replace(
        "and a side-handle pot for", "and a [[side-handle pot]] for")   # an alias: its name
    # the embed links Kettle already: untouched; Gaiwan never names kyusu: a related block
    assert after["pages/Gaiwan.md"].decode() == "- A lidded bowl.\n- Related\n\t- [[Kyusu]]\n"
    with Store(tmp_path / "g.duckdb") as store:
        import_vault(store, folder, "logseq", time=T + 10)
        links = set(store.query("SELECT src, dst, origin FROM cyberlinks WHERE valence = 1"))
    assert {(pid("tea"), pid("kyusu"), "ingest"), (pid("gaiwan"), pid("kyusu"), "ingest")} <= links


def test_round_trip_gives_accepted_links_as_ingested_ones(obsidian):
    store, folder = obsidian
    [proposal] = accept(store, [("tea", "kyusu")])
    apply_vault(store, folder, "obsidian")
    result = import_vault(store, folder, "obsidian", time=T + 10)
    assert (result["changed_notes"], result["added"], result["withdrawn"]) == (1, 1, 0)
    rows = store.query("SELECT origin, neuron FROM cyberlinks WHERE src = $s AND dst = $d "
                       "ORDER BY seq", {"s": pid("tea"), "d": pid("kyusu")})
    assert rows == [("extract", "graft-extractor"), ("ingest", "vault")]
    again = import_vault(store, folder, "obsidian", time=T + 20)
    assert again["skipped"] == "no note changed since the last import"
    from graph.sql_vault import WRITES_OF_PAIR
    assert [r[0] for r in store.query(WRITES_OF_PAIR, {"src": pid("tea"),
                                                       "dst": pid("kyusu")})] == [proposal]


def test_a_link_a_curator_removed_is_withdrawn_and_the_compile_no_longer_sees_it(obsidian):
    store, folder = obsidian
    pair = (pid("tea"), pid("gaiwan"))

    def weight():
        adj = adjacency(store, take_snapshot(store))
        pos = adj.position()
        return adj.matrix[pos[pair[0]], pos[pair[1]]]

    assert weight() == 1.0
    tea = (folder / "Tea.md").read_bytes()
    (folder / "Tea.md").write_bytes(tea.replace(b"or [[Gaiwan]];", b"or a gaiwan;"))
    result = import_vault(store, folder, "obsidian", time=T + 10)
    assert (result["changed_notes"], result["withdrawn"], result["added"]) == (1, 1, 0)
    assert weight() == 0.0
    (folder / "Tea.md").write_bytes(tea)                        # linked again: counts again
    import_vault(store, folder, "obsidian", time=T + 20)
    assert weight() == 1.0
    (folder / "Gaiwan.md").unlink()                             # a deleted note's links go
    import_vault(store, folder, "obsidian", time=T + 30)
    from graph.sql import LINKS_NOW_FROM
    import pyarrow as pa
    store.register("id_view", pa.table({"particle": [pid("gaiwan")]}))
    assert store.query(LINKS_NOW_FROM, {"max_seq": 10**9, "neuron": "vault"}) == []


def test_a_killed_apply_leaves_each_note_old_or_new(tmp_path):
    folder = write(tmp_path, "obsidian", OBSIDIAN)
    with Store(tmp_path / "g.duckdb") as store:
        import_vault(store, folder, "obsidian", time=T)
        accept(store, [("tea", "kyusu"), ("gaiwan", "kettle")])
    before = snapshot_of(folder)
    env = {**os.environ, "GRAFT_FAULT": "vault:1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "loop.cli", "--db", str(tmp_path / "g.duckdb"), "vault",
           "apply", str(folder), "--flavor", "obsidian", "--json"]
    killed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert killed.returncode == -9
    middle = snapshot_of(folder)
    assert sum(middle[k] != before[k] for k in before) == 1    # one note new, the rest old
    assert not list(folder.glob(".*.tmp"))
    env.pop("GRAFT_FAULT")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert sum(len(n["written"]) for n in out["notes"]) == 1   # the rest, once
    after = snapshot_of(folder)
    assert sum(after[k] != before[k] for k in before) == 2


def test_trace_shows_the_proposal_behind_a_written_link(tmp_path):
    folder = write(tmp_path, "obsidian", OBSIDIAN)
    db = tmp_path / "g.duckdb"
    with Store(db) as store:
        import_vault(store, folder, "obsidian", time=T)
        [proposal] = accept(store, [("tea", "kyusu")])
        apply_vault(store, folder, "obsidian")
        import_vault(store, folder, "obsidian", time=T + 10)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    graft = [sys.executable, "-m", "loop.cli", "--db", str(db)]
    run = subprocess.run(graft + ["compile", "--out", str(tmp_path / "ckpt"), "--d", "4",
                                  "--no-det-check"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run(graft + ["trace", str(tmp_path / "ckpt"), "--link", "tea", "kyusu"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"proposal {proposal} of cycle 1: accepted by curator" in run.stdout
    assert "written into Tea.md (mention)" in run.stdout
    assert "vault" in run.stdout and "graft-extractor" in run.stdout   # both records


@pytest.mark.parametrize("flavor", ["obsidian", "logseq"])
def test_import_cycle_accept_apply_reimport(tmp_path, flavor):
    """The whole trip with a real cycle: what the curator accepted comes back as the vault's
    own links, and every note differs from before by link markup alone."""
    import re
    from tests.conftest import write_wiki
    particles, links, _ = write_wiki(tmp_path, pages=40)
    rows = [json.loads(line) for line in particles.read_text().splitlines()]
    by_id = {r["particle"]: r["name"] for r in rows}
    targets: dict[str, list[str]] = {}
    for row in map(json.loads, links.read_text().splitlines()):
        targets.setdefault(by_id[row["from"]], []).append(by_id[row["to"]])
    files = {}
    for r in rows:                   # pages link half their targets, name the rest plainly
        text = r["text"]
        for name in targets.get(r["name"], [])[::2]:
            text = text.replace(f"see {name}.", f"see [[{name}]].")
        files[f"{r['name']}.md"] = ("- " + text + "\n") if flavor == "logseq" else text + "\n"
    files.update(OBSIDIAN if flavor == "obsidian" else LOGSEQ)   # every syntax the importer reads
    folder = write(tmp_path, flavor, files)
    before = snapshot_of(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    db = tmp_path / "g.duckdb"

    def graft(*args):
        run = subprocess.run([sys.executable, "-m", "loop.cli", "--db", str(db), *args],
                             cwd=REPO, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stdout

    graft("import", "vault", str(folder), "--flavor", flavor)
    graft("cycle", "--cycles", "1", "--max-steps", "5", "--top-k", "30", "--d", "16",
          "--layers", "1", "--curator", "--out", str(tmp_path / "out"))
    with Store(db) as store:
        ids = [i for (i,) in store.query("SELECT id FROM proposals ORDER BY score DESC, id")]
        decide(store, accept=ids)
        accepted = set(store.query("SELECT src, dst FROM proposals WHERE status = 'accepted'"))
    out = json.loads(graft("vault", "apply", str(folder), "--flavor", flavor, "--json"))
    written = sum(len(n["written"]) for n in out["notes"])
    assert written > 0
    after = snapshot_of(folder)

    def plain(data: bytes) -> str:   # the text with link markup reduced to what it shows
        text = data.decode()
        text = re.sub(r"\[([^\[\]]*)\]\(\[\[[^\[\]]*\]\]\)", r"\1", text)
        text = re.sub(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", text)
        return re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", text)

    assert sum(after[k] != before[k] for k in before) == len({n["source"] for n in out["notes"]
                                                              if n["written"]})
    assert all(plain(after[k]) == plain(before[k]) for k in before)
    graft("import", "vault", str(folder), "--flavor", flavor)
    with Store(db, create=False, read_only=True) as store:
        vault_links = set(store.query("SELECT src, dst FROM cyberlinks WHERE origin = 'ingest' "
                                      "AND valence = 1"))
        by_note = set(store.query("SELECT p.src, p.dst FROM vault_writes w JOIN proposals p "
                                  "ON p.id = w.proposal"))
    assert len(by_note) == written and by_note <= accepted and by_note <= vault_links
