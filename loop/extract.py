"""Extract: what the tuned model believes about pairs the graph does not link, against what
the compiled model believed (DESIGN §4).

For every source p of the checkpoint, one batched forward pass of the one-token prompt [p]
gives log P(q | p) under the tuned model (compiled + adapter) and, with the adapter switched
off, under the compiled model. The score of (p, q) is

    score = log P_tuned(q | p) − β · log P_compiled(q | p)

β = 0 ranks by the tuned belief alone, β = 1 by what tuning added (the lift). Existing
links, p itself and special tokens are masked; each batch keeps its best `per_source` per
row, and the global top-k is taken from those — never a Python loop over V² pairs.

For each proposal the per-head view is computed: every head's contribution to the logit of
q (its o_proj slice of the attention output, through the final RMSNorm frozen, against
lm_head[q]) in the tuned and the compiled model; the head whose contribution tuning moved
most gives the proposal its semcon (head i is semcon i of compile.json). Evidence: those
deltas, the two log-probabilities, and the corpus lines where both particles occur.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compiler.types import SPECIAL_TOKENS


@dataclass(frozen=True)
class ExtractConfig:
    top_k: int = 100               # proposals kept in all
    per_source: int = 5            # at most this many per source
    per_target: int = 5            # ... and per target (a hub would otherwise take them all)
    beta: float = 0.5              # weight of the compiled belief subtracted from the tuned
    batch: int = 512               # sources per forward pass
    threads: int = 1               # torch threads (see compiler.compile.torch_threads)
    evidence_lines: int = 3        # corpus lines kept per proposal


@dataclass(frozen=True)
class Proposal:
    src: str
    dst: str
    score: float
    confidence: float              # P_tuned(dst | src)
    tuned: float
    compiled: float
    head: int | None
    semcon: str | None
    evidence: dict


def load_pair(model_dir: Path, adapter: Path | None):
    """The tuned model (compiled + adapter, or a merged/tuned folder) and a context that
    switches it back to the compiled model (the adapter disabled), or a second model."""
    from finetune.checkpoints import load_checked
    base = load_checked(model_dir, dtype=torch.float32).eval()
    if adapter is None:
        return base, None
    from peft import PeftModel
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    return tuned, tuned.disable_adapter


def extract(model_dir: Path, linked: set[tuple[str, str]], cfg: ExtractConfig = ExtractConfig(),
            adapter: Path | None = None, compiled_dir: Path | None = None,
            corpus: Path | None = None, say: Callable[[str], None] = lambda _: None
            ) -> list[Proposal]:
    """Top-k proposals (p, q) with (p, q) not in `linked`; see `_extract`."""
    from compiler.compile import torch_threads
    with torch_threads(cfg.threads), torch.no_grad():
        return _extract(model_dir, linked, cfg, adapter, compiled_dir, corpus, say)


def _extract(model_dir, linked, cfg, adapter, compiled_dir, corpus, say) -> list[Proposal]:
    """Top-k proposals (p, q) with (p, q) not in `linked`.

    `adapter`: a LoRA adapter over `model_dir`. Without one, `compiled_dir` (a second
    checkpoint, e.g. the compiled model before full fine-tuning) gives the compiled belief;
    with neither, the compiled belief is the model itself (the score is then (1 − β)·log P).
    """
    model_dir = Path(model_dir)
    torch.set_flush_denormal(True)                # tiny singular values: ~20× (DESIGN §7)
    particles = json.loads((model_dir / "particles.json").read_text())
    offset, v = len(SPECIAL_TOKENS), len(particles)
    tuned, switch_off = load_pair(model_dir, adapter)
    other = None
    if switch_off is None and compiled_dir is not None:
        from finetune.checkpoints import load_checked
        other = load_checked(compiled_dir, dtype=torch.float32).eval()
    index = {p: i for i, p in enumerate(particles)}
    mask_rows: dict[int, list[int]] = {}
    for s, d in linked:
        if s in index and d in index:
            mask_rows.setdefault(index[s], []).append(index[d])
    best_s, best_q, best_v = [], [], []
    for start in range(0, v, cfg.batch):
        rows = np.arange(start, min(start + cfg.batch, v))
        lp_t, lp_c = _logprobs(tuned, switch_off, other, rows + offset, offset)
        score = lp_t - cfg.beta * lp_c                                       # (B, V)
        score[np.arange(len(rows)), rows] = -np.inf                          # no self-links
        for j, r in enumerate(rows):
            if r in mask_rows:
                score[j, mask_rows[r]] = -np.inf
        k = min(cfg.per_source, v)
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]                   # (B, k)
        vals = np.take_along_axis(score, top, axis=1)
        keep = np.isfinite(vals)
        best_s.append(np.repeat(rows, k)[keep.ravel()])
        best_q.append(top.ravel()[keep.ravel()])
        best_v.append(np.stack([vals, np.take_along_axis(lp_t, top, 1),
                                np.take_along_axis(lp_c, top, 1)], -1).reshape(-1, 3)[keep.ravel()])
    src, dst = np.concatenate(best_s), np.concatenate(best_q)
    vals = np.concatenate(best_v)
    order = _capped(np.lexsort((dst, src, -vals[:, 0])), dst, cfg.per_target, cfg.top_k)
    say(f"extract: {v} sources scored, {len(order)} proposals")
    heads = _head_deltas(tuned, switch_off, other, src[order] + offset, dst[order] + offset)
    semcons = json.loads((model_dir / "compile.json").read_text()).get("semcons", [])
    lines = _corpus_lines(model_dir, corpus, src[order], dst[order], cfg.evidence_lines)
    out = []
    for n, i in enumerate(order):
        delta = heads[n]
        head = int(np.argmax(np.abs(delta))) if len(delta) and np.abs(delta).max() > 0 else None
        semcon = semcons[head]["particle"] if head is not None and head < len(semcons) else None
        out.append(Proposal(
            src=particles[src[i]], dst=particles[dst[i]], score=float(vals[i, 0]),
            confidence=float(np.exp(vals[i, 1])), tuned=float(vals[i, 1]),
            compiled=float(vals[i, 2]), head=head, semcon=semcon,
            evidence={"head_deltas": [round(float(x), 6) for x in delta],
                      "lines": lines[n]}))
    return out


def _capped(order: np.ndarray, dst: np.ndarray, per_target: int, k: int) -> np.ndarray:
    """The first `k` of `order` taking at most `per_target` proposals into one target."""
    seen: dict[int, int] = {}
    keep = []
    for i in order:
        t = int(dst[i])
        if seen.get(t, 0) < per_target:
            seen[t] = seen.get(t, 0) + 1
            keep.append(i)
            if len(keep) == k:
                break
    return np.asarray(keep, dtype=np.int64)


def _logprobs(tuned, switch_off, other, ids: np.ndarray, offset: int):
    x = torch.as_tensor(ids)[:, None]
    lp_t = torch.log_softmax(tuned(input_ids=x).logits[:, -1].float(), -1)[:, offset:]
    if switch_off is not None:
        with switch_off():
            lp_c = torch.log_softmax(tuned(input_ids=x).logits[:, -1].float(), -1)[:, offset:]
    elif other is not None:
        lp_c = torch.log_softmax(other(input_ids=x).logits[:, -1].float(), -1)[:, offset:]
    else:
        lp_c = lp_t
    return lp_t.numpy().astype(np.float64), lp_c.numpy().astype(np.float64)


def _head_deltas(tuned, switch_off, other, src_ids, dst_ids) -> np.ndarray:
    """(n, heads): per-head logit contribution to dst after [src], tuned minus compiled."""
    if len(src_ids) == 0:
        return np.zeros((0, 0))
    t = _head_logits(tuned, src_ids, dst_ids, nullcontext)
    if switch_off is not None:
        c = _head_logits(tuned, src_ids, dst_ids, switch_off)
    elif other is not None:
        c = _head_logits(other, src_ids, dst_ids, nullcontext)
    else:
        c = np.zeros_like(t)
    return t - c


def _head_logits(model, src_ids, dst_ids, context) -> np.ndarray:
    """Sum over layers of each head's o_proj contribution · lm_head[dst], through the final
    RMSNorm frozen at its actual input (direct logit attribution: additive over heads)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config
    h = cfg.num_attention_heads
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    captured, final = [], []
    hooks = [layer.self_attn.o_proj.register_forward_hook(
        lambda mod, args, out: captured.append((mod, args[0][:, -1].detach())))
        for layer in base.model.layers]
    hooks.append(base.model.norm.register_forward_hook(
        lambda mod, args, out: final.append(args[0][:, -1].detach())))
    with context():
        try:
            model(input_ids=torch.as_tensor(src_ids)[:, None])
        finally:
            for hook in hooks:              # before calling o_proj again below
                hook.remove()
        n = len(src_ids)
        x = final[0]                                                               # (n, d)
        norm = base.model.norm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        factor = norm.weight[None] * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        target = base.lm_head.weight[torch.as_tensor(dst_ids)] * factor               # (n, d)
        heads = torch.zeros(n, h)
        eye = torch.eye(h).repeat_interleave(dh, dim=1)                             # (h, h·dh)
        for mod, a in captured:                                                     # (n, h·dh)
            parts = mod((a[:, None, :] * eye[None]).reshape(n * h, -1)).reshape(n, h, -1)
            heads += (parts * target[:, None, :]).sum(-1)
    return heads.numpy().astype(np.float64)


def _corpus_lines(model_dir: Path, corpus: Path | None, src, dst, keep: int) -> list[list]:
    """For each pair, up to `keep` (line number, text) of the corpus where both occur."""
    if corpus is None:
        return [[] for _ in src]
    from finetune.text import Lexicon
    lexicon = Lexicon.of_checkpoint(model_dir)
    offset = len(SPECIAL_TOKENS)
    wanted = set(int(x) for x in src) | set(int(x) for x in dst)
    where: dict[int, list[int]] = {}
    texts = Path(corpus).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(texts, 1):
        for token in set(lexicon.match(line)[0]):
            if token - offset in wanted:
                where.setdefault(token - offset, []).append(number)
    out = []
    for s, d in zip(src, dst):
        both = sorted(set(where.get(int(s), [])) & set(where.get(int(d), [])))[:keep]
        out.append([[n, texts[n - 1][:300]] for n in both])
    return out
