"""The compiler: snapshot → HF Llama checkpoint. Calls the passes in order, nothing else."""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
from threadpoolctl import threadpool_limits

from compiler import certificate, pack
from compiler.calibrate import calibrate
from compiler.arch import derive_arch
from compiler.attention import build_attention
from compiler.embedding import build_embedding
from compiler.mlp import build_mlp
from compiler.semcons import build_semcons
from compiler.types import CompileConfig, Compiled
from compiler.vocab import build_vocab
from graph.focus import compute_focus
from graph.runtime import torch_threads
from graph.snapshot import Snapshot, typed_edges
from graph.store import Store


def seed_of(snap: Snapshot) -> int:
    """All randomness is seeded from the snapshot id (DESIGN §2)."""
    return int(snap.id[:16], 16)


def compile_snapshot(store: Store, snap: Snapshot, out: Path, cfg: CompileConfig = CompileConfig(),
                     say: Callable[[str], None] = lambda _: None) -> dict:
    """Compile `snap` into a checkpoint folder `out`; returns its certificate.

    Writes model.safetensors, config.json, tokenizer files, particles.json,
    provenance.safetensors, compile.json and certificate.json (DESIGN §2, pass 8).
    """
    timings: dict[str, float] = {}
    seed = seed_of(snap)

    @contextmanager
    def timed(name: str):
        say(f"{name} …")
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 3)
        say(f"{name} done in {timings[name]:.2f} s")

    with threadpool_limits(cfg.threads), torch_threads(cfg.threads):
        with timed("links"):  # one query for both passes: hashing every link's axon is most of it
            links = typed_edges(store, snap)
        with timed("vocab"):
            vocab = build_vocab(store, snap, links)
        with timed("semcons"):
            semcons = build_semcons(store, snap, vocab, links)
        del links
        # Arrow's pool (mimalloc) keeps pages the link table and its compute freed: 1 GB
        # at 3.14M particles, otherwise held through the SVD passes
        pa.default_memory_pool().release_unused()
        with timed("focus"):
            pi = compute_focus(vocab.adjacency).pi
        with timed("architecture"):
            arch = derive_arch(vocab.adjacency, pi, len(semcons.particles), cfg, seed)
        start, warm = None, None
        if cfg.warm_start:
            with timed("warm start"):
                from compiler.warm import load_start
                start, warm = load_start(Path(cfg.warm_start), vocab)
        with distributed_svd(cfg, out) as svd:
            compiled, tensors = _weights(vocab, semcons, pi, arch, cfg, seed, timed, start, svd)
            second = None
            if cfg.check_determinism:
                with timed("determinism"):
                    second = {n: pack.digest(x) for n, x in _weights(
                        vocab, semcons, pi, arch, cfg, seed, None, start, svd)[1].items()}
        if warm:
            compiled = replace(compiled, embedding=replace(
                compiled.embedding, stats={**compiled.embedding.stats, "warm_start": warm}))
        compiled = Compiled(**{**compiled.__dict__, "snapshot": snap.id, "timings": timings})
        with timed("pack"):
            record = pack.pack_llama(compiled, out, tensors)
        checks = {"P-EMBED": certificate.p_embed(compiled.embedding.stats["p_embed"]),
                  "P-ATTN": certificate.p_attn(compiled.attention.pearson)}
        del compiled, tensors  # the certificate loads the checkpoint afresh: drop our copy
        with timed("certificate"):
            load, layer = certificate.load_and_probe(out, seed)
    first = {n: t["blake3"] for n, t in record["tensors"].items()}
    return certificate.write_certificate(out, {
        **checks,
        "P-LAYER": layer,
        "P-DET": certificate.p_det(first, second),
        "P-LOAD": load,
    })


@contextmanager
def distributed_svd(cfg: CompileConfig, out: Path):
    """build_embedding's keyword arguments for the SVD on cfg.dask's cluster — its client
    and a scratch folder, removed afterwards; none without cfg.dask."""
    if cfg.dask is None:
        yield {}
        return
    import shutil
    from compiler.distributed import session
    scratch = Path(out) / "_partitions"
    try:
        with session(cfg.dask) as client:
            yield {"client": client, "scratch": scratch}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _weights(vocab, semcons, pi, arch, cfg, seed, timed, start=None, svd=None):
    """The passes that make weights (run twice for P-DET); `svd`: distributed_svd's."""
    timed = timed or (lambda name: _null())
    with timed("embedding"):
        emb = build_embedding(vocab, pi, arch, cfg, seed, start, **(svd or {}))
    with timed("calibrate"):
        emb = calibrate(vocab, emb, cfg, seed)
    with timed("attention"):
        attn = build_attention(semcons, emb, arch, cfg)
    with timed("mlp"):
        mlp = build_mlp(vocab, emb, arch, cfg, seed)
    # E, then H, moves into its checkpoint block (special-token rows on top), which the
    # state dict takes as is and the compiled record keeps views of: copying both beside
    # the originals was the compile's peak (+3.4 GB at 3.14M particles).
    emb = replace(emb, E=pack.padded(emb.E)[vocab.offset:])
    if not cfg.tie:
        emb = replace(emb, H=pack.padded(emb.H)[vocab.offset:])
    compiled = Compiled(snapshot="", config=cfg, vocab=vocab, semcons=semcons, arch=arch,
                        embedding=emb, attention=attn, mlp=mlp, timings={})
    return compiled, pack.state_dict(compiled)


@contextmanager
def _null():
    yield


