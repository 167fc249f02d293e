"""Tests for graph/docs_graph.py: See Also parsing, name resolution and the built numpy graph."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from graph import docs_graph
from graph.docs_graph import NameTable, parse_see_also, resolve_reference, strip_see_also
from graph.ids import particle_of_text

REPO = pathlib.Path(__file__).resolve().parents[2]
HEX = re.compile(r"^[0-9a-f]{64}$")

# Indented like a real docstring; the See Also section sits between two others and holds
# every line shape numpydoc accepts, plus description continuation lines that look like names.
DOC = '''Do a thing.

    Parameters
    ----------
    x : int
        The input.

    See Also
    --------
    numpy.linalg.svd : Singular value decomposition,
        continued here: not_a_ref, other
    eigh, eigvals
    :func:`scipy.linalg.norm` : A role.
    :meth:`~numpy.ndarray.sum` : A method, shown short.
    lstsq: no space before the colon.
    `pinv`

    mean, average, eigh

    Notes
    -----
    Note text.
    '''


def test_parse_see_also_exact_names_in_order():
    assert parse_see_also(DOC) == ["numpy.linalg.svd", "eigh", "eigvals", "scipy.linalg.norm",
                                   "numpy.ndarray.sum", "lstsq", "pinv", "mean", "average"]


def test_parse_see_also_last_section_and_absent():
    doc = "Summary.\n\nSee Also\n--------\nfoo : bar\n    baz, qux\nspam\n\n"
    assert parse_see_also(doc) == ["foo", "spam"]
    assert parse_see_also("Summary.\n\nNotes\n-----\nfoo : bar\n") == []
    assert parse_see_also(None) == []


def test_strip_see_also_keeps_the_rest_dedented():
    expected = ("Do a thing.\n\nParameters\n----------\nx : int\n    The input.\n\n"
                "Notes\n-----\nNote text.")
    assert strip_see_also(DOC) == expected
    assert strip_see_also("Only a summary.\n\n\n\n   More.   ") == "Only a summary.\n\nMore."


def test_steady_masks_what_varies_between_runs():
    doc = ("Use of argument(s) ``{'weights', 'axis'}`` by position is deprecated.\n"
           "kind : {'quicksort', 'mergesort'}, optional\n\n"
           ">>> rng.random(2)\narray([0.1,\n       0.7])  # may vary\n>>> x + 1\n2\n\nAfter.")
    assert docs_graph.steady(doc) == (
        "Use of argument(s) ``{'axis', 'weights'}`` by position is deprecated.\n"
        "kind : {'quicksort', 'mergesort'}, optional\n\n"
        ">>> rng.random(2)\n...  # may vary\n>>> x + 1\n2\n\nAfter.")


def _table() -> NameTable:
    canon = ["numpy", "numpy.linalg", "numpy.fft", "numpy.linalg.svd", "numpy.linalg.eigh",
             "numpy.sum", "numpy.ndarray", "numpy.absolute", "numpy.fft.ifft",
             "scipy", "scipy.linalg", "scipy.signal", "scipy.linalg.svd", "scipy.fft.ifft"]
    names = {c: c for c in canon} | {"numpy.abs": "numpy.absolute"}
    return NameTable(names=names, classes=frozenset({"numpy.ndarray"}),
                     short={"eigh": "numpy.linalg.eigh", "absolute": "numpy.absolute"})


@pytest.mark.parametrize("ref, contexts, expected", [
    ("numpy.linalg.svd", ["scipy.linalg"], "numpy.linalg.svd"),  # fully qualified wins
    ("svd", ["scipy.linalg"], "scipy.linalg.svd"),               # current module
    ("svd", ["numpy.linalg"], "numpy.linalg.svd"),
    ("linalg.svd", ["numpy.fft"], "numpy.linalg.svd"),           # relative to the package root
    ("np.linalg.svd", ["scipy.signal"], "numpy.linalg.svd"),     # np. abbreviation
    ("abs", ["numpy"], "numpy.absolute"),                        # alias -> canonical
    ("svd", ["scipy.signal", "numpy.linalg"], "numpy.linalg.svd"),  # second context
    ("ndarray.sum", ["numpy.linalg"], "numpy.ndarray"),          # method -> its class
    ("numpy.sum.reduce", ["numpy"], None),                       # owner is not a class
    ("numpy.nonexistent", ["numpy"], None),                      # never falls back to a module
    ("EIGH", ["scipy.signal"], "numpy.linalg.eigh"),             # unique short name
    ("ifft", ["scipy.signal"], None),                            # ambiguous short name
    ("len", ["numpy"], None),
])
def test_resolve_reference(ref, contexts, expected):
    assert resolve_reference(ref, contexts, _table()) == expected


def _read(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    out = tmp_path_factory.mktemp("numpy-docs")
    return out, docs_graph.build_docs_graph(out)


def test_reruns_are_byte_identical(built, tmp_path):
    out, _ = built
    docs_graph.build_docs_graph(tmp_path / "again")
    # A fresh interpreter with another hash seed catches set-order leaks an in-process rerun
    # cannot see.
    code = ("import pathlib, sys; from graph.docs_graph import build_docs_graph; "
            "build_docs_graph(pathlib.Path(sys.argv[1]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "fresh")], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True)
    assert run.stdout == ""
    for name in ("particles.jsonl", "links.jsonl"):
        first = (out / name).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == first
        assert (tmp_path / "fresh" / name).read_bytes() == first


def test_prints_nothing(tmp_path, capsys):
    docs_graph.build_docs_graph(tmp_path, packages=("numpy",))
    assert capsys.readouterr() == ("", "")


def test_ids_and_link_endpoints(built):
    out, summary = built
    particles = _read(out / "particles.jsonl")
    links = _read(out / "links.jsonl")
    ids = {p["particle"] for p in particles}
    assert len(ids) == len(particles) == summary["particles"]
    assert len(links) == summary["links"] > 0
    for p in particles:
        assert list(p) == ["particle", "name", "aliases", "text"]
        assert HEX.match(p["particle"]) and p["particle"] == particle_of_text(p["name"])
        assert "See Also\n--------" not in p["text"]
    for link in links:
        assert list(link) == ["neuron", "from", "to", "token", "amount", "valence", "time",
                              "semcon"]
        assert HEX.match(link["from"]) and HEX.match(link["to"])
        assert link["from"] in ids and link["to"] in ids and link["from"] != link["to"]
        assert (link["neuron"], link["token"], link["amount"], link["valence"], link["time"]) \
            == ("numpy-docs", "link", 1, 1, docs_graph.TIME)
        assert link["semcon"] in ("see-also", "member-of")
    assert len({(x["from"], x["to"], x["semcon"]) for x in links}) == len(links)


def test_summary_counts(built):
    _, summary = built
    assert set(summary["packages"]) == {"numpy", "scipy"}
    assert summary["links"] == summary["see_also_links"] + summary["member_of_links"]
    resolved = summary["see_also_refs"] - summary["unresolved"] - summary["self_refs"]
    assert 0 < summary["see_also_links"] <= resolved
    assert summary["failed_modules"] == []


def test_every_member_belongs_to_its_module(built):
    out, _ = built
    particles = {p["particle"]: p for p in _read(out / "particles.jsonl")}
    member_of = {}
    for link in _read(out / "links.jsonl"):
        if link["semcon"] == "member-of":
            assert link["from"] not in member_of  # exactly one home per particle
            member_of[link["from"]] = particles[link["to"]]["name"]
    roots_and_semcons = {"numpy", "scipy", "see-also", "member-of"}
    for pid, p in particles.items():
        if p["name"] in roots_and_semcons:
            assert pid not in member_of
        else:
            assert p["name"].startswith(member_of[pid] + ".")


def test_short_aliases_are_unique(built):
    out, _ = built
    particles = _read(out / "particles.jsonl")
    shorts = [a for p in particles for a in p["aliases"] if "." not in a]
    assert len({s.lower() for s in shorts}) == len(shorts)
    svd = next(p for p in particles if p["name"] == "numpy.linalg.svd")
    assert "svd" not in svd["aliases"]  # scipy.linalg.svd exists too


def test_svd_has_see_also_links(built):
    out, _ = built
    svd = particle_of_text("numpy.linalg.svd")
    names = {p["particle"]: p["name"] for p in _read(out / "particles.jsonl")}
    assert svd in names
    targets = [names[x["to"]] for x in _read(out / "links.jsonl")
               if x["from"] == svd and x["semcon"] == "see-also"]
    assert targets and "numpy.linalg.svd" not in targets


FIXTURES = REPO / "data" / "fixtures"
GRAPHS = ["chain", "star", "communities", "typed"]


@pytest.mark.parametrize("graph", GRAPHS)
def test_fixture_graphs_are_consistent(graph):
    particles = _read(FIXTURES / f"{graph}.particles.jsonl")
    links = _read(FIXTURES / f"{graph}.links.jsonl")
    ids = {p["particle"] for p in particles}
    for p in particles:
        assert p["particle"] == particle_of_text(p["name"]) and isinstance(p["aliases"], list)
    assert [x["time"] for x in links] == list(range(1, len(links) + 1))
    for x in links:
        assert x["from"] in ids and x["to"] in ids
        assert (x["neuron"], x["token"]) == ("fixture", "link") and x["amount"] >= 1
        assert set(x) - {"semcon"} == {"neuron", "from", "to", "token", "amount", "valence",
                                       "time"}
