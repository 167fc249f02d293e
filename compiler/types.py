"""The contract between compiler passes: the config, and each pass's immutable result.

Letters in shape comments across the compiler: V particles in the vocabulary (T = V + the
special tokens), d hidden size, h heads (one per semcon), d_h head size, r MLP width,
L layers, N links.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from graph.errors import GraftError

from graph.checkpoint import LEXICON, SPECIAL_TOKENS  # noqa: F401  (re-exported for the passes)


@dataclass(frozen=True)
class CompileConfig:
    """How to compile. Every field has a default; derived architecture values are used
    unless overridden here (both are recorded in compile.json)."""

    d: int | None = None            # hidden size; None: derived d* (spectral entropy)
    heads: int | None = None        # attention heads; None: h* = number of semcons
    layers: int | None = None       # decoder layers; None: derived L*, capped by max_layers
    max_layers: int = 8             # a 290-layer model is rarely wanted: cap the derived L*
    tie: bool = False               # tie the output head to the input embedding
    focus_weighting: bool = False   # factorise diag(√π) A diag(√π) instead of A (see bench)
    power_iters: int = 4            # randomized SVD power iterations (accuracy vs time)
    oversample: int = 10            # randomized SVD oversampling
    warm_start: str | None = None   # a previous checkpoint whose subspace starts the SVD
    warm_power_iters: int = 1       # power iterations from a warm start
    attn_gain: float = 0.0          # compiled attention output scale (bench: any gain > 0 cost MRR)
    attn_temperature: float = 4.0   # largest attention logit the compiled QKᵀ can produce
    mlp_gain: float = 0.1           # scale of the compiled MLP output (bench: neutral-to-positive)
    walks_per_node: int = 4         # MLP co-occurrence: seeded stake-weighted walks
    walk_length: int = 20
    window: int = 5
    rope_theta: float = 1e300       # overflows float32: every RoPE pair but the first stops turning
    rms_norm_eps: float = 1e-6
    threads: int = 1                # BLAS threads during compile: float bits depend on it
    workers: int = 2                # threads for row-block kernels (SVD, attention): bits don't
    check_determinism: bool = True  # compile the weights twice and compare (P-DET)
    calibrate: bool = True          # fit the logit scale τ to the links (calibrate.py)
    dask: str | None = None         # the embedding SVD on a Dask cluster: local:N or an address
    dask_parts: int | None = None   # its grid's blocks a side (bits depend on it; None: 2/worker)

    def __post_init__(self):
        problems = []
        for name in ("d", "heads", "layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name}={value} (expected >= 1)")
        if self.d is not None and self.heads is not None and self.d % self.heads:
            problems.append(f"d={self.d} is not a multiple of heads={self.heads} "
                            "(HF Llama requires hidden_size % num_attention_heads == 0)")
        if self.d is not None and self.heads is not None and (self.d // self.heads) % 2:
            problems.append(f"head size d/heads={self.d // self.heads} is odd (RoPE needs even)")
        if (self.max_layers < 1 or self.power_iters < 0 or self.oversample < 0
                or self.warm_power_iters < 0):
            problems.append(f"max_layers={self.max_layers}, power_iters={self.power_iters}, "
                            f"oversample={self.oversample}, warm_power_iters="
                            f"{self.warm_power_iters} (expected >= 1, >= 0, >= 0, >= 0)")
        if self.attn_gain < 0 or self.mlp_gain < 0 or self.attn_temperature <= 0:
            problems.append(f"attn_gain={self.attn_gain}, mlp_gain={self.mlp_gain}, "
                            f"attn_temperature={self.attn_temperature} (expected >= 0, >= 0, > 0)")
        if self.threads < 1 or self.workers < 1:
            problems.append(f"threads={self.threads}, workers={self.workers} (expected >= 1)")
        if self.dask is not None and self.warm_start is not None:
            problems.append("dask and warm_start together (the Dask SVD starts cold)")
        if self.dask_parts is not None and self.dask_parts < 1:
            problems.append(f"dask_parts={self.dask_parts} (expected >= 1)")
        if problems:
            raise GraftError("bad compile config: " + "; ".join(problems))

    def to_json(self) -> dict:
        return asdict(self)


# -- pass results, in pass order -------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """Pass 1. Particles in first-appearance order, after the special tokens."""

    particles: list[str]            # (V,) particle ids; token id = len(SPECIAL_TOKENS) + index
    tokens: list[str]               # (T,) token strings: specials, then particle names
    adjacency: sp.csr_array         # (V, V) summed effective stake, label links excluded
    lexicon: list[list[str]] = field(default_factory=list)  # (V,) name, then aliases

    @property
    def offset(self) -> int:
        return len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class Semcons:
    """Pass 2. The link types, and each type's own adjacency over the vocabulary."""

    particles: list[str]            # (h*,) semcon particle ids, ⊥ last
    names: list[str]                # (h*,) display names
    adjacency: list[sp.csr_array]   # (h*,) each (V, V): the links assigned to that semcon


@dataclass(frozen=True)
class Arch:
    """Pass 3. Derived architecture and the values actually used."""

    derived: dict                   # d_star, h_star, l_star, entropy, lambda2, kappa, diameter, …
    d: int
    heads: int
    head_dim: int
    layers: int
    intermediate: int


@dataclass(frozen=True)
class Embedding:
    """Pass 4. M ≈ U Σ Vᵀ; input E = U√Σ, output head H = V√Σ (rows of zero out-links filled)."""

    E: np.ndarray                   # (V, d) float32
    H: np.ndarray                   # (V, d) float32
    sigma: np.ndarray               # (d,) float64, descending
    filled: np.ndarray              # (V,) bool: rows of E that were all-zero and got filled
    scale: np.ndarray               # (V,) row scales applied to E (see embedding.py)
    stats: dict = field(default_factory=dict)  # P-EMBED and friends
    logit_scale: float = 1.0        # τ (calibrate.py), the final RMSNorm weight


@dataclass(frozen=True)
class Attention:
    """Pass 5. Per layer and head: W_Q, W_K (d, d_h), W_V (d, d_h), W_O (d_h, d)."""

    q: list[np.ndarray]             # (L,) each (h·d_h, d) — HF [out, in] layout
    k: list[np.ndarray]             # (L,) each (h·d_h, d)
    v: list[np.ndarray]             # (L,) each (h·d_h, d)
    o: list[np.ndarray]             # (L,) each (d, h·d_h)
    powers: list[int]               # (L,) the power k of A_s^k used at each layer
    pearson: np.ndarray             # (L, h) Pearson(W_Q W_Kᵀ, P) — P-ATTN


@dataclass(frozen=True)
class MLP:
    """Pass 6. gate = W1ᵀ, up = 0 with bias 1, down = W2 — exact SiLU(x W1) W2ᵀ in HF's MLP."""

    gate: np.ndarray                # (r, d)
    down: np.ndarray                # (d, r)
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Compiled:
    """Everything pack() writes."""

    snapshot: str
    config: CompileConfig
    vocab: Vocab
    semcons: Semcons
    arch: Arch
    embedding: Embedding
    attention: Attention
    mlp: MLP
    timings: dict
