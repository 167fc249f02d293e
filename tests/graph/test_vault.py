"""Tests for graph/vault.py: syntax, names, aliases, counts, errors, and Logseq ≡ Obsidian."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from graph.errors import GraftError, IngestError
from graph.ids import particle_of_text
from graph.vault import Vault, normalise_name, read_vault

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
T = 1_700_000_000
UUID = "6650a1b2-0000-4000-8000-000000000001"


def read(tmp_path: Path, flavor: str, files: dict[str, str], **kwargs) -> Vault:
    """Write `files` (Logseq ones under pages/ unless under journals/) and read them back."""
    root = tmp_path / flavor
    (root / "pages").mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        if flavor == "logseq" and not rel.startswith("journals/"):
            rel = f"pages/{rel}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return read_vault(root, flavor, **({"time": T} | kwargs))


def page(vault: Vault, name: str) -> dict:
    [found] = [p for p in vault.particles if p["name"] == name]
    return found


def edges(vault: Vault) -> dict[tuple[str, str, str], int]:
    """Links by (from name, to name, token) → amount."""
    names = {p["particle"]: p["name"] for p in vault.particles}
    return {(names[r["from"]], names[r["to"]], r["token"]): r["amount"] for r in vault.links}


def test_normalise_name():
    # "e" + combining acute is NFC-composed; nbsp and tabs collapse to one space.
    assert normalise_name("  Cafe\u0301\u00a0 Au\tLAIT ") == "caf\u00e9 au lait"
    assert normalise_name("A/B") == "a/b"


def test_logseq_names_from_files_and_title(tmp_path):
    vault = read(tmp_path, "logseq", {
        "teaware___Kyusu.md": "- x", "what%3F.md": "- y", "zz.md": "title:: Real  Name\n\n- z"})
    assert [p["name"] for p in vault.particles] == ["real name", "teaware/kyusu", "what?"]
    assert page(vault, "teaware/kyusu")["title"] == "teaware/Kyusu"
    assert page(vault, "real name")["title"] == "Real  Name"
    assert page(vault, "what?")["source"] == "pages/what%3F.md"
    assert page(vault, "what?")["particle"] == particle_of_text("what?")
    assert vault.links == []  # namespace parents are not linked


def test_logseq_page_properties(tmp_path):
    vault = read(tmp_path, "logseq", {"p.md": (
        "alias:: b, [[c, d]]\ntags:: t1, [[T 2]], #t3\nicon:: 🍵\ncolour:: [[Red]] and #blue\n"
        "\n- body\n")})
    p = page(vault, "p")
    assert (p["aliases"], p["text"]) == (["b", "c, d"], "body")
    assert p["props"] == {"colour": "Red and blue"}
    assert edges(vault) == {("p", "t1", "tag"): 1, ("p", "t 2", "tag"): 1, ("p", "t3", "tag"): 1,
                            ("p", "red", "link"): 1, ("p", "blue", "link"): 1}
    # Property-only blocks at the top belong to the page too, as in the cyberwiki export.
    vault = read(tmp_path / "b", "logseq", {
        "q.md": "alias:: r\n- tags:: s\n  size:: 3\n- body\n- late:: 4",
        "y.md": "---\nalias: z, w\ntags: [s]\n---\n- yaml [[q]]"})
    assert (page(vault, "q")["aliases"], page(vault, "q")["props"]) == (["r"], {"size": "3"})
    assert page(vault, "q")["text"] == "body\nlate: 4"
    assert page(vault, "y")["aliases"] == ["w", "z"] and page(vault, "y")["text"] == "yaml q"
    assert edges(vault) == {("q", "s", "tag"): 1, ("y", "s", "tag"): 1, ("y", "q", "link"): 1}


@pytest.mark.parametrize("line, text, targets", [
    ("see [[Target]] now", "see Target now", {"target": 1}),
    ("[[Target|the label]]", "the label", {"target": 1}),
    ("#[[two words]] and #tag, #ns/tag.", "two words and tag, ns/tag.",
     {"two words": 1, "tag": 1, "ns/tag": 1}),
    ("#2024", "2024", {"2024": 1}),
    ("[label]([[Target]])", "label", {"target": 1}),
    ("{{embed [[Target]]}}", "Target", {"target": 1}),
    ("a {{query (page-tags [[x]])}} b {{video https://v.example/1}}", "a b", {}),
    ("a ![cup](../assets/cup.png) b", "a b", {}),
    ("[site](https://x.org/#frag) https://x.org/a#b", "site https://x.org/a#b", {}),
    ("`[[code]]` stays", "`[[code]]` stays", {}),
    ("TODO buy [[tea]]", "TODO buy tea", {"tea": 1}),
    ("spaced \u00a0 out  |  cells |", "spaced out | cells |", {}),
])
def test_logseq_inline(tmp_path, line, text, targets):
    vault = read(tmp_path, "logseq", {"p.md": f"- {line}\n"})
    assert page(vault, "p")["text"] == text
    assert edges(vault) == {("p", t, "link"): n for t, n in targets.items()}


def test_logseq_blocks(tmp_path):
    vault = read(tmp_path, "logseq", {"p.md": (
        "- # Head\n\t- child\n\t  continued [[x]]\n\t  kind:: [[k]]\n\t  collapsed:: true\n"
        "- clock\n  :LOGBOOK:\n  CLOCK: [[no]]\n  :END:\n"
        "- #+BEGIN_QUERY\n  {:query [[no]]}\n  #+END_QUERY\n"
        "- #+BEGIN_NOTE\n  note\n  #+END_NOTE\n"
        "- code:\n  ```python\n  - x  = [[no]]\n  ```\n- ---\n-\n- | a | b |\n  | 1 | 2 |\n")})
    assert page(vault, "p")["text"].split("\n") == [
        "Head", "child", "continued x", "kind: k", "clock", "note", "code:", "- x  = [[no]]",
        "| a | b |", "| 1 | 2 |"]
    assert edges(vault) == {("p", "x", "link"): 1, ("p", "k", "link"): 1}


def test_logseq_block_reference(tmp_path):
    vault = read(tmp_path, "logseq", {
        "a.md": f"- quoted [[x]]\n  id:: {UUID}\n  kind:: hidden\n- other",
        "b.md": f"- see (({UUID})) here\n- {{{{embed (({UUID}))}}}}\n- gone (({UUID[:-1]}2)) now"})
    assert page(vault, "b")["text"] == "see quoted x here\nquoted x\ngone now"
    assert edges(vault) == {("a", "x", "link"): 1}  # a reference quotes text, not links
    loop = read(tmp_path / "loop", "logseq", {"c.md": f"- me (({UUID})) again\n  id:: {UUID}"})
    assert page(loop, "c")["text"] == "me me again again"  # one level, then the cycle stops


@pytest.mark.parametrize("line, text, targets", [
    ("see [[Target]] now", "see Target now", {"target": 1}),
    ("[[Target|label]]", "label", {"target": 1}),
    ("[[Target#Heading]] [[Target#Heading|label]]", "Target label", {"target": 2}),
    ("[[#Heading]] [[#^block]]", "Heading", {}),
    ("![[Target]] ![[Target#^abc]]", "Target Target", {"target": 2}),
    ("a ![[photo.png|200]] b [[doc.pdf]]", "a b doc.pdf", {}),
    ("[[folder/Note]] [[Note.md]]", "folder/Note Note", {"note": 2}),
    ("#tag and #nested/tag, not #2024", "tag and nested/tag, not #2024",
     {"tag": 1, "nested/tag": 1}),
    ("x %%hidden [[h]]%% y", "x y", {}),
    ("a line ^block-1", "a line", {}),
    ("[label](Some%20Note.md) [site](https://x.org/page.md) [f](a.png)", "label site f",
     {"some note": 1}),
    ("- [ ] task [[t]]", "task t", {"t": 1}),
    ("`[[code]]` stays", "`[[code]]` stays", {}),
    ("| [[Note\\|label]] | x |", "| label | x |", {"note": 1}),
    ("key:: [[v]]", "key:: v", {"v": 1}),  # Dataview fields are plain text to Obsidian
])
def test_obsidian_inline(tmp_path, line, text, targets):
    vault = read(tmp_path, "obsidian", {"p.md": f"{line}\n"})
    assert page(vault, "p")["text"] == text
    assert edges(vault) == {("p", t, "link"): n for t, n in targets.items()}


def test_obsidian_body_blocks(tmp_path):
    vault = read(tmp_path, "obsidian", {"p.md": (
        "# Head\n\n  - child [[x]]\n* star\n1. one\n> quote\n---\n"
        "```\n[[no]]\n```\n%%\nhidden [[no]]\n%%\nend\n")})
    assert page(vault, "p")["text"].split("\n") == [
        "Head", "child x", "star", "1. one", "> quote", "[[no]]", "end"]
    assert edges(vault) == {("p", "x", "link"): 1}


def test_obsidian_front_matter(tmp_path):
    vault = read(tmp_path, "obsidian", {
        "p.md": ("---\naliases: [B, \"[[c]]\"]\ntags:\n  - \"#t1\"\n  - t/2\ntitle: The P\n"
                 "cssclasses: wide\nyear: 2024\nparts:\n  - \"[[Leaf]]\"\n  - root\n"
                 "dims: {w: 1}\nempty:\n---\nbody\n"),
        "q.md": "---\naliases: x, y\ntags: d e, f\n---\n",
        "r.md": "---\nnot closed\n"})
    p = page(vault, "p")
    assert (p["title"], p["aliases"], p["text"]) == ("The P", ["b", "c"], "body")
    assert p["props"] == {"year": "2024", "parts": "Leaf, root", "dims": '{"w": "1"}', "empty": ""}
    assert page(vault, "q")["aliases"] == ["x", "y"]
    assert page(vault, "r")["text"] == "not closed"  # no closing fence: not front matter
    assert edges(vault) == {("p", "t1", "tag"): 1, ("p", "t/2", "tag"): 1, ("p", "leaf", "link"): 1,
                            ("q", "d", "tag"): 1, ("q", "e", "tag"): 1, ("q", "f", "tag"): 1}


def test_obsidian_skips_dot_folders_and_merges_same_names(tmp_path):
    vault = read(tmp_path, "obsidian", {
        ".obsidian/x.md": "[[x]]", ".trash/y.md": "[[y]]", "a/note.md": "one [[u]]",
        "b/Note.md": "---\nsize: 2\n---\ntwo [[v]]", "c/d.md": "[[w]]"})
    assert {p["name"] for p in vault.particles} == {"note", "d", "u", "v", "w"}
    note = page(vault, "note")
    assert (note["text"], note["source"], note["title"]) == ("one u\ntwo v", "a/note.md", "note")
    assert note["props"] == {"size": "2"}


def test_aliases_resolve_first_claim_wins(tmp_path):
    vault = read(tmp_path, "logseq", {
        "a.md": "alias:: shared, x\n", "b.md": "alias:: shared, A\n",
        "c.md": "- [[shared]] [[x]] [[X]] #shared"})
    assert page(vault, "a")["aliases"] == ["shared", "x"]
    assert page(vault, "b")["aliases"] == []  # lost "shared" to a; "a" is a page
    assert edges(vault) == {("c", "a", "link"): 4}


def test_empty_alias_page_folds_and_full_one_stays(tmp_path):
    for flavor, owner in (("logseq", "alias:: empty, full\n\n- body"),
                          ("obsidian", "---\naliases: [empty, full]\n---\nbody")):
        vault = read(tmp_path / flavor, flavor, {
            "owner.md": owner, "empty.md": "", "full.md": "has text",
            "linker.md": "[[empty]] [[Full]] [[owner]]"})
        assert [p["name"] for p in vault.particles] == ["full", "linker", "owner"]
        assert page(vault, "owner")["aliases"] == ["empty"]
        assert edges(vault) == {("linker", "owner", "link"): 2, ("linker", "full", "link"): 1}


def test_self_links_dropped(tmp_path):
    vault = read(tmp_path, "logseq", {"a.md": "alias:: b\ntags:: a, b\n\n- [[a]] [[B]] #a [[c]]"})
    assert edges(vault) == {("a", "c", "link"): 1}


def test_occurrences_counted_tags_once(tmp_path):
    vault = read(tmp_path, "logseq", {"a.md": (
        "tags:: b, [[B]]\nsee:: [[b]]\n\n"
        "- [[b]] [[B]] #b\n- #[[b]] [l]([[b]])\n- {{embed [[b]]}}")})
    assert edges(vault) == {("a", "b", "link"): 7, ("a", "b", "tag"): 1}


def test_dangling_targets_are_empty_particles(tmp_path):
    vault = read(tmp_path, "obsidian", {"a.md": "[[Nowhere Land]]"})
    assert page(vault, "nowhere land") == {
        "particle": particle_of_text("nowhere land"), "name": "nowhere land", "aliases": [],
        "text": "", "title": "nowhere land", "source": None, "props": {}}


def test_rows_time_neuron_and_order(tmp_path):
    files = {"b.md": "- [[c]] [[a]]", "a.md": "- [[b]]", "c.md": "- [[zz]] [[a]]"}
    vault = read(tmp_path, "logseq", files, neuron="me")
    assert [p["name"] for p in vault.particles] == ["a", "b", "c", "zz"]
    keys = [(r["from"], r["to"], r["token"]) for r in vault.links]
    assert keys == sorted(keys) and len(keys) == 5
    assert {(r["neuron"], r["valence"], r["time"]) for r in vault.links} == {("me", 1, T)}
    assert read(tmp_path, "logseq", files, neuron="me") == vault
    os.utime(tmp_path / "logseq/pages/a.md", (1234, 1234))
    vault = read_vault(tmp_path / "logseq", "logseq")
    assert [r["time"] for r in vault.links if r["from"] == particle_of_text("a")] == [1234]


def test_journals_only_with_flag(tmp_path):
    files = {"p.md": "- x", "journals/2024_05_01.md": "- drank [[oolong]]"}
    assert {p["name"] for p in read(tmp_path, "logseq", files).particles} == {"p"}
    vault = read(tmp_path, "logseq", files, journals=True)
    assert edges(vault) == {("2024_05_01", "oolong", "link"): 1}


def test_hash_blake3(tmp_path):
    vault = read(tmp_path, "logseq", {"a.md": "- x"}, hash_name="blake3")
    assert vault.particles[0]["particle"] == particle_of_text("a", "blake3")


def test_bad_input_names_file_and_line(tmp_path):
    root = tmp_path / "o"
    root.mkdir()
    (root / "bad.md").write_bytes(b"fine\nok \xff here\n")
    (root / "yaml.md").write_text("---\ntags: [a\nx: 1\n---\n", encoding="utf-8")
    (root / "list.md").write_text("---\n- a\n---\n", encoding="utf-8")
    (root / "map.md").write_text("---\naliases: [{a: 1}]\n---\n", encoding="utf-8")
    with pytest.raises(IngestError) as err:
        read_vault(root, "obsidian")
    message = str(err.value)  # every problem at once, each with its file (and line)
    assert "4 problem(s)" in message
    assert f"{root / 'map.md'}: field 'aliases'" in message
    assert f"{root / 'bad.md'}:2:" in message and "UTF-8" in message
    assert f"{root / 'yaml.md'}:" in message and "valid YAML" in message
    assert "a YAML mapping" in message
    with pytest.raises(GraftError, match="flavor"):
        read_vault(root, "roam")
    with pytest.raises(GraftError, match="pages/"):
        read_vault(root, "logseq")
    with pytest.raises(GraftError, match="not a folder"):
        read_vault(root / "bad.md", "obsidian")
    with pytest.raises(GraftError, match="hash"):
        read_vault(root, "obsidian", hash_name="md5")


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(IngestError, match=r"locked\.md: got 'Permission denied'; expected a read"):
        read(tmp_path, "obsidian", {"locked.md": "x", "fine.md": "y"})


def test_logseq_and_obsidian_vaults_give_the_same_graph():
    logseq = read_vault(FIXTURES / "vault_logseq", "logseq", time=T)
    obsidian = read_vault(FIXTURES / "vault_obsidian", "obsidian", time=T)

    def graph(vault: Vault) -> tuple[set, set]:
        # Sources are file paths, which differ between the flavours by design.
        particles = {(p["particle"], p["name"], tuple(p["aliases"]), p["text"], p["title"],
                      tuple(sorted(p["props"].items()))) for p in vault.particles}
        return particles, {tuple(sorted(r.items())) for r in vault.links}

    assert graph(logseq) == graph(obsidian)
    # Guard against two equally wrong readings: the vaults hold 10 pages after folding `cha`.
    names = {p["name"] for p in logseq.particles if p["source"]}
    assert len(names) == 10 and "cha" not in names and "camellia sinensis" in names
    assert page(logseq, "tea")["aliases"] == ["cha"]  # "camellia sinensis" is a page of its own
    assert len(logseq.particles) == 20 and len(logseq.links) == 47
    assert edges(obsidian)[("matcha", "green tea", "link")] == 2
    assert ("brewing", "pu'er", "link") in edges(obsidian)  # via the alias puerh
    assert all("[[" not in p["text"] or "not a link" in p["text"] for p in obsidian.particles)
