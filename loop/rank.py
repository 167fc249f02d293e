"""The extractor's ranker: which particle q a source p should link, from text and the models.

An LM tuned on text learns what gets *mentioned*, not what gets *linked* (DESIGN §7); unlinked
mentions find most missing links but rank them poorly. The ranker scores (p, q) by a weighted
sum of features, and the weights are fitted on what curators did: on a fold of the store
(loop/fold.py) with a share of its links hidden, the hidden target of each link is chosen
over every other candidate by a softmax (a listwise preference objective: a page's linked
mentions over its unlinked ones, and over everything else).

Features of (p, q), each over the whole particle index:

    mention        1 when q's name or an alias occurs in p's text (finetune/text.py matching)
    mention_count  log(1 + times it occurs)
    back_mention   1 when p's name occurs in q's text
    indegree       log(1 + distinct sources linking q with token `link`)
    in_model       1 when the checkpoint knows q (model scores of others are filled in)
    zero_layer     E_p · H_q of the checkpoint (the compiled spectral score)
    compiled       log P_compiled(q | p): the compiled model's next particle after [p]
    tuned          log P_tuned(q | p) (compiled + adapter); absent without an adapter
 Every proposal carries the features and each
one's share of its score (weight × value), so a curator can see why it was proposed.

Letters in shape comments: P particles in the index, S sources, F features, T checkpoint
tokens, n fitting queries.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from compiler.types import SPECIAL_TOKENS
from finetune.text import Lexicon
from graph.errors import GraftError
from loop.evaluate import EvalGraph, Scorer, checkpoint_positions

TEXT_FEATURES = ("mention", "mention_count", "back_mention", "indegree")
MODEL_FEATURES = ("in_model", "zero_layer", "compiled", "tuned")
FIT_ENTRIES = 60_000_000          # score entries (sources × P × F) held while fitting


@dataclass(frozen=True)
class Ranker:
    """Feature weights; score(p, q) = Σ weights[i] · feature_i(p, q)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    fit: dict = field(default_factory=dict)     # how it was fitted and how well

    def __post_init__(self):
        unknown = [f for f in self.features if f not in TEXT_FEATURES + MODEL_FEATURES]
        if unknown or len(self.features) != len(self.weights):
            raise GraftError(f"bad ranker: features {list(self.features)}, "
                             f"{len(self.weights)} weights (unknown: {unknown})")

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**asdict(self), "features": list(self.features),
                                    "weights": list(self.weights)}, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> Ranker:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
            return cls(tuple(raw["features"]), tuple(float(w) for w in raw["weights"]),
                       raw.get("fit", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GraftError(f"{path}: not a ranker file ({exc})") from None


def mention_matrix(graph: EvalGraph) -> sp.csr_array:
    """(P, P) how often q's name or an alias occurs in p's text (p itself left out)."""
    lexicon = Lexicon(graph.names)
    rows, cols, counts = [], [], []
    for p, text in graph.texts.items():
        found = np.asarray(lexicon.match(text)[0], dtype=np.int64)
        found = found[found != p]
        if len(found):
            u, c = np.unique(found, return_counts=True)
            rows.append(np.full(len(u), p))
            cols.append(u)
            counts.append(c)
    size = (len(graph.index), len(graph.index))
    if not rows:
        return sp.csr_array(size, dtype=np.float32)
    return sp.csr_array((np.concatenate(counts).astype(np.float32),
                         (np.concatenate(rows), np.concatenate(cols))), shape=size)


class Features:
    """Feature blocks (S, P, F) over an EvalGraph's index, for one checkpoint and adapter."""

    def __init__(self, graph: EvalGraph, model_dir: Path, adapter: Path | None = None):
        from loop.extract import load_pair
        self.graph = graph
        self.mention = mention_matrix(graph)                                  # (P, P)
        self.back = self.mention.T.tocsr()
        self.indegree = np.log1p(graph.link_indegree).astype(np.float32)      # (P,)
        self.ckpt = checkpoint_positions(model_dir, graph.index)             # (P,)
        self.have = np.flatnonzero(self.ckpt >= 0)
        self.model, self.switch_off = load_pair(Path(model_dir), adapter)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        offset = len(SPECIAL_TOKENS)
        emb = base.get_input_embeddings().weight.detach().float()             # (T, d)
        head = base.lm_head.weight.detach().float()                           # (T, d)
        self.embed = emb[offset:].numpy()                                     # by ckpt position
        self.head = head[offset + torch.as_tensor(self.ckpt[self.have])].numpy()
        self.names = TEXT_FEATURES + MODEL_FEATURES[:3] + (
            ("tuned",) if adapter is not None else ())

    def block(self, sources: np.ndarray, names: tuple[str, ...] | None = None) -> np.ndarray:
        """(S, P, F) float32: the features `names` (default: all this checkpoint has)."""
        names = names or self.names
        missing = [n for n in names if n not in self.names]
        if missing:
            raise GraftError(f"features {missing} need a tuned adapter; this extractor has "
                             f"{list(self.names)}")
        sources = np.asarray(sources, dtype=np.int64)
        size = len(self.graph.index)
        logits = self._logits(sources, "compiled" in names, "tuned" in names)
        out = np.empty((len(sources), size, len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            if name == "mention":
                out[..., i] = self.mention[sources].toarray() > 0
            elif name == "mention_count":
                out[..., i] = np.log1p(self.mention[sources].toarray())
            elif name == "back_mention":
                out[..., i] = self.back[sources].toarray() > 0
            elif name == "indegree":
                out[..., i] = self.indegree[None, :]
            elif name == "in_model":
                out[..., i] = 0.0
                out[:, self.have, i] = 1.0
            elif name == "zero_layer":
                out[..., i] = self._spread(sources, lambda rows: self.embed[rows] @ self.head.T)
            else:
                out[..., i] = logits[name]
        return out

    def _logits(self, sources, compiled: bool, tuned: bool) -> dict[str, np.ndarray]:
        """The compiled and tuned next-particle log-probabilities after [p], over the index."""
        out = {}
        offset = len(SPECIAL_TOKENS)

        def run(switch) -> Callable:
            def logits(rows: np.ndarray) -> np.ndarray:                       # (S',) ckpt rows
                ids = torch.as_tensor(rows + offset)[:, None]                     # (S', 1)
                with torch.no_grad(), switch():
                    x = torch.log_softmax(self.model(input_ids=ids).logits[:, -1].float(), -1)
                return x[:, offset + torch.as_tensor(self.ckpt[self.have])].numpy()  # (S', P')
            return logits

        if tuned:
            out["tuned"] = self._spread(sources, run(nullcontext))
        if compiled:
            out["compiled"] = self._spread(sources, run(self.switch_off or nullcontext))
        return out

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
    w = np.asarray(ranker.weights, dtype=np.float32)
    return lambda sources: features.block(np.asarray(sources), ranker.features) @ w


def fit_ranker(features: Features, known: sp.csr_array, pairs: np.ndarray,
               names: tuple[str, ...] | None = None, l2: float = 1e-3, seed: int = 0,
               say: Callable[[str], None] = lambda _: None) -> Ranker:
    """Fit the weights on hidden links: each (p, q) of `pairs` is a query whose target q must
    win a softmax over p's candidates (every particle but p and p's `known` targets).

    Args:
        features: over the fold's EvalGraph, with the fold's checkpoint and adapter.
        known: (P, P) the fold's ground-truth links (not candidates).
        pairs: (n, 2) index positions of the hidden links.
        names: the features used (default: all `features` has).
        l2: ridge on the standardised weights.
        seed: which queries are kept when they exceed FIT_ENTRIES.

    Returns:
        The Ranker, in raw feature units, with fit statistics (queries, loss, in-sample MRR
        and the MRR each feature alone gives on the same queries).
    """
    names = tuple(names or features.names)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        raise GraftError("no hidden link to fit the ranker on")
    size = len(features.graph.index)
    sources = np.unique(pairs[:, 0])
    cap = max(1, FIT_ENTRIES // (size * len(names)))
    if len(sources) > cap:
        sources = np.sort(np.random.default_rng(seed).choice(sources, cap, replace=False))
        pairs = pairs[np.isin(pairs[:, 0], sources)]
    say(f"ranker: fitting {len(names)} features on {len(pairs)} hidden links "
        f"({len(sources)} sources)")
    x = torch.from_numpy(np.concatenate([features.block(sources[i:i + 256], names)
                                         for i in range(0, len(sources), 256)]))  # (S, P, F)
    row = torch.as_tensor(np.searchsorted(sources, pairs[:, 0]))                # (n,)
    target = torch.as_tensor(pairs[:, 1])                                      # (n,)
    candidates = torch.ones(len(sources), size, dtype=torch.bool)              # (S, P)
    candidates[torch.arange(len(sources)), torch.as_tensor(sources)] = False
    r, c = known[sources].nonzero()
    candidates[torch.as_tensor(r), torch.as_tensor(c)] = False
    mask = candidates[row]                                                     # (n, P)
    mask[torch.arange(len(row)), target] = True
    flat = x.reshape(-1, len(names))
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)                      # (F,)
    z = (x - mean) / std                                                       # (S, P, F)
    w = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def loss_of(weights: torch.Tensor) -> torch.Tensor:
        s = (z @ weights)[row].masked_fill(~mask, float("-inf"))               # (n, P)
        return -(s[torch.arange(len(row)), target] - torch.logsumexp(s, 1)).mean()

    def closure():
        opt.zero_grad()
        loss = loss_of(w) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = (w.detach() / std).numpy().astype(np.float64)
    with torch.no_grad():
        raw = x @ torch.as_tensor(weights, dtype=torch.float32)                 # (S, P)
        fit = {"queries": len(pairs), "sources": int(len(sources)),
               "loss": round(float(loss_of(w.detach())), 5),
               "mrr": round(_mrr(raw[row], target, mask), 5),
               "mrr_alone": {n: round(_mrr(x[..., i][row], target, mask), 5)
                             for i, n in enumerate(names)}}
    say(f"ranker: fitted, MRR on the fold {fit['mrr']:.4f}")
    return Ranker(names, tuple(float(v) for v in weights), fit)


def _mrr(scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean reciprocal expected rank (ties half) of each row's target among its candidates."""
    t = scores[torch.arange(len(target)), target][:, None]
    above = ((scores > t) & mask).sum(1)
    ties = ((scores == t) & mask).sum(1) - 1
    return float((1.0 / (1.0 + above + 0.5 * ties).double()).mean())
