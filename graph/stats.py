"""`graft stats`: counts, semcons, focus and degree statistics of what the store holds now."""
from __future__ import annotations

import numpy as np

from graph import sql
from graph.focus import compute_focus
from graph.semcons import discover_semcons
from graph.snapshot import Snapshot, adjacency, snapshot_links
from graph.store import Store


def graph_stats(store: Store, top: int = 10) -> dict:
    """Everything `graft stats` shows, as one JSON-ready dict.

    Keys: particles (particle rows ∪ link endpoints), links (cyberlink records), neurons,
    semcons (discovered, ⊥ included), axons (targets of label links, counted in particles),
    tokens, batches, snapshots, particles_with_text,
    and when there are links: top (particles by focus), degree (in/out/total statistics over
    the weighted adjacency, label links excluded), focus_iterations.
    """
    names = ("particles", "links", "neurons", "tokens", "batches", "snapshots",
             "particles_with_text")
    result = dict(zip(names, store.query(sql.STATS_COUNTS)[0]))
    max_seq = store.scalar(sql.MAX_SEQ)
    if not max_seq:
        result.update(semcons=1, top=[], degree={})
        return result
    current = Snapshot(id="(current)", max_seq=max_seq, links=result["links"], created="")
    links = snapshot_links(store, current)
    labels = links.filter(links.column("is_label"))
    semcons = discover_semcons(
        np.asarray(labels.column("src").to_pylist(), dtype=object),
        np.asarray(labels.column("dst").to_pylist(), dtype=object),
        labels.column("w").to_numpy())
    result["semcons"] = len(semcons)
    result["axons"] = len(set(labels.column("dst").to_pylist()))  # label-link targets
    result["semcon_list"] = [{"particle": s.particle, "score": s.score} for s in semcons]
    adj = adjacency(store, current, links)
    focus = compute_focus(adj.matrix)
    pi = focus.pi
    result["focus_iterations"] = focus.iterations
    order = np.argsort(-pi, kind="stable")[:top]
    known = store.names_of([adj.index[i] for i in order])
    out_deg = np.diff(adj.matrix.indptr)
    in_deg = np.bincount(adj.matrix.indices, minlength=adj.matrix.shape[0])
    result["top"] = [{"particle": adj.index[i], "name": known.get(adj.index[i]),
                      "focus": float(pi[i]), "in": int(in_deg[i]), "out": int(out_deg[i])}
                     for i in order]
    result["degree"] = {k: _summary(v) for k, v in
                        (("in", in_deg), ("out", out_deg), ("total", in_deg + out_deg))}
    return result


def current_focus(store: Store) -> dict[str, float]:
    """Focus π of every linked particle over all links in the store now (label links
    excluded, as in the adjacency); {} for a store without links."""
    max_seq = store.scalar(sql.MAX_SEQ)
    if not max_seq:
        return {}
    links = store.scalar(sql.LINK_COUNT_UPTO, [max_seq])
    adj = adjacency(store, Snapshot(id="(current)", max_seq=max_seq, links=links, created=""))
    return dict(zip(adj.index, compute_focus(adj.matrix).pi.tolist()))


def _summary(values: np.ndarray) -> dict:
    return {"mean": round(float(values.mean()), 3), "median": float(np.median(values)),
            "max": int(values.max())}


def format_stats(result: dict) -> str:
    """The stats as an aligned text block for people."""
    lines = [f"{key:>20}  {result[key]}" for key in
             ("particles", "links", "neurons", "semcons", "tokens", "batches", "snapshots",
              "particles_with_text")]
    if result.get("axons"):
        lines[0] += f"  ({result['axons']} of them axons: targets of label links that type links)"
    if result.get("degree"):
        for kind, s in result["degree"].items():
            lines.append(f"{kind + ' degree':>20}  mean {s['mean']}  median {s['median']}  max {s['max']}")
        lines.append("")
        lines.append(f"top {len(result['top'])} particles by focus "
                     f"(PageRank, {result['focus_iterations']} iterations):")
        for row in result["top"]:
            label = row["name"] or row["particle"][:16] + "…"
            lines.append(f"  {row['focus']:.5f}  in {row['in']:>5}  out {row['out']:>4}  {label}")
    return "\n".join(lines)
