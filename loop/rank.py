"""The extractor's ranker: which particle q a source p should link, from text and the models.

An LM tuned on text learns what gets *mentioned*, not what gets *linked* (DESIGN §7); unlinked
mentions find most missing links but rank them poorly. The ranker scores (p, q) by a weighted
sum of features, and the weights are fitted on what curators did: on a fold of the store
(loop/fold.py) with a share of its links hidden, the hidden target of each link is chosen
over every other candidate by a softmax (a listwise preference objective: a page's linked
mentions over its unlinked ones, and over everything else).

Features of (p, q), each over the whole particle index, in three groups (`graft eval
--ablate` refits the ranker without each group and reports what it was worth):

  text — read from the store, no model (loop/textstats.py, loop/embed.py):
    mention            1 when q's name or an alias occurs in p's text (finetune/text.py matching)
    mention_count      log(1 + times it occurs)
    back_mention       1 when p's name occurs in q's text
    indegree           log(1 + distinct sources linking q with token `link`)
    link_prob          log of q's link probability: (pages naming q that link it + ½) /
                       (pages naming q + 2) — how often curators link q where it is named
    link_prob_mention  link_prob × mention: the same, only where p names q
    anchor_prob        where p names q, log of the phrase's anchor probability: (pages using
                       that name or alias whose page links q + ½) / (pages using it + 2) — the
                       best of the phrases p uses; 0 where p does not name q
    early_mention      1 − (index of q's first match in p's text) / (matches in p's text)
    comention          log(1 + other pages whose text names both p and q)
    reverse_link       1 when q links p
    embed_sim          cosine of all-MiniLM-L6-v2 embeddings of "name: text" (when installed)
    text_neighbours    log(0.01 + share of the 20 pages whose text is nearest p's that link q,
                       each weighted by its cosine): what pages like p link (when installed)
  compiled — the compiled checkpoint:
    in_model           1 when the checkpoint knows q (model scores of others are filled in)
    zero_layer         E_p · H_q of the checkpoint (the compiled spectral score)
    compiled           log P_compiled(q | p): the compiled model's next particle after [p]
  tuned — the checkpoint with the adapter tuned on text:
    tuned              log P_tuned(q | p) (compiled + adapter); absent without an adapter
    tuned_context      log P_tuned(q | p's link row): after p, the particles its text names,
                       </s> and p's known targets (loop/linkrows.py) — which page p links next

Every proposal carries the features and each one's share of its score (weight × value), so a
curator can see why it was proposed.

Letters in shape comments: P particles in the index, S sources, F features, T checkpoint
tokens, n fitting queries.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from graph.checkpoint import SPECIAL_TOKENS
from graph.errors import GraftError
from graph.runtime import device_of
from loop.evaluate import EvalGraph, Scorer, checkpoint_positions

TEXT_FEATURES = ("mention", "mention_count", "back_mention", "indegree", "link_prob",
                 "link_prob_mention", "anchor_prob", "early_mention", "comention",
                 "reverse_link", "embed_sim", "text_neighbours")
COMPILED_FEATURES = ("in_model", "zero_layer", "compiled")
TUNED_FEATURES = ("tuned", "tuned_context")
MODEL_FEATURES = COMPILED_FEATURES + TUNED_FEATURES
GROUPS = {"text": TEXT_FEATURES, "compiled": COMPILED_FEATURES, "tuned": TUNED_FEATURES}
# features whose values mean the same on every path that scores them (the models' log P are
# logits on a large graph's candidate path, loop/extract.py): a fitted ranker clips these to
# the range its fit saw (Ranker.bounds)
BOUNDED = TEXT_FEATURES + ("in_model", "zero_layer")


@dataclass(frozen=True)
class Ranker:
    """Feature weights; score(p, q) = Σ weights[i] · feature_i(p, q) — or, with `model` (a
    LightGBM lambdarank booster in its text format, loop/gbm.py), the booster's score; the
    weights are then the linear fit it was chosen over.

    `bounds`: {feature: (lo, hi)}, the range of each BOUNDED feature over the candidates the
    fit ranked; a feature is clipped to it before it is weighed, so a linear ranker never
    extrapolates. The case it is for: a link the loop staked is compiled into the next
    model, whose E_p · H_q for it is then a memorised link's (WordNet: median 32, where the
    fold's candidates reach 2.3 at their 99.9th percentile), and a ranker whose zero_layer
    weight came out negative buried those pairs at evaluation (median rank 82)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    fit: dict = field(default_factory=dict)     # how it was fitted and how well
    model: str = ""                             # a booster's text model, or "" (linear)
    bounds: dict = field(default_factory=dict)  # feature → (lo, hi) it is clipped to

    @property
    def kind(self) -> str:
        return "lgbm" if self.model else "linear"

    def clipped(self, x: np.ndarray) -> np.ndarray:
        """(…, F) features in self.features order with the bounded ones clipped (a copy when
        any is)."""
        at = [(i, self.bounds[f]) for i, f in enumerate(self.features) if f in self.bounds]
        if not at:
            return x
        x = np.array(x, dtype=np.float32)
        for i, (lo, hi) in at:
            np.clip(x[..., i], lo, hi, out=x[..., i])
        return x

    def score(self, x: np.ndarray) -> np.ndarray:
        """(S, P) scores of (S, P, F) features in self.features order."""
        x = self.clipped(x)
        if self.model:
            from loop import gbm
            return gbm.predict(self.model, x)
        return x @ np.asarray(self.weights, dtype=np.float32)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(n, F) each feature's share of the score of n rows (n, F): weight × value (clipped
        as score() clips it), or the booster's TreeSHAP values."""
        x = self.clipped(x)
        if self.model:
            from loop import gbm
            return gbm.contributions(self.model, x)
        return x * np.asarray(self.weights)[None, :]

    def blended(self, other: Ranker, share: float = 0.5) -> Ranker:
        """(1 − share) · self + share · other: two linear rankers' weights averaged over the
        union of their features (a feature one of them lacks weighs 0 in it), each bounded
        feature clipped to the union of their ranges. Its `fit` is other's."""
        if self.model or other.model:
            raise GraftError("only linear rankers blend (a booster has no weights to average)")
        names = tuple(dict.fromkeys(self.features + other.features))
        mine, theirs = dict(zip(self.features, self.weights)), dict(zip(other.features,
                                                                        other.weights))
        weights = tuple((1 - share) * mine.get(f, 0.0) + share * theirs.get(f, 0.0)
                        for f in names)
        bounds = {}
        for f in names:
            ranges = [r.bounds[f] for r in (self, other) if f in r.bounds]
            if ranges:
                bounds[f] = (min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
        return Ranker(names, weights, dict(other.fit), bounds=bounds)

    def __post_init__(self):
        unknown = [f for f in self.features if f not in TEXT_FEATURES + MODEL_FEATURES]
        unbounded = [f for f in self.bounds if f not in BOUNDED or f not in self.features]
        if unknown or unbounded or len(self.features) != len(self.weights):
            raise GraftError(f"bad ranker: features {list(self.features)}, "
                             f"{len(self.weights)} weights (unknown: {unknown}; bounds of "
                             f"features it cannot bound: {unbounded})")

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**asdict(self), "features": list(self.features),
                                    "weights": list(self.weights),
                                    "bounds": {f: list(b) for f, b in self.bounds.items()}},
                                   indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Ranker:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(tuple(raw["features"]), tuple(float(w) for w in raw["weights"]),
                       raw.get("fit", {}), str(raw.get("model") or ""),
                       {f: (float(lo), float(hi)) for f, (lo, hi)
                        in (raw.get("bounds") or {}).items()})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GraftError(f"{path}: not a ranker file ({exc})") from None


def mention_matrix(graph: EvalGraph) -> sp.csr_array:
    """(P, P) how often q's name or an alias occurs in p's text (p itself left out)."""
    from loop.textstats import mentions
    return mentions(graph)[0]


class Features:
    """Feature blocks (S, P, F) over an EvalGraph's index, for one checkpoint and adapter.

    Args:
        graph: the store (or fold) as loop/evaluate.py loads it.
        model_dir: the compiled checkpoint.
        adapter: its tuned LoRA adapter, or None (no `tuned` feature).
        embed_cache: where the text embeddings of `embed_sim` are cached (loop/embed.py);
            None computes them in memory.
        embed: offer `embed_sim` (only when loop.embed.available()).
        device: where the models run (graph.runtime.resolve_device); features come back as
            numpy arrays on the CPU either way.
    """

    def __init__(self, graph: EvalGraph, model_dir: Path, adapter: Path | None = None,
                 embed_cache: Path | None = None, embed: bool = True, device: str = "auto"):
        from loop import embed as text_embed
        from loop.extract import load_pair
        from loop.textstats import text_stats
        self.graph = graph
        self.stats = text_stats(graph)
        self.mention = self.stats.mention                                     # (P, P)
        self.back = self.mention.T.tocsr()
        self.indegree = np.log1p(graph.link_indegree).astype(np.float32)      # (P,)
        self.ckpt = checkpoint_positions(model_dir, graph.index)             # (P,)
        self.have = np.flatnonzero(self.ckpt >= 0)
        self.model, self.switch_off = load_pair(Path(model_dir), adapter, device)
        # a fully tuned model (not a peft one) is switched to the compiled one by swapping
        # its weights in place (load_pair)
        self.swaps_weights = self.switch_off is not None and not hasattr(self.model,
                                                                         "peft_config")
        self.device = device_of(self.model)
        self.pages = None
        # the tuned model's own guess at p's next link: after p's link row when it was tuned
        # on link rows (loop/linkrows.py), else after [p] alone
        self.lm_feature = "tuned"
        self.halves = False               # cross-fitted: a second adapter for half the pages
        if adapter is not None:
            from loop.linkrows import OTHER, LinkRowConfig, PageContexts
            if (Path(adapter) / LinkRowConfig.FILE).exists():
                self.lm_feature = "tuned_context"
            if (Path(adapter) / OTHER / "adapter_config.json").exists():
                self.model.load_adapter(str(Path(adapter) / OTHER), adapter_name="other")
                self.model.set_adapter("default")
                self.halves = True
            self.pages = PageContexts(graph, Path(model_dir), LinkRowConfig.of_adapter(adapter))
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        offset = len(SPECIAL_TOKENS)
        emb = base.get_input_embeddings().weight.detach().float().cpu()       # (T, d)
        head = base.lm_head.weight.detach().float().cpu()                     # (T, d)
        self.embed = emb[offset:].numpy()                                     # by ckpt position
        self.head = head[offset + torch.as_tensor(self.ckpt[self.have])].numpy()
        self._embed_cache = embed_cache
        self._text_vectors: np.ndarray | None = None                          # (P, 384)
        self._near: tuple[np.ndarray, np.ndarray] | None = None               # (P, k) each
        self._model_top = None                          # loop.candidates.InnerTop of head
        text = tuple(f for f in TEXT_FEATURES if f not in ("embed_sim", "text_neighbours")
                     or (embed and text_embed.available()))
        self.names = text + COMPILED_FEATURES + (TUNED_FEATURES if adapter is not None else ())
        # blocks of sources may be scored on several threads (graph.runtime.block_pool):
        # each thread keeps its own last sources' features, and one thread at a time runs
        # the model (an adapter is switched off and on around the compiled model's turn)
        self._local = threading.local()                 # .memo: the last sources' features
        self._lock = threading.RLock()

    def block(self, sources: np.ndarray, names: tuple[str, ...] | None = None) -> np.ndarray:
        """(S, P, F) float32: the features `names` (default: all this checkpoint has).

        The last sources' features are kept, so scoring them with several rankers (an
        ablation) runs the models once."""
        names = self._checked(names)
        have = self._kept(sources, names)
        out = np.empty((len(sources), len(self.graph.index), len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            out[..., i] = have[name]
        return out

    def scores(self, sources: np.ndarray, ranker: Ranker) -> np.ndarray:
        """(S, P) float32: `ranker`'s scores of `sources` over the index, as
        ranker.score(block(sources, ranker.features)) gives them. A linear ranker's are
        summed feature by feature (in float32, in the ranker's order) without the (S, P, F)
        block: at 117k particles, writing that block feature by feature was two thirds of
        an evaluation."""
        if ranker.model:
            return ranker.score(self.block(sources, ranker.features))
        have = self._kept(sources, self._checked(ranker.features))
        out = np.zeros((len(sources), len(self.graph.index)), dtype=np.float32)
        for name, w in zip(ranker.features, ranker.weights):
            x = have[name]
            if name in ranker.bounds:
                x = np.clip(x, *ranker.bounds[name])
            out += np.float32(w) * x
        return out

    def _kept(self, sources: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """{name: (S, P)} for `names`, computing only those the last sources lack."""
        sources = np.asarray(sources, dtype=np.int64)
        key = sources.tobytes()
        memo = getattr(self._local, "memo", None)
        if memo is None or memo[0] != key:
            memo = self._local.memo = (key, {})
        have = memo[1]
        todo = tuple(n for n in names if n not in have)
        if todo:
            have.update(self._compute(sources, todo))
        return have

    def _checked(self, names: tuple[str, ...] | None) -> tuple[str, ...]:
        """`names` (default: all this checkpoint has), each one available here."""
        names = names or self.names
        missing = [n for n in names if n not in self.names]
        if missing:
            raise GraftError(f"features {missing} are not available here (a tuned adapter, or "
                             f"the embedding package, is missing); this extractor has "
                             f"{list(self.names)}")
        return names

    def pairs(self, src: np.ndarray, dst: np.ndarray, names: tuple[str, ...] | None = None,
              batch: int | None = None, normalised: bool = True) -> np.ndarray:
        """(n, F) float32: the features `names` of the n pairs (src[i], dst[i]) — what block()
        gives at those pairs, without an (S, P) array per feature: the text features are
        looked up in their sparse matrices and vectors, and only the features that need a
        source's whole row (the models' softmax, a page's nearest pages by text) compute it,
        `batch` sources at a time (memory flat in the number of sources). This is how a
        large graph's candidates are scored (loop/extract.py).

        normalised=False: the model features are logits z(q | p) rather than log P(q | p) —
        log P less each source's log-partition, a constant of the source that a linear
        ranker's softmax over that source's candidates cancels — so no V-wide output head
        runs per source (pair_logits)."""
        names = self._checked(names)
        src = np.asarray(src, dtype=np.int64).reshape(-1)
        dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        st = self.stats
        out = np.empty((len(src), len(names)), dtype=np.float32)
        if not len(src):
            return out
        look = {"mention": lambda: self.mention[src, dst] > 0,
                "mention_count": lambda: np.log1p(self.mention[src, dst]),
                "back_mention": lambda: self.back[src, dst] > 0,
                "indegree": lambda: self.indegree[dst],
                "link_prob": lambda: st.link_prob[dst],
                "link_prob_mention": lambda: (self.mention[src, dst] > 0) * st.link_prob[dst],
                "anchor_prob": lambda: st.anchor[src, dst],
                "early_mention": lambda: st.early[src, dst],
                "comention": lambda: np.log1p(st.comention[src, dst]),
                "reverse_link": lambda: st.reverse[src, dst],
                "in_model": lambda: self.ckpt[dst] >= 0,
                "embed_sim": lambda: np.einsum("nd,nd->n", self.text_vectors()[src],
                                               self.text_vectors()[dst]),
                "text_neighbours": lambda: self._pair_neighbours(src, dst)}
        if not normalised:
            look.update({n: (lambda n=n: self.pair_logits(src, dst, n))
                         for n in ("zero_layer", "compiled", "tuned", "tuned_context")})
        rows = [n for n in names if n not in look]
        for i, name in enumerate(names):
            if name in look:
                out[:, i] = np.asarray(look[name](), dtype=np.float32).reshape(-1)
        if rows:
            sources, at = np.unique(src, return_inverse=True)
            # ≥ 16 sources a pass: at 3M particles one source a pass reads the whole
            # output head (0.8 GB) per source, a matrix-vector product
            batch = batch or max(16, 4_000_000 // max(len(self.graph.index), 1))
            cols = [names.index(n) for n in rows]
            for lo in range(0, len(sources), batch):
                mine = np.flatnonzero((at >= lo) & (at < lo + batch))
                x = self._compute(sources[lo:lo + batch], tuple(rows))           # (B, P) each
                for c, name in zip(cols, rows):
                    out[mine, c] = x[name][at[mine] - lo, dst[mine]]
        return out

    def pair_logits(self, src: np.ndarray, dst: np.ndarray, name: str) -> np.ndarray:
        """(n,) the logit z(q | p) of model feature `name` at each pair: for compiled, tuned
        and tuned_context the final hidden state after p's prompt (or link row) times q's
        output row; for zero_layer E_p · H_q. Particles the checkpoint lacks get their
        source's least logit among these pairs (block() gives them the least of the whole
        row); sources it lacks get 0."""
        sources, at = np.unique(src, return_inverse=True)
        rows = self.ckpt[sources]                                              # (S,)
        ok = rows >= 0
        have = self.ckpt[dst] >= 0
        mine = np.flatnonzero(have & ok[at])
        out = np.zeros(len(src), dtype=np.float32)
        if name == "zero_layer":
            head_row = np.full(len(self.ckpt), -1, dtype=np.int64)
            head_row[self.have] = np.arange(len(self.have))
            out[mine] = np.einsum("nd,nd->n", self.embed[self.ckpt[src[mine]]],
                                  self.head[head_row[dst[mine]]])
        else:
            h = np.zeros((len(sources), self.embed.shape[1]), dtype=np.float32)  # (S, d)
            switch = self.switch_off if name == "compiled" and self.switch_off else nullcontext
            with self._lock, torch.no_grad(), switch():
                head = self.model.get_output_embeddings().weight.detach().float().cpu().numpy()
                if ok.any():
                    h[ok] = (self._by_half(rows[ok], self._context_hidden, h.shape[1])
                             if name == "tuned_context" else self._prompt_hidden(rows[ok]))
                if self.swaps_weights:         # the head is the compiled one only in here
                    head = head[len(SPECIAL_TOKENS) + self.ckpt[dst[mine]]]
            at_head = (np.arange(len(mine)) if self.swaps_weights
                       else len(SPECIAL_TOKENS) + self.ckpt[dst[mine]])
            out[mine] = np.einsum("nd,nd->n", h[at[mine]], head[at_head])
        least = np.full(len(sources), np.inf, dtype=np.float32)
        np.minimum.at(least, at[mine], out[mine])
        fill = np.flatnonzero(~have & ok[at])
        out[fill] = np.where(np.isfinite(least[at[fill]]), least[at[fill]], 0.0)
        return out

    def _prompt_hidden(self, rows: np.ndarray) -> np.ndarray:
        """(S', d) the active model's final hidden state after the one-token prompt [p]."""
        ids = torch.as_tensor(rows + len(SPECIAL_TOKENS))[:, None].to(self.device)
        return self.model.get_decoder()(input_ids=ids).last_hidden_state[:, -1].float().cpu() \
            .numpy()

    def _context_hidden(self, pages: np.ndarray, batch: int = 64) -> np.ndarray:
        """(S', d) the active model's final hidden state after each page's link-row context
        (left-padded as _next_after_contexts pads it)."""
        def hidden(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
            return self.model.get_decoder()(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).last_hidden_state[:, -1].float().cpu().numpy()
        return self._by_length(pages, batch, hidden, self.embed.shape[1])

    def _compute(self, sources: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """{name: (S, P)} for each of `names`."""
        st = self.stats
        logits = self._logits(sources, "compiled" in names, "tuned" in names)
        if "tuned_context" in names:
            logits["tuned_context"] = self._spread(sources, self._context_logits)
        out = {}
        named = (self.mention[sources].toarray() > 0
                 if {"mention", "link_prob_mention"} & set(names) else None)      # (S, P)
        for name in names:
            if name == "mention":
                x = named
            elif name == "mention_count":
                x = np.log1p(self.mention[sources].toarray())
            elif name == "back_mention":
                x = self.back[sources].toarray() > 0
            elif name == "indegree":
                x = np.broadcast_to(self.indegree[None, :], (len(sources), len(self.indegree)))
            elif name == "link_prob":
                x = np.broadcast_to(st.link_prob[None, :], (len(sources), len(st.link_prob)))
            elif name == "link_prob_mention":
                x = named * st.link_prob[None, :]
            elif name == "anchor_prob":
                x = st.anchor[sources].toarray()
            elif name == "early_mention":
                x = st.early[sources].toarray()
            elif name == "comention":
                x = np.log1p(st.comention[sources].toarray())
            elif name == "reverse_link":
                x = st.reverse[sources].toarray()
            elif name == "embed_sim":
                x = self._similarity(sources)
            elif name == "text_neighbours":
                x = self._neighbours(sources)
            elif name == "in_model":
                x = np.zeros((len(sources), len(self.graph.index)), dtype=np.float32)
                x[:, self.have] = 1.0
            elif name == "zero_layer":
                x = self._spread(sources, lambda rows: self.embed[rows] @ self.head.T)
            else:
                x = logits[name]
            out[name] = np.asarray(x, dtype=np.float32)
        return out

    def model_top(self):
        """loop.candidates.InnerTop over the head's rows (the model's top-k candidates),
        built once."""
        from loop.candidates import InnerTop
        with self._lock:
            if self._model_top is None:
                self._model_top = InnerTop(self.head)
        return self._model_top

    def text_vectors(self) -> np.ndarray:
        """(P, 384) the particles' text embeddings (loop/embed.py), computed once."""
        from loop import embed as text_embed
        with self._lock:
            if self._text_vectors is None:
                self._text_vectors = text_embed.particle_embeddings(self.graph,
                                                                    self._embed_cache)
        return self._text_vectors

    def _similarity(self, sources: np.ndarray) -> np.ndarray:
        """(S, P) cosine of the sources' text embeddings with every particle's."""
        from loop import embed as text_embed
        return text_embed.cosine(self.text_vectors(), sources)

    def _neighbours(self, sources: np.ndarray) -> np.ndarray:
        """(S, P) log(floor + cosine-weighted share of p's nearest pages by text that link q)."""
        from loop import embed as text_embed
        return text_embed.neighbour_links(self.text_vectors(), self.graph.known, sources,
                                          near=self.nearest(sources))

    def _pair_neighbours(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """(n,) the `text_neighbours` feature at pairs (a look-up in the sparse share)."""
        from loop import embed as text_embed
        sources, at = np.unique(src, return_inverse=True)
        share = text_embed.neighbour_share(self.graph.known, self.nearest(sources),
                                           len(self.graph.index))             # (S, P)
        return np.log(text_embed.NEIGHBOUR_FLOOR + np.asarray(share[at, dst]).reshape(-1))

    def nearest(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """loop.embed.nearest of the sources' text vectors ((S, k) positions, cosines), each
        source's found once and kept (P × k: small), as both the `text_neighbours` feature
        and a candidate scan ask for them."""
        from loop import embed as text_embed
        sources = np.asarray(sources, dtype=np.int64).reshape(-1)
        with self._lock:
            if self._near is None:
                k = min(text_embed.NEIGHBOURS, max(len(self.graph.index) - 1, 0))
                self._near = (np.full((len(self.graph.index), k), -1, dtype=np.int64),
                              np.zeros((len(self.graph.index), k), dtype=np.float32))
        nbr, sim = self._near
        todo = np.unique(sources[(nbr[sources] < 0).any(axis=1)]) if nbr.shape[1] else []
        for i in range(0, len(todo), 1024):
            rows = todo[i:i + 1024]
            nbr[rows], sim[rows] = text_embed.nearest(self.text_vectors(), rows,
                                                      nbr.shape[1])
        return nbr[sources], sim[sources]

    def _logits(self, sources, compiled: bool, tuned: bool) -> dict[str, np.ndarray]:
        """The compiled and tuned next-particle log-probabilities after [p], over the index."""
        out = {}
        offset = len(SPECIAL_TOKENS)

        def run(switch) -> Callable:
            def logits(rows: np.ndarray) -> np.ndarray:                       # (S',) ckpt rows
                ids = torch.as_tensor(rows + offset)[:, None].to(self.device)      # (S', 1)
                with self._lock, torch.no_grad(), switch():
                    z = self.model(input_ids=ids).logits[:, -1].float()
                x = torch.log_softmax(z, -1).cpu()
                return x[:, offset + torch.as_tensor(self.ckpt[self.have])].numpy()  # (S', P')
            return logits

        if tuned:
            out["tuned"] = self._spread(sources, run(nullcontext))
        if compiled:
            out["compiled"] = self._spread(sources, run(self.switch_off or nullcontext))
        return out

    def _context_logits(self, rows: np.ndarray) -> np.ndarray:
        """(S', P') log P_tuned(q | link-row context of p) for checkpoint rows of sources."""
        return self._by_half(rows, self._next_after_contexts, len(self.have))

    def _by_half(self, rows: np.ndarray, per_page: Callable, width: int) -> np.ndarray:
        """(S', width) `per_page(index positions)` for checkpoint rows of sources, cross-fitted
        when there are two adapters: page p by the one that never saw p's link rows
        (loop/linkrows.py)."""
        pages = self._index_of(rows)                                           # (S',)
        if not self.halves:
            with self._lock:
                return per_page(pages)
        half = np.array([self.pages.half(int(p)) for p in pages])
        out = np.empty((len(rows), width), dtype=np.float32)
        with self._lock:
            try:
                for h, name in ((0, "other"), (1, "default")):
                    self.model.set_adapter(name)
                    out[half == h] = per_page(pages[half == h])
            finally:
                self.model.set_adapter("default")
        return out

    def _index_of(self, rows: np.ndarray) -> np.ndarray:
        """Index positions of checkpoint rows."""
        inv = np.full(int(self.ckpt.max()) + 1, -1, dtype=np.int64)
        inv[self.ckpt[self.have]] = self.have
        return inv[rows]

    def _next_after_contexts(self, pages: np.ndarray, batch: int = 64) -> np.ndarray:
        """(S', P') the active model's next-particle log-probabilities after each page's
        link-row context."""
        cols = len(SPECIAL_TOKENS) + torch.as_tensor(self.ckpt[self.have])

        def next_logp(ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device),
                                    attention_mask=mask.to(self.device),
                                    logits_to_keep=1).logits[:, -1]                 # (B, T)
            return torch.log_softmax(logits.float(), -1).cpu()[:, cols].numpy()
        return self._by_length(pages, batch, next_logp, len(self.have))

    def _by_length(self, pages: np.ndarray, batch: int, run: Callable, width: int
                   ) -> np.ndarray:
        """(S', width) `run(ids, mask)` of the pages' link-row contexts, `batch` at a time,
        shortest first (a batch pads to its longest), in the pages' order."""
        contexts = [self.pages.context(int(p)) for p in pages]
        order = np.argsort([len(c) for c in contexts], kind="stable")
        out = np.zeros((len(pages), width), np.float32)
        for i in range(0, len(pages), batch):
            mine = order[i:i + batch]
            out[mine] = run(*self._left_padded([contexts[j] for j in mine]))
        return out

    @staticmethod
    def _left_padded(contexts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) (B, L), left-padded: the last position is every row's own,
        and RoPE sees only relative positions, so a row scores as it would alone."""
        width = max(map(len, contexts))
        ids = torch.zeros(len(contexts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, c in enumerate(contexts):
            ids[j, width - len(c):] = torch.tensor(c)
            mask[j, width - len(c):] = 1
        return ids, mask

    def _spread(self, sources: np.ndarray, score: Callable[[np.ndarray], np.ndarray]
                ) -> np.ndarray:
        """(S, P) of `score(checkpoint rows of the known sources)` (S', P') put at the
        index's positions; particles (and sources) the checkpoint lacks get their row's
        minimum, so they neither win nor carry a sentinel into the weights."""
        out = np.zeros((len(sources), len(self.graph.index)), dtype=np.float32)
        ok = np.flatnonzero(self.ckpt[sources] >= 0)
        if len(ok) and len(self.have):
            values = np.asarray(score(self.ckpt[sources[ok]]), dtype=np.float32)  # (S', P')
            out[ok] = values.min(axis=1, keepdims=True)
            out[ok[:, None], self.have[None, :]] = values
        return out


def ranker_scorer(features: Features, ranker: Ranker) -> Scorer:
    """A Scorer (loop/evaluate.py) giving the ranker's score over the index."""
    return lambda sources: features.scores(np.asarray(sources), ranker)
