"""The loop's approximation error: the compiled model's next-particle cross-entropy on
held-out text (DESIGN §4), measured so that cycles compare.

Three things change between two cycles' checkpoints besides the links the loop added, and
each moves a plain cross-entropy on its own:
- the logit scale, which the compiler fits to links, not text — so the loss is taken at one
  scale fitted on training text (finetune.forgetting.fit_scale);
- the vocabulary: an accepted link can bring a particle into the model, and every particle
  more is one more class to spread probability over (cyberwiki seed 1: 6189 → 6200 over
  three cycles) — so the softmax runs over the reference checkpoint's particles only;
- the text: the corpus is matched with each checkpoint's own lexicon, so a new particle adds
  held-out tokens — so the reference checkpoint's lexicon cuts the text for every cycle.
The reference is cycle 1's checkpoint. Held-out documents are chosen by a keyed hash
(finetune.data.split), the same every cycle.

The error is also split into the first predicted position of each held-out document (the
particle right after the page's own name, where the page's links act directly) and the rest.
Beside it, with the cycle's adapter, KL(tuned ‖ compiled) at those first positions: how far
the text moved the model's belief about what follows a page — what the text says that the
graph does not yet (DESIGN §4). The tuned side is taken as it was trained; the compiled side
at the logit scale that brings it closest, so the KL counts what no temperature of the graph
explains. Against the compiled logits as they are (`kl_raw`) the KL is mostly that scale:
the compiler's logits are two to three times too sharp for text (fitted scale 0.32 on
cyberwiki, 0.47 on WordNet), the adapter's first steps soften them, and the raw KL measures
how far each cycle's tuning went (cyberwiki loop, split seed 1, cycle 1: raw 3.91 nats,
0.51 at the best scale).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from graph.checkpoint import SPECIAL_TOKENS
from graph.runtime import device_of
from finetune import data
from finetune.forgetting import batch_rows, fit_scale
from finetune.text import Lexicon
from finetune.tune import TuneConfig, scale_rows, text_docs

UNK = SPECIAL_TOKENS.index("<unk>")
APPROX_LOGITS = 1_000_000_000   # held-out tokens × vocabulary scored (whole documents, seeded)


def approximation_error(model_dir: Path, reference_dir: Path, corpus: Path,
                        cfg: TuneConfig = TuneConfig(), batch_size: int = 32,
                        adapter: Path | None = None) -> dict:
    """Cross-entropy (nats per token) of the compiled checkpoint `model_dir` on the held-out
    documents of `corpus`, over `reference_dir`'s particles and lexicon, at the scale that
    fits the training documents best; with the reference itself it is tune's tempered loss.

    Returns {"error", "first", "rest", "scale", "tokens", "first_tokens", "dropped", "kl",
    "kl_scale", "kl_raw"}: `dropped` counts held-out tokens whose particle the model lacks
    (not scored); with `adapter` (else None) `kl` is KL(tuned ‖ compiled) at the first
    positions (nats), the compiled logits at the scale `kl_scale` that brings them closest
    to the tuned model, and `kl_raw` the same against the compiled logits as they are.
    """
    from transformers import AutoModelForCausalLM
    to_model, to_column, columns = _token_map(Path(model_dir), Path(reference_dir))
    _, train_docs, held_docs = text_docs(Lexicon.of_checkpoint(reference_dir), corpus, cfg)
    held_docs = budget_docs(held_docs, len(columns), cfg.seed, APPROX_LOGITS)
    train_rows = data.blocks(train_docs, cfg.block)
    held, held_first = [], []
    for doc in held_docs:
        for i, row in enumerate(data.blocks([doc], cfg.block)):
            held.append(row)
            held_first.append(i == 0)
    if not train_rows or not held:
        from graph.errors import GraftError
        raise GraftError(f"{corpus}: too little matched text to measure the approximation "
                         "error")
    from graph.runtime import resolve_device
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(resolve_device(cfg.device))
    model.eval()
    mapping = (to_model, to_column, columns)
    fit_logits, fit_targets, _, _ = _scored(model, scale_rows(train_rows, len(columns), cfg.seed),
                                            None, mapping, batch_size)
    scale = fit_scale(fit_logits, fit_targets)
    del fit_logits
    ce, _, first, dropped = _scored(model, held, held_first, mapping, batch_size, scale)
    mean = lambda x: round(float(x.mean()), 6) if len(x) else None  # noqa: E731
    starts = [row[0] for row, f in zip(held, held_first) if f and len(row) > 1]
    kl = (first_kl(Path(model_dir), Path(adapter), starts, mapping, batch_size, cfg.device)
          if adapter is not None else {})
    return {"error": mean(ce), "first": mean(ce[first]), "rest": mean(ce[~first]),
            "scale": round(scale, 6), "tokens": len(ce), "first_tokens": int(first.sum()),
            "dropped": dropped, "kl": kl.get("kl"), "kl_scale": kl.get("scale"),
            "kl_raw": kl.get("raw"),
            "documents": len(held_docs)}


def budget_docs(docs: list[list[int]], vocab: int, seed: int, budget: int) -> list[list[int]]:
    """Seeded whole documents, in their order, as many as keep their tokens × `vocab` within
    `budget` logits (all of them when they fit; at least one): a 117k-particle vocabulary
    over all of WordNet's held-out glosses is 10¹¹ logits, where cyberwiki's is 10⁸."""
    if sum(map(len, docs)) * vocab <= budget:
        return docs
    keep, used = [], 0
    for i in np.random.default_rng(seed).permutation(len(docs)):
        if keep and used + len(docs[i]) * vocab > budget:
            break
        keep.append(int(i))
        used += len(docs[i]) * vocab
    return [docs[i] for i in sorted(keep)]


KL_SCALES = np.exp(np.linspace(np.log(0.02), np.log(50.0), 521))   # steps of 1.5%


@torch.no_grad()
def first_kl(model_dir: Path, adapter: Path, starts: list[int], mapping,
             batch_size: int = 256, device: str = "auto") -> dict:
    """KL(tuned ‖ compiled) of the next particle after each held-out document's first
    particle (reference tokens `starts`), over the reference columns, averaged over starts:
    {"kl": at the compiled logits' scale that brings them closest to the tuned model, "scale":
    that scale, "raw": against the compiled logits as they are}; {} without `starts`.

    KL(t ‖ softmax(s·z)) is convex in s (a log-sum-exp less a linear term), so its minimum
    over the grid KL_SCALES, refined by the parabola through the three grid points around
    it (in log s), is the minimum; the tuned model is taken as it is. A fresh adapter gives
    0 for both (s = 1)."""
    from loop.extract import load_pair
    to_model, _, columns = mapping
    if not starts:
        return {}
    tuned, switch_off = load_pair(model_dir, adapter, device)
    dev = device_of(tuned)
    scales = torch.tensor(np.append(KL_SCALES, 1.0), dtype=torch.float32)
    total = torch.zeros(len(scales), dtype=torch.float64)
    for i in range(0, len(starts), batch_size):
        ids = to_model[torch.tensor(starts[i:i + batch_size])][:, None].to(dev)   # (B, 1)
        t = torch.log_softmax(tuned(input_ids=ids).logits[:, -1].cpu()[:, columns].float(), -1)
        with switch_off():
            z = tuned(input_ids=ids).logits[:, -1].cpu()[:, columns].float()
        # Σ t (log t − s z) + logsumexp(s z), summed over the batch, for each scale s
        neg_entropy, tz = float((t.exp() * t).sum()), (t.exp() * z).sum(-1)   # (B,)
        step = max(1, 20_000_000 // z.numel())                  # ≤ 80 MB of scaled logits
        for j in range(0, len(scales), step):
            s = scales[j:j + step, None, None]                                   # (S, 1, 1)
            total[j:j + step] += (neg_entropy - (s[:, :, 0] * tz).sum(-1)
                                  + torch.logsumexp(s * z, -1).sum(-1)).double()
    kl = (total / len(starts)).numpy()
    raw, grid = float(kl[-1]), kl[:-1]
    k = int(np.clip(np.argmin(grid), 1, len(grid) - 2))
    x, y = np.log(KL_SCALES[k - 1:k + 2]), grid[k - 1:k + 2]
    a, b, c = np.polyfit(x, y, 2)
    at = float(np.clip(-b / (2 * a), x[0], x[-1])) if a > 0 else float(x[1])
    best = min(float(np.polyval([a, b, c], at)), float(grid.min()))
    return {"kl": round(max(best, 0.0), 6), "scale": round(float(np.exp(at)), 6),
            "raw": round(raw, 6)}


@torch.no_grad()
def _scored(model, rows: list[list[int]], row_first: list[bool] | None, mapping,
            batch_size: int, scale: float | None = None):
    """(logits over the reference columns (N, C) — or, given `scale`, the cross-entropy of
    each at that scale (N,), batch by batch, so the held-out logits are never all in memory —,
    targets (N,) as column indices, whether each is its row's first prediction in a row
    flagged first, tokens dropped) of every scored position of reference-token `rows`."""
    to_model, to_column, columns = mapping
    out, targets, first, dropped = [], [], [], 0
    dev = device_of(model)
    batch_size = batch_rows(model, batch_size, rows)
    for i in range(0, len(rows), batch_size):
        b = data.collate(rows[i:i + batch_size])
        logits = model(input_ids=to_model[b.input_ids].to(dev),
                       attention_mask=b.attention_mask.to(dev)).logits[:, :-1].cpu()
        labels = b.labels[:, 1:]
        target = torch.where(labels >= 0, to_column[labels.clamp(min=0)], -1)
        dropped += int(((labels >= 0) & (target < 0)).sum())
        keep = target >= 0
        flag = torch.zeros_like(keep)
        if row_first is not None:
            flag[:, 0] = torch.tensor(row_first[i:i + batch_size])
        kept = logits[keep][:, columns].float()
        out.append(kept if scale is None else torch.nn.functional.cross_entropy(
            scale * kept, target[keep], reduction="none"))
        targets.append(target[keep])
        first.append(flag[keep])
    return torch.cat(out), torch.cat(targets), torch.cat(first), dropped


def _token_map(model_dir: Path, reference_dir: Path):
    """(reference token → model token, <unk> where the model lacks the particle; reference
    token → softmax column, -1 where it lacks it; the model token of each column)."""
    offset = len(SPECIAL_TOKENS)
    ref = json.loads((reference_dir / "particles.json").read_text())
    own = {p: i + offset for i, p in
           enumerate(json.loads((model_dir / "particles.json").read_text()))}
    to_model = torch.tensor(list(range(offset)) + [own.get(p, UNK) for p in ref])
    present = [offset + i for i, p in enumerate(ref) if p in own]
    columns = torch.tensor(list(range(offset)) + [own[ref[t - offset]] for t in present])
    to_column = torch.full((offset + len(ref),), -1, dtype=torch.long)
    to_column[:offset] = torch.arange(offset)
    to_column[torch.tensor(present, dtype=torch.long)] = torch.arange(offset, len(columns))
    return to_model, to_column, columns
