"""Baseline link predictors for `graft eval` (DESIGN §5), each a Scorer over the store's index.

All of them see the store's ground truth only (EvalGraph: ingest and curator links, stake-
weighted), never the held-out links. Scores are compared within one source's row, so a
score that is the same for every source (popularity) is a plain prior.

Letters in shape comments: P particles in the index, S sources in a call, d a rank.
"""
from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from compiler import linalg, mlp
from graph.walks import random_walks
from graph.checkpoint import SPECIAL_TOKENS
from graph.errors import GraftError
from graph.focus import compute_focus
from loop.evaluate import EvalGraph, Scorer, checkpoint_positions


@dataclass(frozen=True)
class BaselineConfig:
    """How the baselines are built; every random choice is seeded from `seed`."""

    seed: int = 0                   # walks, SVD test matrix, KGE initialisation and negatives
    spectral_d: int = 64            # SVD rank (DESIGN §7: plain d = 64 beat √π and d = 256)
    checkpoint: str | None = None   # spectral E·Hᵀ from this checkpoint instead of an SVD
    walks_per_node: int = 10        # PPMI: stake-weighted walks from every node with out-links
    walk_length: int = 20
    window: int = 5                 # co-occurrence window on a walk
    kge_model: str = "TransE"       # any PyKEEN model name (TransE, RotatE, DistMult, …)
    kge_dim: int = 64
    kge_epochs: int = 20
    kge_lr: float = 0.01
    kge_batch: int = 1024

    def __post_init__(self):
        small = {k: v for k, v in asdict(self).items()
                 if k in ("spectral_d", "walks_per_node", "walk_length", "window", "kge_dim",
                          "kge_epochs", "kge_batch") and v < 1}
        if small or self.kge_lr <= 0:
            raise GraftError(f"bad baseline config: {small or {'kge_lr': self.kge_lr}} "
                             "(expected >= 1, and kge_lr > 0)")


def popularity(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """Stake-weighted in-degree of q, the same for every source."""
    return _prior(graph.adjacency.sum(axis=0))


def focus(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """Focus π of q (PageRank over the stake-weighted adjacency), the same for every source."""
    return _prior(compute_focus(graph.adjacency).pi)


def _prior(values: np.ndarray) -> Scorer:
    values = np.asarray(values, dtype=np.float64).ravel()                  # (P,)
    return lambda sources: np.broadcast_to(values, (len(sources), len(values)))


def adamic_adar(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """Σ over common neighbours z of p and q of 1/log deg(z), on the undirected, unweighted
    graph (Adamic & Adar 2003)."""
    a = graph.adjacency
    u = ((a + a.T) > 0).astype(np.float64).tocsr()                         # (P, P)
    u = (u - sp.diags_array(u.diagonal())).tocsr()                        # no self-loops
    u.eliminate_zeros()
    deg = np.asarray(u.sum(axis=1)).ravel()
    # A neighbour of degree 1 is common to p and q only when p = q: weight 0, not 1/log 1.
    weight = np.where(deg > 1, 1.0 / np.log(np.maximum(deg, 2)), 0.0)
    right = (sp.diags_array(weight) @ u).tocsr()                           # (P, P)
    return lambda sources: (u[sources] @ right).toarray()


def ppmi(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """Positive PMI of walk co-occurrence (the compiler's MLP statistic, compiler/mlp.py)."""
    walks = random_walks(graph.adjacency, cfg.walks_per_node, cfg.walk_length, cfg.seed)
    m = mlp.positive_pmi(mlp.cooccurrence(walks, cfg.window, len(graph.index)))  # (P, P)
    return lambda sources: m[sources].toarray()


def spectral(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """E_p · H_q: from a checkpoint's embed_tokens / lm_head when cfg.checkpoint is set
    (particles it lacks score -inf), else E = U√Σ, H = V√Σ of a seeded randomized SVD of
    the adjacency at rank cfg.spectral_d."""
    if cfg.checkpoint:
        return _checkpoint_spectral(Path(cfg.checkpoint), graph.index)
    u, s, vt = linalg.randomized_svd(graph.adjacency, cfg.spectral_d, seed=cfg.seed)
    root = np.sqrt(s).astype(np.float32)
    e, h = u * root, np.ascontiguousarray(vt.T) * root                     # (P, d) each
    return lambda sources: e[sources] @ h.T


def _checkpoint_spectral(model_dir: Path, index: list[str]) -> Scorer:
    from safetensors import safe_open
    path = model_dir / "model.safetensors"
    if not path.exists():
        raise GraftError(f"{path}: missing — spectral needs a single-file checkpoint")
    with safe_open(str(path), framework="numpy") as f:
        names = set(f.keys())
        e = f.get_tensor("model.embed_tokens.weight").astype(np.float32)     # (T, d)
        h = f.get_tensor("lm_head.weight").astype(np.float32) if "lm_head.weight" in names else e
    offset = len(SPECIAL_TOKENS)
    ckpt = checkpoint_positions(model_dir, index)                          # (P,)
    have = np.flatnonzero(ckpt >= 0)
    heads = h[offset + ckpt[have]]                                          # (P', d)

    def score(sources: np.ndarray) -> np.ndarray:
        out = np.full((len(sources), len(index)), -np.inf, dtype=np.float32)
        ok = np.flatnonzero(ckpt[sources] >= 0)
        out[ok[:, None], have[None, :]] = e[offset + ckpt[sources[ok]]] @ heads.T
        return out

    return score


def mentions(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """Unlinked mentions, as Obsidian and Logseq show them: q's name or an alias occurs in
    p's text (longest match, finetune/text.py), ranked first; ties — mentioned or not — by
    q's `link` in-degree (score = mentioned · BIG + in-degree)."""
    from loop.rank import mention_matrix
    mentioned = mention_matrix(graph)                                      # (P, P) counts
    base = graph.link_indegree                                             # (P,)
    big = float(base.max(initial=0.0)) + 1.0
    return lambda sources: base + big * (mentioned[sources].toarray() > 0)  # (S, P)


def kge_available() -> bool:
    return importlib.util.find_spec("pykeen") is not None


def pykeen(graph: EvalGraph, cfg: BaselineConfig) -> Scorer:
    """A PyKEEN knowledge-graph embedding (cfg.kge_model) trained on the store's links as one
    relation, CPU, seeded; the score of q is the model's tail score for (p, links, q).
    PyKEEN's seeding sets the global torch/numpy/random seeds."""
    if not kge_available():
        raise GraftError("the pykeen baseline needs PyKEEN: pip install 'graft[kge]'")
    import torch
    _import_pykeen()
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import CoreTriplesFactory
    coo = graph.adjacency.tocoo()
    heads, tails = coo.row.astype(np.int64), coo.col.astype(np.int64)
    if not len(heads):
        raise GraftError("the pykeen baseline needs links in the store")
    triples = torch.as_tensor(np.stack([heads, np.zeros_like(heads), tails], axis=1))
    factory = CoreTriplesFactory(mapped_triples=triples, num_entities=len(graph.index),
                                 num_relations=1)
    model = model_resolver.make(cfg.kge_model, triples_factory=factory,
                                embedding_dim=cfg.kge_dim, random_seed=cfg.seed)
    loop = SLCWATrainingLoop(model=model, triples_factory=factory, optimizer="Adam",
                             optimizer_kwargs={"lr": cfg.kge_lr})
    with warnings.catch_warnings():   # noise: pinned memory on CPU, a deprecated flag it sets
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        warnings.filterwarnings("ignore", message="Training instances are always shuffled")
        loop.train(triples_factory=factory, num_epochs=cfg.kge_epochs,
                   batch_size=cfg.kge_batch, use_tqdm=False, use_tqdm_batch=False)
    model.eval()

    def score(sources: np.ndarray) -> np.ndarray:
        hr = torch.as_tensor(np.stack([sources, np.zeros_like(sources)], axis=1))  # (S, 2)
        with torch.no_grad():
            return model.score_t(hr).double().numpy()                      # (S, P)

    return score


def _import_pykeen() -> None:
    """Import PyKEEN even after bitsandbytes (which peft and trl load).

    class_resolver (0.8), on PyKEEN's import, registers the loaded subclasses of torch's
    Optimizer "from the same package as the base class", but compares each class with its
    direct parent: bitsandbytes' AdamW (parent: bitsandbytes' Optimizer2State) gets in and
    clashes with torch's AdamW (RegistrationNameConflict; pykeen#1363 is the same failure).
    The first import runs with the package checked against the base, as documented there.
    """
    import sys
    if "class_resolver.contrib.torch" in sys.modules:
        return
    import class_resolver.api as api
    original = api.get_subclasses

    def same_package(base, **kwargs):
        top = base.__module__.split(".")[0]
        found = original(base, **kwargs)
        if not kwargs.get("exclude_external", True):
            return found
        return (c for c in found if c.__module__.split(".")[0] == top)

    api.get_subclasses = same_package
    try:
        import class_resolver.contrib.torch  # noqa: F401
        import pykeen.models  # noqa: F401
    finally:
        api.get_subclasses = original


BASELINES: dict[str, Callable[[EvalGraph, BaselineConfig], Scorer]] = {
    "popularity": popularity, "focus": focus, "adamic_adar": adamic_adar, "ppmi": ppmi,
    "spectral": spectral, "mentions": mentions, "pykeen": pykeen,
}


def available() -> list[str]:
    """Baseline names that can run here (pykeen only where it is installed)."""
    return [n for n in BASELINES if n != "pykeen" or kge_available()]
