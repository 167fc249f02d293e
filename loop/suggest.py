"""`graft suggest`: proposed links for one note — a new one, or a note of the vault with no
links yet — from the latest cycle's model and ranker, without running a cycle.

The note is read as `graft import vault` reads a page (graph/vault.py: its text without
markup, the links it already makes), put into the store's graph as it is now (beside the
particle of the same name, or as a new one), and scored against every particle as the
extractor scores a source: the same features, the cycle's ranker, its calibrated confidence
and each feature's share. A note the compiled model never saw has no compiled or tuned
features of its own; the text features (mentions, link probability, embeddings) carry it.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graph import ids, sql_loop
from graph.errors import GraftError
from graph.store import Store
from graph.vault import normalise_name, read_vault
from loop.extract import linking_neighbours


NOTE_FILE = "graft-note.md"


def read_note(name: str, markdown: str, flavor: str = "obsidian"
              ) -> tuple[str, list[str], int]:
    """(its text as the importer keeps it, the names it links or tags already, how many it
    links — token `link`, tags left out) of one note."""
    with tempfile.TemporaryDirectory() as tmp:     # under a neutral file name: any `name`
        folder = Path(tmp) / ("pages" if flavor == "logseq" else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / NOTE_FILE).write_text(markdown, encoding="utf-8")
        vault = read_vault(Path(tmp), flavor, time=0)
    names = {p["particle"]: p["name"] for p in vault.particles}
    [page] = [p for p in vault.particles if (p["source"] or "").endswith(NOTE_FILE)]
    own = {normalise_name(name), normalise_name(name.rsplit("/", 1)[-1])}   # itself
    mine = [r for r in vault.links if r["from"] == page["particle"]
            and names[r["to"]] not in own]
    return (page["text"], sorted({names[r["to"]] for r in mine}),
            sum(r["token"] == "link" for r in mine))


def with_note(graph, particle: str, name: str, text: str):
    """(graph, position): `graph` with the note's text at its particle, added when absent."""
    pos = graph.position()
    if particle in pos:
        p = pos[particle]
        return replace(graph, texts={**graph.texts, p: text}), p
    p = len(graph.index)

    def grown(m: sp.csr_array) -> sp.csr_array:
        m = m.tocoo()
        return sp.coo_array((m.data, (m.row, m.col)), shape=(p + 1, p + 1)).tocsr()

    return replace(graph, index=[*graph.index, particle], adjacency=grown(graph.adjacency),
                   known=grown(graph.known), link_indegree=np.append(graph.link_indegree, 0.0),
                   link_outdegree=(None if graph.link_outdegree is None
                                   else np.append(graph.link_outdegree, 0.0)),
                   names={**graph.names, p: [name]}, texts={**graph.texts, p: text}), p


def suggest(store: Store, db: Path, name: str, markdown: str, flavor: str = "obsidian",
            cycle: int | None = None, top: int = 10, device: str = "auto") -> dict:
    """The `top` proposals for the note `name` with body `markdown`: {"cycle", "particle",
    "in_store", "linked", "suggestions": [{dst, name, score, confidence, contributions,
    lines}]}, best first; particles the note links already, or a curator rejected for it,
    are left out."""
    import torch

    from loop.calibrate import apply, context_of
    from loop.cycle import cycle_folder
    from loop.evaluate import load_graph
    from loop.rank import Features, Ranker
    n, folder = cycle_folder(store, db, cycle)
    ranker = Ranker.load(folder / "ranker.json")
    text, linked, own_links = read_note(name, markdown, flavor)
    particle = ids.particle_of_text(normalise_name(name), store.hash_name)
    graph = load_graph(store)
    in_store = particle in graph.position()
    graph, p = with_note(graph, particle, normalise_name(name), text)
    pos = graph.position()
    out = {ids.particle_of_text(t, store.hash_name) for t in linked}
    out |= {d for s, d in store.query(sql_loop.LINKED_PAIRS) if s == particle}
    out |= {d for s, d in store.query(sql_loop.REJECTED_PAIRS) if s == particle}
    cand = np.ones(len(graph.index), dtype=bool)
    cand[p] = False
    cand[[pos[q] for q in out if q in pos]] = False
    for q, names in graph.names.items():                   # the note's namesakes
        if normalise_name(name) in names:
            cand[q] = False
    with torch.no_grad():
        feats = Features(graph, folder / "model", folder / "adapter",
                         embed_cache=folder.parent / "embeddings.safetensors", device=device)
        x = feats.block(np.array([p]), ranker.features)[0]                      # (P, F)
    score = np.where(cand, ranker.score(x[None])[0], -np.inf)                  # (P,)
    prob = np.exp(score - score.max())
    prob /= prob.sum()
    best = np.argsort(-score, kind="stable")[:min(top, int(cand.sum()))]
    cold = bool(graph.cold()[p]) and not own_links       # no [[link]] in the note either
    cal = ranker.fit.get("calibration")
    context = context_of(cal, graph)                    # the note's own, when the map asks
    # a note asked about that has no link yet is one its author is writing: a new note's map
    confidence = apply(cal, prob[best], cold=cold, new=cold,
                       context=None if context is None else context[p],
                       gap=score[best] - score[best[:1]])
    shares = ranker.contributions(x[best].astype(np.float64))
    names = dict(store.query("SELECT particle, name FROM particles"))
    alike = (linking_neighbours(feats, np.full(len(best), p), best)
             if "text_neighbours" in ranker.features else [[] for _ in best])
    rows = []
    for i, q in enumerate(best):
        target = graph.index[q]
        rows.append({"dst": target, "name": names.get(target, target),
                     "score": float(np.log(prob[q])), "confidence": float(confidence[i]),
                     "contributions": {f: round(float(c), 6)
                                       for f, c in zip(ranker.features, shares[i])},
                     "lines": _lines(text, graph.names.get(int(q), [])),
                     "neighbours": alike[i]})
    return {"cycle": n, "particle": particle, "in_store": in_store, "linked": linked,
            "suggestions": rows}


def _lines(text: str, names: list[str], most: int = 3) -> list[str]:
    """The note's lines that name the target (case-insensitive, whole words)."""
    if not names:
        return []
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)",
                         re.IGNORECASE)
    return [line for line in text.splitlines() if pattern.search(line)][:most]


def format_suggestions(result: dict) -> str:
    lines = [f"{len(result['suggestions'])} proposals from cycle {result['cycle']}"
             + ("" if result["in_store"] else " (a note the store does not have yet)")]
    for r in result["suggestions"]:
        why = ", ".join(f"{f} {c:+.2f}" for f, c in sorted(
            r["contributions"].items(), key=lambda kv: -abs(kv[1]))[:3])
        lines.append(f"{r['confidence']:>6.2f}  [[{r['name']}]]   ({why})")
        lines += [f"          “{line.strip()[:100]}”" for line in r["lines"][:1]]
        if r.get("neighbours"):
            lines.append("          linked from notes like this one: "
                         + ", ".join(n["name"] or n["particle"][:12] for n in r["neighbours"][:3]))
    if not result["suggestions"]:
        raise GraftError("no particle to propose")
    return "\n".join(lines)
