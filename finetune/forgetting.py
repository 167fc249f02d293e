"""What tuning did to a model: held-out text loss, and graph fit (next-particle ranks of the
links the checkpoint was compiled from) — measured before and after (DESIGN §3)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from graph.checkpoint import SPECIAL_TOKENS
from graph.runtime import device_of
from finetune.data import batches


BATCH_LOGITS = 1 << 25      # logits one measuring forward pass may return (128 MB in float32)


def batch_rows(model, batch_size: int, rows: list[list[int]] | None = None) -> int:
    """`batch_size`, or fewer rows, so that one forward pass's logits (rows × positions ×
    vocabulary; without `rows`, one-token prompts) stay within BATCH_LOGITS: 32 rows of 64
    tokens over the 1.48M-token vocabulary of the 3M-particle synthetic graph are 3·10⁹
    logits (12 GB), and the measurements around tuning took a cycle's peak memory to 23.8 GB."""
    width = max((len(r) for r in rows), default=1) if rows else 1
    return max(1, min(batch_size, BATCH_LOGITS // (width * model.config.vocab_size)))


@torch.no_grad()
def text_loss(model, rows: list[list[int]], batch_size: int = 32, scale: float = 1.0) -> float:
    """Mean next-token cross-entropy (nats per predicted token) over `rows`, of
    softmax(scale · logits)."""
    model.eval()
    dev = device_of(model)
    total, count = 0.0, 0
    for b in batches(rows, batch_rows(model, batch_size, rows)):
        logits = model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(dev)).logits
        target = b.labels[:, 1:].to(dev)
        loss = torch.nn.functional.cross_entropy(
            scale * logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
            ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((target != -100).sum())
    return total / max(count, 1)


def tempered_text_loss(model, fit_rows: list[list[int]], rows: list[list[int]],
                       batch_size: int = 32) -> tuple[float, float]:
    """(cross-entropy on `rows` at the best logit scale for `fit_rows`, that scale).

    A compiled model's logit scale is fitted to its links (compiler/calibrate.py), and two
    compiles of nearly the same graph can land at scales far apart for text (cyberwiki: raw
    held-out loss 9.82, 8.99, 9.27 over three cycles; at a scale fitted on the training text,
    8.623, 8.617, 8.614). One scale s minimises the cross-entropy of softmax(s · logits) on
    `fit_rows` (golden section on log s in [1/50, 50]; convex in s), then `rows` are scored.
    """
    fit_logits, fit_targets = logits_of(model, fit_rows, batch_size)
    scale = fit_scale(fit_logits, fit_targets)
    del fit_logits
    return text_loss(model, rows, batch_size, scale=scale), scale


def fit_scale(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The s in [1/50, 50] minimising the cross-entropy of softmax(s · logits) against
    `targets` (golden section on log s; the loss is convex in s)."""
    lo, hi = np.log(1 / 50), np.log(50.0)
    ce = lambda s: float(torch.nn.functional.cross_entropy(logits * s, targets))  # noqa: E731
    for _ in range(40):
        a, b = lo + 0.382 * (hi - lo), lo + 0.618 * (hi - lo)
        if ce(np.exp(a)) < ce(np.exp(b)):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def logits_of(model, rows: list[list[int]],
              batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) next-token logits and (N,) targets of every predicted position of `rows`."""
    model.eval()
    dev = device_of(model)
    out, targets = [], []
    with torch.no_grad():
        for b in batches(rows, batch_rows(model, batch_size, rows)):
            keep = b.labels[:, 1:] != -100
            out.append(model(input_ids=b.input_ids.to(dev), attention_mask=b.attention_mask.to(
                dev)).logits[:, :-1][keep.to(dev)].float().cpu())
            targets.append(b.labels[:, 1:][keep])
    return torch.cat(out), torch.cat(targets)


def sample_links(adj: sp.csr_array, n: int, seed: int) -> np.ndarray:
    """Up to `n` links (src, dst) of the adjacency, seeded; (m, 2) int64 particle indices."""
    coo = adj.tocoo()
    pairs = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    if len(pairs) > n:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), n, replace=False))]
    return pairs


@torch.no_grad()
def graph_fit(model, adj: sp.csr_array, pairs: np.ndarray, batch_size: int = 256) -> dict:
    """Rank of q among all particles after the one-token prompt [p], for each link (p, q):
    MRR and Hits@10, filtered (p's other out-links are not counted above q)."""
    model.eval()
    offset = len(SPECIAL_TOKENS)
    adj = adj.tocsr()
    ranks = []
    batch_size = batch_rows(model, batch_size)                        # [p] prompts
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids = torch.as_tensor(chunk[:, :1] + offset).to(device_of(model))
        logits = model(input_ids=ids).logits[:, -1, offset:].float().cpu()  # (B, V)
        target = logits[torch.arange(len(chunk)), torch.as_tensor(chunk[:, 1])]
        above = (logits > target[:, None]).sum(1)
        for j, (p, q) in enumerate(chunk):                                # filter known links
            known = adj.indices[adj.indptr[p]:adj.indptr[p + 1]]
            known = known[known != q]
            if len(known):
                above[j] -= int((logits[j, torch.as_tensor(known)] > target[j]).sum())
        ranks.append((above + 1).numpy())
    r = np.concatenate(ranks) if ranks else np.zeros(0)
    return {"links": int(len(r)), "mrr": float(np.mean(1.0 / r)) if len(r) else 0.0,
            "hits10": float(np.mean(r <= 10)) if len(r) else 0.0}
