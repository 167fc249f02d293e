"""Provenance: which links made a compiled prediction or weight (`graft trace`, DESIGN §2).

Letters: V particles, d hidden size, n records (cyberlink rows), h heads, d_h head size.

The embedding pass factorises M (A, or diag(√π) A diag(√π) with focus_weighting) as
M ≈ U Σ Vᵀ and stores E_p = s_p·U_p Σ^½ (s_p > 0 the row scale in provenance.safetensors)
and H = V Σ^½. For an SVD, U = M V Σ⁻¹ and V = Mᵀ U Σ⁻¹, so (components with σ = 0 carry
nothing and are skipped):

    E_p = s_p Σ_q M[p,q] V_q Σ^-½ = s_p Σ_q M[p,q] H_q Σ⁻¹          (p has out-links)
    H_r =     Σ_s M[s,r] U_s Σ^-½ =     Σ_s M[s,r] (E_s / s_s) Σ⁻¹    (in-links of r)
    E_p = s_p H_p                                                   (filled rows)

and the zero-layer logit of r after p, E_p·H_r, is Σ_q s_p M[p,q] (V_q·V_r) for a plain
row and Σ_s s_p M[s,p] (U_s·V_r) for a filled one. Every formula is linear in M, and
M[p,q] = Σ_ℓ w_ℓ·g_p g_q (g = √π or 1) sums the effective stakes of the records ℓ: p → q,
so each term splits exactly over records, and records over neurons. U and V come from the
checkpoint (V = H Σ^-½ from lm_head rows, U = (E/s) Σ^-½ from non-filled embed rows; a
filled row's U was below 1e-6 of the largest and counts as 0). Both identities hold
exactly only for an exact SVD: on a randomized one V = Mᵀ U Σ⁻¹ holds to float rounding
(the range finder derives V from U) but U = M V Σ⁻¹ only to the sketch's accuracy, so every
answer reports `residual` = stored value − the sum of the link terms, and shares are
fractions of the stored value (links + residual = 1).

Attention (approximate, first order). For semcon s at power k, P = Eᵀ A_s^k E =
Σ_{ℓ∈s} w_ℓ E_pᵀ (A_s^{k-1} E)_q: linear in the links, crediting each k-path to its first
hop. W_Q = U_P √(cΣ_P), W_K = V_P √(cΣ_P), W_V = V_P, W_O = gain·V_P; holding the basis of P
fixed, column j of W_Q is P v_j·‖W_Q[:,j]‖/σ_j, which splits over links; σ_j = ‖P v_j‖ needs
the whole semcon, so tensor queries on attention read the snapshot's links. The MLP comes
from PPMI over seeded random walks (logs of sampled counts): not attributable to links.

The model's own logit for the one-token prompt P (it attends to itself alone) is computed
from the weights and split additively into embedding, attention and MLP parts with the
final RMSNorm scale frozen; only the embedding part splits further over links.

API: Trace(store, dir) opens a checkpoint; trace_pair, trace_tensor and trace_link answer
one question each as a JSON-ready dict; trace() is `graft trace`; format_trace prints one.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from safetensors import safe_open

from compiler.types import SPECIAL_TOKENS
from graph import ids, sql
from graph import semcons as graph_semcons
from graph.checkpoint import COMPILE_RECORD
from graph.errors import GraftError
from graph.snapshot import adjacency, get_snapshot, snapshot_links
from graph.store import Store

# The file names compiler/pack.py writes (importing pack would pull in transformers).
WEIGHTS, PROVENANCE = "model.safetensors", "provenance.safetensors"
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
_ATTN = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight")
RANK_MAX = 1 << 25   # head entries (128 MB as float32) read to rank Q among all particles
APPROX_LAYERS = ("attention and MLP contributions at nonzero gain are reported, not "
                 "decomposed over links (approximate)")


@dataclass(frozen=True)
class Records:
    """Cyberlink rows that enter M (w > 0, both ends in the vocabulary), as vocab indices."""

    seq: np.ndarray                 # (n,) int64
    neuron: list[str]               # (n,)
    src: np.ndarray                 # (n,) vocab index
    dst: np.ndarray                 # (n,) vocab index
    amount: list[str]               # (n,) exact stake as text
    w: np.ndarray                   # (n,) effective stake
    m: np.ndarray                   # (n,) the record's part of M[src, dst]
    clipped: int                    # rows left out because w = 0 (valence ≠ +1)


class Trace:
    """A checkpoint folder opened against the store that holds its snapshot."""

    def __init__(self, store: Store, out: Path):
        out = Path(out)
        missing = [n for n in (COMPILE_RECORD, "particles.json", WEIGHTS, PROVENANCE)
                   if not (out / n).exists()]
        if missing:
            raise GraftError(f"{out}: missing {', '.join(missing)}; is this a graft checkpoint?")
        self.store, self.out = store, out
        self.record = json.loads((out / COMPILE_RECORD).read_text())
        try:
            self.snap = get_snapshot(store, self.record["snapshot"])
        except GraftError as exc:
            raise GraftError(f"{out} was compiled from snapshot {self.record['snapshot'][:16]}…, "
                             f"which the store {store.path} does not hold ({exc})") from exc
        self.particles: list[str] = json.loads((out / "particles.json").read_text())
        self.index = {p: i for i, p in enumerate(self.particles)}
        used, cfg = self.record["arch"]["used"], self.record["config"]
        self.d, self.heads, self.dh, self.layers = (used["d"], used["heads"], used["head_dim"],
                                                    used["layers"])
        self.cfg, self.tied = cfg, bool(cfg["tie"])
        self.kappa = float(self.record["arch"]["derived"].get("kappa", 0.85))
        self.semcons = [s["particle"] for s in self.record["semcons"]]
        self.semcon_names = [s["name"] for s in self.record["semcons"]]
        with safe_open(out / PROVENANCE, framework="np") as f:
            self.sigma = f.get_tensor("embedding.sigma")                    # (d,)
            self.scale = f.get_tensor("embedding.scale")                    # (V,)
            self.filled = f.get_tensor("embedding.filled").astype(bool)     # (V,)
            pi = f.get_tensor("focus.pi") if "focus.pi" in f.keys() else None
        if len(self.scale) != len(self.particles):
            raise GraftError(f"{out}: provenance has {len(self.scale)} rows for "
                             f"{len(self.particles)} particles")
        self.inv_sigma = np.divide(1.0, self.sigma, out=np.zeros_like(self.sigma),
                                   where=self.sigma > 0)                     # (d,)
        self._root = np.sqrt(pi) if pi is not None else None
        self._names: dict[int, str] = {}

    # -- weights ------------------------------------------------------------------------
    def rows(self, name: str, tokens) -> np.ndarray:
        """Rows of one tensor (by token id), read one by one: (n, d) float64."""
        with safe_open(self.out / WEIGHTS, framework="np") as f:
            sl = f.get_slice(name)
            out = np.zeros((len(tokens), *sl.get_shape()[1:]))
            for k, t in enumerate(tokens):
                out[k] = sl[t: t + 1][0]
            return out

    def tensor(self, name: str) -> np.ndarray:
        with safe_open(self.out / WEIGHTS, framework="np") as f:
            return f.get_tensor(name).astype(np.float64)

    def embed(self, ps) -> np.ndarray:
        return self.rows(EMBED, [len(SPECIAL_TOKENS) + p for p in ps])             # (n, d)

    def output(self, ps) -> np.ndarray:
        """Rows of the model's output head: lm_head, or the embedding when tied."""
        return self.rows(EMBED if self.tied else HEAD, [len(SPECIAL_TOKENS) + p for p in ps])

    def head(self, ps) -> np.ndarray:
        """H rows: lm_head, or (tied checkpoints) rebuilt from in-links, H_r = Σ M U Σ^-½."""
        ps = list(ps)
        if not self.tied:
            return self.rows(HEAD, [len(SPECIAL_TOKENS) + p for p in ps])
        recs = self.links("dst", [self.particles[p] for p in ps])
        at = {p: i for i, p in enumerate(ps)}
        out = np.zeros((len(ps), self.d))
        np.add.at(out, [at[q] for q in recs.dst], recs.m[:, None] * self.u_half(recs.src))
        return out

    def u_half(self, ps) -> np.ndarray:
        """U Σ^-½ = (E / s) Σ⁻¹ for each particle; 0 for filled rows (their U is ~0)."""
        ps = np.asarray(ps, np.int64)
        uniq, inv = np.unique(ps, return_inverse=True)
        keep = ~self.filled[uniq] & (self.scale[uniq] > 0)
        e = self.embed(uniq) / np.where(keep, self.scale[uniq], 1.0)[:, None]
        return (np.where(keep[:, None], e, 0.0) * self.inv_sigma)[inv]              # (n, d)

    def root(self) -> np.ndarray:
        """g = √π with focus weighting (computed from the snapshot unless stored), else 1."""
        if not self.cfg["focus_weighting"]:
            return np.ones(len(self.particles))
        if self._root is None:
            from graph.focus import compute_focus
            adj = adjacency(self.store, self.snap)
            if adj.index != self.particles:
                raise GraftError(f"{self.out}: the store's snapshot orders particles differently "
                                 "from particles.json")
            self._root = np.sqrt(compute_focus(adj.matrix).pi)
        return self._root

    # -- links and names ----------------------------------------------------------------
    def query(self, statement: str, particles: list[str], **params) -> pa.Table:
        self.store.register("id_view", pa.table({"particle": pa.array(particles, pa.string())}))
        try:
            return self.store.arrow(statement, {"max_seq": self.snap.max_seq, **params})
        finally:
            self.store.unregister("id_view")

    def links(self, end: str, particles: list[str]) -> Records:
        """Records of the snapshot leaving (end='src') or entering (end='dst') particles."""
        stmt = sql.PROVENANCE_FROM if end == "src" else sql.PROVENANCE_TO
        return self.records(self.query(stmt, particles))

    def records(self, table: pa.Table, weighted: bool = True) -> Records:
        """Rows of `table` that enter M; m = w·g_p g_q (weighted) or w (attention's A_s)."""
        at = self.index.get
        src = np.array([at(x, -1) for x in table.column("src").to_pylist()], np.int64)   # (n,)
        dst = np.array([at(x, -1) for x in table.column("dst").to_pylist()], np.int64)   # (n,)
        w = table.column("w").to_numpy()
        inside = (src >= 0) & (dst >= 0)
        keep = inside & (w > 0)
        t = table.filter(pa.array(keep))
        s, q = src[keep].astype(np.int64), dst[keep].astype(np.int64)
        g = self.root() if weighted else np.ones(len(self.particles))
        return Records(seq=t.column("seq").to_numpy(), neuron=t.column("neuron").to_pylist(),
                       src=s, dst=q, amount=t.column("amount").to_pylist(), w=w[keep],
                       m=w[keep] * g[s] * g[q], clipped=int((inside & (w <= 0)).sum()))

    def names(self, ps) -> dict[int, str]:
        """Display names: the particle's name, else the start of its id (remembered)."""
        new = sorted(set(int(p) for p in ps) - self._names.keys())
        if new:
            table = self.query(sql.NAMES_OF, [self.particles[p] for p in new])
            got = dict(zip(table.column("particle").to_pylist(), table.column("name").to_pylist()))
            self._names.update({p: got.get(self.particles[p]) or self.particles[p][:16] for p in new})
        return {int(p): self._names[int(p)] for p in ps}

    def resolve(self, ref: str) -> int:
        """A particle of the vocabulary by id, unique id prefix, token, name or alias."""
        ref = str(ref).strip()
        if ref in self.index:
            return self.index[ref]
        name, _, prefix = ref.replace("\u2581", " ").partition("#")
        cands = []
        if re.fullmatch(r"[0-9a-f]{6,63}", ref):
            cands = [p for p in self.particles if p.startswith(ref)]
        if not cands:
            rows = self.store.query(sql.PROVENANCE_NAMED, {"name": name})
            cands = [p for p, _ in rows if p in self.index and p.startswith(prefix)]
            if not cands and rows:
                raise GraftError(f"particle {ref!r} is in the store ({rows[0][0][:16]}…) but not in "
                                 f"the vocabulary of {self.out}")
        if not cands:
            raise GraftError(f"unknown particle {ref!r}: no id, id prefix, name or alias in "
                             f"{self.out}'s vocabulary matches it")
        if len(set(cands)) > 1:
            shown = ", ".join(f"{p[:16]}…" for p in sorted(set(cands))[:5])
            raise GraftError(f"particle {ref!r} is ambiguous: {len(set(cands))} particles match "
                             f"({shown}); pass an id or id prefix, or NAME#PREFIX")
        return self.index[cands[0]]

    def describe(self, p: int) -> dict:
        return {"index": p, "token": len(SPECIAL_TOKENS) + p, "particle": self.particles[p],
                "name": self.names([p])[p], "filled": bool(self.filled[p])}

    def head_semcons(self, head: int) -> list[str]:
        """Semcon i feeds head i mod heads (compiler/attention.py)."""
        return [n for i, n in enumerate(self.semcon_names) if i % self.heads == head]


# -- exact linear terms ---------------------------------------------------------------------
def row_terms(tr: Trace, tensor: str, p: int) -> tuple[Records, np.ndarray, str]:
    """Each record's exact contribution (n, d) to row p of E (EMBED) or H (HEAD), and the rule."""
    if tensor == EMBED and not tr.filled[p]:
        recs = tr.links("src", [tr.particles[p]])
        uniq, inv = np.unique(recs.dst, return_inverse=True)
        base = tr.scale[p] * (tr.head(uniq) * tr.inv_sigma)[inv]                  # (n, d)
        return recs, recs.m[:, None] * base, "E_p = s_p Σ_q M[p,q] V_q Σ^-½ (out-links of p)"
    recs = tr.links("dst", [tr.particles[p]])
    s = tr.scale[p] if tensor == EMBED else 1.0
    rule = ("E_p = s_p H_p = s_p Σ_s M[s,p] U_s Σ^-½ (filled row: in-links of p)"
            if tensor == EMBED else "H_r = Σ_s M[s,r] U_s Σ^-½ (in-links of r)")
    return recs, s * recs.m[:, None] * tr.u_half(recs.src), rule


def explain(tr: Trace, recs: Records, terms: np.ndarray, value: float, top: int | None) -> dict:
    """Links and neurons sorted by |share| of `value`; links + other + residual = value."""
    total = float(terms.sum())
    share = (lambda x: float(x) / value if value else None)  # noqa: E731
    order = np.argsort(-np.abs(terms), kind="stable")
    shown = order if top is None else order[:top]
    names = tr.names(np.concatenate([recs.src[shown], recs.dst[shown]]))
    links = [{"seq": int(recs.seq[i]), "src": names[recs.src[i]], "dst": names[recs.dst[i]],
              "src_id": tr.particles[recs.src[i]], "dst_id": tr.particles[recs.dst[i]],
              "neuron": recs.neuron[i], "amount": recs.amount[i], "w": float(recs.w[i]),
              "m": float(recs.m[i]), "term": float(terms[i]), "share": share(terms[i])}
             for i in shown]
    who, at = np.unique(np.asarray(recs.neuron, dtype=object), return_inverse=True)
    by_neuron = np.bincount(at, weights=terms, minlength=len(who))           # (neurons,)
    neurons = [(who[k], float(by_neuron[k])) for k in np.argsort(-np.abs(by_neuron), kind="stable")]
    rest = float(terms[order[len(shown):]].sum())
    return {"value": value, "linear": total, "residual": value - total,
            "residual_share": share(value - total), "links_total": len(terms),
            "links": links, "other": {"links": len(terms) - len(shown), "term": rest,
                                      "share": share(rest)},
            "neurons": [{"neuron": n, "term": t, "share": share(t)} for n, t in neurons],
            "clipped_records": recs.clipped}


# -- the model around the zero-layer floor ----------------------------------------------------
def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x) + eps)


def forward_one(tr: Trace, x: np.ndarray) -> tuple[np.ndarray, list[tuple[str, int, np.ndarray]]]:
    """The residual stream after every layer for a one-token prompt (it attends to itself
    only, so attention is o_proj(v_proj(x))); returns the normed final state and the parts."""
    eps, parts = float(tr.cfg["rms_norm_eps"]), []
    with safe_open(tr.out / WEIGHTS, framework="np") as f:
        get = lambda n: f.get_tensor(n).astype(np.float64)  # noqa: E731
        for layer in range(tr.layers):
            pre = f"model.layers.{layer}"
            h = _rms(x, eps) * get(f"{pre}.input_layernorm.weight")
            a = get(f"{pre}.self_attn.o_proj.weight") @ (get(f"{pre}.self_attn.v_proj.weight") @ h)
            x = x + a
            h = _rms(x, eps) * get(f"{pre}.post_attention_layernorm.weight")
            gate = get(f"{pre}.mlp.gate_proj.weight") @ h + get(f"{pre}.mlp.gate_proj.bias")
            up = get(f"{pre}.mlp.up_proj.weight") @ h + get(f"{pre}.mlp.up_proj.bias")
            m = get(f"{pre}.mlp.down_proj.weight") @ (gate / (1 + np.exp(-gate)) * up) \
                + get(f"{pre}.mlp.down_proj.bias")
            x = x + m
            parts += [("attention", layer, a), ("mlp", layer, m)]
        norm = get("model.norm.weight") / np.sqrt(np.mean(x * x) + eps)      # (d,) frozen
    return norm, parts


def head_scores(tr: Trace, p: int, q: int) -> list[dict]:
    """x_P W_Q W_Kᵀ x_Qᵀ / √d_h per layer and head, x the normed embedding rows (the exact
    input of layer 0; deeper layers also see the earlier layers' outputs)."""
    e = tr.embed([p, q])
    eps, out = float(tr.cfg["rms_norm_eps"]), []
    for layer in range(tr.layers):
        pre = f"model.layers.{layer}.self_attn"
        g = tr.tensor(f"model.layers.{layer}.input_layernorm.weight")
        qv = (tr.tensor(f"{pre}.q_proj.weight") @ (_rms(e[0], eps) * g)).reshape(tr.heads, tr.dh)
        kv = (tr.tensor(f"{pre}.k_proj.weight") @ (_rms(e[1], eps) * g)).reshape(tr.heads, tr.dh)
        for head in range(tr.heads):
            out.append({"layer": layer, "head": head, "semcons": tr.head_semcons(head),
                        "power": tr.record["attention_powers"][layer],
                        "gain": tr.cfg["attn_gain"] * tr.kappa ** layer,
                        "score": float(qv[head] @ kv[head]) / np.sqrt(tr.dh)})
    return out


# -- queries --------------------------------------------------------------------------------
def trace_pair(tr: Trace, p_ref: str, q_ref: str, top: int | None = 20) -> dict:
    """Why the model ranks Q after P: the zero-layer logit split over links and neurons,
    the one-token model logit split by layer, and the compiled attention scores."""
    p, q = tr.resolve(p_ref), tr.resolve(q_ref)
    e_p, h_q = tr.embed([p])[0], tr.output([q])[0]
    recs, vectors, rule = row_terms(tr, EMBED, p)
    tr.names([p, q, *recs.src, *recs.dst])
    logit = float(e_p @ h_q)
    zero = {"rule": rule, "exact": True, **explain(tr, recs, vectors @ h_q, logit, top)}
    norm, parts = forward_one(tr, e_p)
    x = e_p + sum(v for _, _, v in parts)
    zero["rank"] = model_rank = None
    if len(tr.particles) * tr.d <= RANK_MAX:      # ranks read the whole head
        out_rows = tr.tensor(EMBED if tr.tied else HEAD)[len(SPECIAL_TOKENS):]  # (V, d)
        zero["rank"] = int((out_rows @ e_p > logit).sum()) + 1
        model_rank = int((out_rows @ (norm * x) > float(norm * x @ h_q)).sum()) + 1
    model = {"logit": float(norm * x @ h_q), "rank": model_rank,
             "embedding": float(norm * e_p @ h_q), "exact": False, "note": APPROX_LAYERS,
             "split": "direct logit attribution: additive, the final RMSNorm scale frozen",
             "layers": [{"kind": k, "layer": l, "logit": float(norm * v @ h_q)} for k, l, v in parts]}
    return {"query": "pair", "checkpoint": str(tr.out), "snapshot": tr.snap.id,
            "p": tr.describe(p), "q": tr.describe(q), "particles": len(tr.particles),
            "zero_layer": zero, "model": model, "heads": head_scores(tr, p, q)}


def trace_tensor(tr: Trace, name: str, index: tuple[int, int | None], top: int | None = 20) -> dict:
    """The links behind one weight entry (I, J) or one row (I) of a tensor."""
    with safe_open(tr.out / WEIGHTS, framework="np") as f:
        if name not in f.keys():
            hint = f" (tied: the head is {EMBED})" if name == HEAD and tr.tied else ""
            raise GraftError(f"{name!r} is not a tensor of {tr.out}{hint}")
        shape = f.get_slice(name).get_shape()
    i, j = index
    if not (0 <= i < shape[0]) or (j is not None and not (len(shape) > 1 and 0 <= j < shape[1])):
        raise GraftError(f"index {i},{j} is outside {name} of shape {shape}")
    out = {"query": "tensor", "checkpoint": str(tr.out), "snapshot": tr.snap.id, "tensor": name,
           "shape": shape, "index": [i, j]}
    if name in (EMBED, HEAD):
        return {**out, **_embedding_entry(tr, name, i, j, top)}
    attn = _ATTN.fullmatch(name)
    if attn and j is not None:
        return {**out, **_attention_entry(tr, int(attn.group(1)), attn.group(2), i, j, top)}
    value = (float(tr.tensor(name)[i]) if len(shape) == 1 else
             float(tr.rows(name, [i])[0][j]) if j is not None else None)
    why = ("give --index I,J for an attention weight entry" if attn else
           "norm weights, MLP biases and up_proj are constants; gate/down come from PPMI over "
           "seeded random walks (logs of sampled counts), which do not split over links")
    return {**out, "value": value, "exact": False, "attributable": False, "why": why}


def _embedding_entry(tr: Trace, name: str, i: int, j: int | None, top) -> dict:
    if i < len(SPECIAL_TOKENS):
        return {"value": 0.0, "exact": True, "rule": "special token: a zero row, no links"}
    p = i - len(SPECIAL_TOKENS)
    row = tr.rows(name, [i])[0]
    recs, vectors, rule = row_terms(tr, name, p)
    if j is not None:
        return {"particle": tr.describe(p), "rule": rule, "exact": True,
                **explain(tr, recs, vectors[:, j], float(row[j]), top)}
    norm = float(np.linalg.norm(row))
    along = vectors @ row / norm if norm else np.zeros(len(vectors))
    return {"particle": tr.describe(p), "rule": rule + "; each link's vector projected on the row",
            "exact": True, **explain(tr, recs, along, norm, top)}


def _attention_entry(tr: Trace, layer: int, kind: str, i: int, j: int, top) -> dict:
    """First-order split of one q/k/v/o_proj entry over the links of its head (docstring)."""
    if layer >= tr.layers:
        raise GraftError(f"layer {layer} is outside the checkpoint's {tr.layers} layers")
    # HF [out, in]: q/k/v rows are head dims, o_proj columns are.
    slot, dim = (j, i) if kind == "o" else (i, j)
    head, pre = slot // tr.dh, f"model.layers.{layer}.self_attn"
    wq, wk = tr.rows(f"{pre}.q_proj.weight", [slot])[0], tr.rows(f"{pre}.k_proj.weight", [slot])[0]
    value = float(tr.rows(f"{pre}.{kind}_proj.weight", [i])[0][j])
    gain = tr.cfg["attn_gain"] * tr.kappa ** layer
    base = {"head": head, "semcons": tr.head_semcons(head), "layer": layer, "exact": False,
            "power": tr.record["attention_powers"][layer], "gain": gain,
            "rule": "P = Σ_ℓ w_ℓ E_pᵀ(A_s^(k-1) E)_q with the SVD basis of P held fixed "
                    "(first order; k-paths credited to their first hop)"}
    scale = float(np.linalg.norm(wq))
    if scale == 0 or (kind == "o" and gain == 0):
        why = ("attention gain is 0" if scale else
               "an unused head dim (RoPE pair 0, or past the head's rank)")
        return {**base, "value": value, "why": f"zero by construction: {why}", "links": []}
    recs = _head_records(tr, head)
    e = tr.tensor(EMBED)[len(SPECIAL_TOKENS):]                                 # (V, d)
    a = sp.csr_array((recs.w, (recs.src, recs.dst)), shape=(len(e), len(e)))
    y = e
    for _ in range(base["power"] - 1):
        y = a @ y                                                             # (V, d)
    if kind == "q":
        z = y @ (wk / np.linalg.norm(wk))                                     # (V,) Y v_j
        sigma = np.linalg.norm(e.T @ (a @ z))                                 # ‖P v_j‖
        terms = recs.w * e[recs.src, dim] * z[recs.dst] * scale / sigma
    else:
        z = e @ (wq / scale)                                                  # (V,) E u_j
        sigma = np.linalg.norm(y.T @ (a.T @ z))                               # ‖Pᵀ u_j‖
        factor = {"k": scale, "v": 1.0, "o": gain}[kind] / sigma
        terms = recs.w * y[recs.dst, dim] * z[recs.src] * factor
    return {**base, "sigma": float(sigma), **explain(tr, recs, terms, value, top)}


def _head_records(tr: Trace, head: int) -> Records:
    """Every record typed by a semcon of `head`, as the compile assigned them."""
    links = snapshot_links(tr.store, tr.snap)
    labels = links.filter(links.column("is_label"))
    content = links.filter(pc.invert(links.column("is_label")))
    found = [graph_semcons.Semcon(p, 0.0, 0.0, 0) for p in tr.semcons]
    which = graph_semcons.assign_semcons(
        np.asarray(content.column("axon").to_pylist(), dtype=object),
        np.asarray(labels.column("src").to_pylist(), dtype=object),
        np.asarray(labels.column("dst").to_pylist(), dtype=object),
        labels.column("w").to_numpy(), found)
    return tr.records(content.filter(pa.array(which % tr.heads == head)), weighted=False)


def trace_link(tr: Trace, link: list[str]) -> dict:
    """What one record (by seq) or every record P → Q touches, and by how much."""
    if len(link) == 1 and link[0].isdigit():
        table = tr.store.arrow(sql.PROVENANCE_SEQ, {"max_seq": tr.snap.max_seq,
                                                    "seq": int(link[0])})
        if table.num_rows == 0:
            raise GraftError(f"no link with seq {link[0]} in snapshot {tr.snap.id[:16]}… "
                             f"(max_seq {tr.snap.max_seq})")
        src, dst = table.column("src")[0].as_py(), table.column("dst")[0].as_py()
        if src not in tr.index or dst not in tr.index:
            sem = tr.semcons.index(src) if src in tr.semcons else None
            by = (f"semcon {tr.semcon_names[sem]} (head {sem % tr.heads})" if sem is not None
                  else "a particle that is not one of the compile's semcons")
            return {"query": "link", "seq": int(link[0]), "src_id": src, "dst_id": dst,
                    "touches": [], "why": f"a label link from {by} onto an axon: it types the "
                    "links of that axon, picking their head, but enters no matrix itself"}
        p, q = tr.index[src], tr.index[dst]
    elif len(link) == 2:
        p, q = tr.resolve(link[0]), tr.resolve(link[1])
        table = tr.query(sql.PROVENANCE_FROM, [tr.particles[p]])
        table = table.filter(pc.equal(table.column("dst"), tr.particles[q]))
    else:
        raise GraftError(f"--link takes a seq or two particles P Q; got {link}")
    recs = tr.records(table)
    out = {"query": "link", "checkpoint": str(tr.out), "snapshot": tr.snap.id,
           "p": tr.describe(p), "q": tr.describe(q), "clipped_records": recs.clipped,
           "proposals": proposals_of(tr.store, tr.particles[p], tr.particles[q]),
           "records": [{"seq": int(s), "neuron": n, "amount": a, "w": float(w), "m": float(m)}
                       for s, n, a, w, m in zip(recs.seq, recs.neuron, recs.amount, recs.w, recs.m)]}
    if not len(recs.m):
        return {**out, "touches": [], "why": "no record with effective stake > 0 from P to Q"}
    m = float(recs.m.sum())
    return {**out, "m": m, "touches": _touches(tr, p, q, m), "heads": _link_heads(tr, p, q, recs)}


def proposals_of(store: Store, src: str, dst: str) -> list[dict]:
    """The decided proposals of the loop behind a link p → q: the cycle that proposed it,
    who decided, the confidence and evidence, and the vault notes it was written into."""
    import json
    from graph import sql_vault
    cols = ("id", "cycle", "status", "reviewer", "confidence", "staked", "decided",
            "evidence", "notes")
    out = []
    for row in store.query(sql_vault.PROPOSALS_OF_PAIR, {"src": src, "dst": dst}):
        r = dict(zip(cols, row))
        evidence = json.loads(r["evidence"]) if r["evidence"] else {}
        shares = evidence.get("contributions", {})
        r["evidence"] = {"contributions": dict(sorted(shares.items(), key=lambda kv: -abs(kv[1]))[:5]),
                         "lines": evidence.get("lines", [])[:3]}
        out.append(r)
    return out


def _touches(tr: Trace, p: int, q: int, m: float) -> list[dict]:
    """The link's exact vector in every row it enters: E_p, H_q and (q filled) E_q."""
    e, h_q, u_p = tr.embed([p, q]), tr.head([q])[0], tr.u_half([p])[0]
    rows = []
    if not tr.filled[p]:
        rows.append((EMBED, p, e[0], tr.scale[p] * m * h_q * tr.inv_sigma))
    if tr.filled[q]:
        rows.append((EMBED, q, e[1], tr.scale[q] * m * u_p))
    if not tr.tied:
        rows.append((HEAD, q, h_q, m * u_p))
    out = []
    for name, r, row, c in rows:
        norm = float(np.linalg.norm(row))
        out.append({"tensor": name, "row": len(SPECIAL_TOKENS) + r, "norm": float(np.linalg.norm(c)),
                    "row_norm": norm, "share": float(c @ row) / norm ** 2 if norm else None})
    o_q = tr.output([q])[0]
    logit_term = float((tr.scale[p] * m * h_q * tr.inv_sigma) @ o_q) if not tr.filled[p] else None
    out.append({"tensor": "zero-layer logit(P→Q)", "row": None, "term": logit_term,
                "value": float(e[0] @ o_q)})
    return out


def _link_heads(tr: Trace, p: int, q: int, recs: Records) -> list[dict]:
    """The head the link feeds (its semcon) and its exact part of P = Eᵀ A_s E at power 1."""
    axon = ids.axon(tr.particles[p], tr.particles[q], tr.store.hash_name)
    labels = tr.query(sql.PROVENANCE_TO, [axon])
    found = [graph_semcons.Semcon(s, 0.0, 0.0, 0) for s in tr.semcons]
    sem = int(graph_semcons.assign_semcons(
        np.asarray([axon], dtype=object), np.asarray(labels.column("src").to_pylist(), dtype=object),
        np.asarray([axon] * labels.num_rows, dtype=object), labels.column("w").to_numpy(), found)[0])
    head, e = sem % tr.heads, tr.embed([p, q])
    scores = {(s["layer"], s["head"]): s["score"] for s in head_scores(tr, p, q)}
    rows = f"rows {head * tr.dh}..{(head + 1) * tr.dh - 1}"
    out = []
    for layer, power in enumerate(tr.record["attention_powers"]):
        dp = float(recs.w.sum() * np.linalg.norm(e[0]) * np.linalg.norm(e[1])) if power == 1 else None
        out.append({"layer": layer, "head": head, "semcon": tr.semcon_names[sem], "power": power,
                    "tensors": f"model.layers.{layer}.self_attn.{{q,k,v}}_proj {rows}; o_proj columns",
                    "delta_P_fro": dp, "score": scores[(layer, head)],
                    "note": None if power == 1 else "feeds k-hop paths starting with this link"})
    return out


# -- entry point and text -------------------------------------------------------------------
def trace(store: Store, out: Path, *, pair=None, tensor=None, index=None, link=None,
          top: int | None = 20) -> dict:
    """`graft trace`: exactly one of pair (P, Q), tensor (with index "I" or "I,J"), link."""
    if sum(x is not None for x in (pair, tensor, link)) != 1:
        raise GraftError("trace: give exactly one of --pair, --tensor, --link")
    top = None if top is not None and top <= 0 else top
    tr = Trace(store, out)
    if pair is not None:
        return trace_pair(tr, *pair, top=top)
    if link is not None:
        return trace_link(tr, list(link))
    if not index or not re.fullmatch(r"\d+(,\d+)?", index.replace(" ", "")):
        raise GraftError(f"--tensor needs --index I,J (or I for a row); got {index!r}")
    i, _, j = index.replace(" ", "").partition(",")
    return trace_tensor(tr, tensor, (int(i), int(j) if j else None), top=top)


def format_trace(result: dict) -> str:
    """A readable report of a trace() result."""
    kind = result["query"]
    if kind == "pair":
        z, mo = result["zero_layer"], result["model"]
        lines = [f"P {_who(result['p'])}  →  Q {_who(result['q'])}",
                 f"zero-layer logit {z['value']:.6g} (rank {z['rank']} of {result['particles']}), "
                 f"exact: {z['rule']}", *_explained(z),
                 f"model logit, one-token prompt: {mo['logit']:.6g} (rank {mo['rank']}) = "
                 f"embedding {mo['embedding']:.6g} + "
                 + " + ".join(f"{x['kind']}[{x['layer']}] {x['logit']:.4g}" for x in mo["layers"]),
                 f"  ({mo['split']}; {mo['note']})", "compiled attention scores x_P W_Q W_Kᵀ x_Qᵀ/√d_h:",
                 _table(["layer", "head", "semcons", "power", "gain", "score"],
                        [[h["layer"], h["head"], ",".join(h["semcons"]), h["power"], h["gain"],
                          h["score"]] for h in result["heads"]])]
        return "\n".join(lines)
    if kind == "tensor":
        i, j = result["index"]
        at = f"{result['tensor']}[{i}{'' if j is None else f', {j}'}]"
        head = (f"head {result['head']} (semcons {', '.join(result['semcons'])}), layer "
                f"{result['layer']}, power {result['power']}, gain {result['gain']:.3g}; "
                if "head" in result else "")
        if "links" not in result:
            return f"{at} = {_num(result.get('value'))}\n{head}{result.get('why') or result['rule']}"
        value = "‖row‖" if j is None else "value"
        return "\n".join([f"{at}: {value} {result['value']:.6g}",
                          f"{head}{'exact' if result['exact'] else 'approximate'}: {result['rule']}",
                          *([result["why"]] if "why" in result else _explained(result))])
    if "p" not in result:
        return f"link {result['seq']}: {result['why']}"
    lines = [f"link {_who(result['p'])} → {_who(result['q'])}",
             _table(["seq", "neuron", "amount", "w", "m"],
                    [[r["seq"], r["neuron"], r["amount"], r["w"], r["m"]] for r in result["records"]])]
    for r in result.get("proposals", []):
        why = ", ".join(f"{k} {v:+.3g}" for k, v in r["evidence"]["contributions"].items())
        lines.append(f"proposal {r['id']} of cycle {r['cycle']}: {r['status']} by {r['reviewer']} "
                     f"on {r['decided']} (confidence {r['confidence']:.2f}"
                     + (f"; evidence {why}" if why else "") + ")"
                     + (f"; written into {r['notes']}" if r["notes"] else ""))
    if not result["touches"]:
        return "\n".join(lines + [result["why"]])
    lines += ["touches (exact, SVD basis as compiled):",
              _table(["tensor", "row", "‖contribution‖", "‖row‖", "share"],
                     [[t["tensor"], t["row"], t.get("norm", t.get("term")), t.get("row_norm", t.get("value")),
                       _pct(t.get("share"))] for t in result["touches"]]),
              "attention (the head of the link's semcon; ‖ΔP‖_F its exact part of P at power 1):",
              _table(["layer", "head", "semcon", "power", "‖ΔP‖_F", "score", "tensors"],
                     [[h["layer"], h["head"], h["semcon"], h["power"], h["delta_P_fro"], h["score"],
                       h["tensors"]] for h in result["heads"]]),
              "MLP: built from random walks over all links; not attributable to one link"]
    return "\n".join(lines)


def _explained(x: dict) -> list[str]:
    rows = [[_pct(r["share"]), r["term"], r["seq"], f"{r['src']} → {r['dst']}", r["neuron"],
             r["amount"]] for r in x["links"]]
    if x["other"]["links"]:
        rows.append([_pct(x["other"]["share"]), x["other"]["term"], "", f"({x['other']['links']} more)",
                     "", ""])
    rows.append([_pct(x["residual_share"]), x["residual"], "", "(residual: stored − sum)", "", ""])
    neurons = [[_pct(n["share"]), n["term"], n["neuron"]] for n in x["neurons"][:10]]
    return [f"  {x['links_total']} links sum to {x['linear']:.6g}",
            _table(["share", "term", "seq", "link", "neuron", "amount"], rows, indent=2),
            "  by neuron:", _table(["share", "term", "neuron"], neurons, indent=4)]


def _who(d: dict) -> str:
    return f"{d['name']} ({d['particle'][:12]}…, token {d['token']}{', filled' if d['filled'] else ''})"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x) -> str:
    return "-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def _table(headers: list[str], rows: list[list], indent: int = 0) -> str:
    cells = [headers] + [[_num(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    return "\n".join(" " * indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in cells)
