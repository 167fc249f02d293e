"""`graft tune`: a compiled checkpoint fine-tuned on text — LoRA, full weights or QLoRA —
with a held-out slice, early stopping, loss curves, and forgetting measured before/after.

The loop is a plain torch loop (bench/tune.py holds it to ≥ 0.9× a bare peft + torch loop):
seeded shuffles, AdamW, evaluation every `eval_every` steps, the best held-out state kept.

Under a launcher (`accelerate launch` on GPUs, `torchrun --nproc_per_node N` on CPUs; both set
WORLD_SIZE) the same command is data-parallel: every process draws the same batches, takes
its share of each batch's rows, and the processes average their gradients before each step
(an all-reduce through accelerate's process group — not DistributedDataParallel, whose
gradient hooks need the wrapped forward, which the sampled softmax bypasses), so they stay
in lockstep; process 0 decides early stopping and writes the outputs.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from graph.checkpoint import LEXICON
from finetune import data, forgetting
from finetune.text import Lexicon, corpus_sequences
from graph.errors import GraftError

METHODS = ("lora", "full", "qlora")
DEFAULT_LR = {"lora": 1e-3, "qlora": 1e-3, "full": 1e-4}
# A 117k-particle checkpoint spends nearly all of a training step and of a held-out
# measurement in the 117k-way output head: beyond AUTO_FULL tokens of vocabulary the loss is
# a softmax over the batch's own targets plus SAMPLED uniformly drawn tokens, and the held-out
# loss is measured on a seeded subset of rows within MEASURE_LOGITS logit entries (cyberwiki
# and the WordNet animals subset, ~1e8 entries, are measured whole and trained in full).
AUTO_FULL, SAMPLED, MEASURE_LOGITS = 32768, 8192, 200_000_000
CARRIED = (LEXICON, "particles.json", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TuneConfig:
    """How to tune. `lr=None` takes the method's default (DEFAULT_LR)."""

    method: str = "lora"
    lr: float | None = None
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 16
    block: int = 64                 # tokens per training row
    docs: str = "auto"              # corpus layout: auto, paragraphs, lines, jsonl
    holdout: float = 0.1            # share of documents held out
    eval_every: int = 25            # steps between held-out evaluations
    patience: int = 4               # evaluations without improvement before stopping
    replay: float = 0.0             # graph-walk rows per text row in every batch
    link_rows: float = 0.0          # link rows (loop/linkrows.py) per text row in every batch
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    graph_links: int = 2000         # links sampled for graph fit
    sampled: int | None = None      # softmax over the batch's targets + this many sampled
                                    # tokens; 0: full softmax; None: full up to AUTO_FULL
                                    # tokens of vocabulary, SAMPLED beyond (see sampled_loss)
    measure_logits: int = MEASURE_LOGITS  # held-out tokens × vocabulary measured per evaluation
    seed: int = 0
    threads: int = 1                # torch threads (see graph.runtime.torch_threads)
    device: str = "auto"            # auto (CUDA when torch sees it), cpu, cuda[:N]

    def __post_init__(self):
        from finetune.text import DOCS
        if self.docs not in DOCS:
            raise GraftError(f"--docs {self.docs}: expected one of {', '.join(DOCS)}")
        if self.method not in METHODS:
            raise GraftError(f"--method {self.method}: expected one of {', '.join(METHODS)}")
        if (self.replay < 0 or self.link_rows < 0 or not 0 <= self.holdout < 1
                or self.batch_size < 1 or self.block < 2 or (self.sampled or 0) < 0):
            raise GraftError(f"replay={self.replay}, link_rows={self.link_rows}, holdout="
                             f"{self.holdout}, batch_size={self.batch_size}, block={self.block},"
                             f" sampled={self.sampled}: expected replay >= 0, link_rows >= 0, "
                             "0 <= holdout < 1, batch_size >= 1, block >= 2, sampled >= 0")

    def sampled_for(self, vocab: int) -> int:
        """How many sampled tokens the loss uses at this vocabulary size (0: full softmax)."""
        if self.sampled is None:
            return SAMPLED if vocab > AUTO_FULL else 0
        return self.sampled if self.sampled < vocab else 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


class Processes:
    """This process's place among those a launcher started (WORLD_SIZE > 1), or rank 0 of 1,
    where nothing is exchanged."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.device = 0, device
        if self.world > 1:
            from accelerate import Accelerator
            acc = Accelerator(cpu=device == "cpu")      # sets up the process group
            self.rank, self.device = acc.process_index, str(acc.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, rows: list) -> list:
        """This process's rows of a batch every process drew alike."""
        return rows[self.rank::self.world]

    def average_grads(self, params: list) -> None:
        """Every process's gradients replaced by their mean, in one all-reduce of all of
        them (one per tensor cost more than the step on a small model)."""
        if self.world > 1:
            import torch.distributed as dist
            grads = [p.grad for p in params if p.grad is not None]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world
            start = 0
            for g in grads:
                g.copy_(flat[start:start + g.numel()].view_as(g))
                start += g.numel()

    def from_main(self, value: float) -> float:
        """Process 0's value (the held-out loss that decides early stopping)."""
        if self.world == 1:
            return value
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        if self.world == 1:
            return [value]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def wait(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()


def load_for_tuning(model_dir: Path, cfg: TuneConfig, device: str | None = None):
    """The model with what `cfg.method` trains made trainable (peft for lora/qlora), on
    `device` (default cfg.device)."""
    from finetune.checkpoints import load_checked
    from graph.runtime import resolve_device
    device = device or resolve_device(cfg.device)
    kwargs = {}
    if cfg.method == "qlora":
        kwargs = {"quantization_config": _four_bit(), "device_map": {"": device}}
    model = load_checked(model_dir, dtype=torch.float32, **kwargs)
    if cfg.method != "qlora":
        model = model.to(device)
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.targets), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _four_bit():
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise GraftError(f"--method qlora needs bitsandbytes ({exc}); "
                         "install the extra: pip install -e '.[qlora]'") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.float32)


@dataclass
class Curve:
    """Loss per step and held-out loss per evaluation."""

    rows: list[dict] = field(default_factory=list)

    def add(self, **row) -> None:
        self.rows.append(row)

    def write(self, out: Path) -> None:
        import csv
        with open(out / "curves.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, ["step", "epoch", "train_loss", "heldout_loss", "tokens",
                                    "batch_tokens", "seconds"])
            w.writeheader()
            w.writerows(self.rows)
        _plot(self.rows, out / "curves.png")


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return                                   # the csv is the record; the plot is a view
    fig, ax = plt.subplots(figsize=(6, 3.5))
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] != ""]
    held = [(r["step"], r["heldout_loss"]) for r in rows if r["heldout_loss"] != ""]
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.7, label="train (per step)")
    if held:
        ax.plot(*zip(*held), "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("next-particle loss (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune(model_dir: Path, corpus: Path, out: Path, cfg: TuneConfig = TuneConfig(), store=None,
         say: Callable[[str], None] = lambda _: None, link_rows: list | None = None) -> dict:
    """Tune with `cfg.threads` torch threads; see `_tune`."""
    from graph.runtime import torch_threads
    with torch_threads(cfg.threads):
        return _tune(model_dir, corpus, out, cfg, store, say, link_rows or [])


def _tune(model_dir: Path, corpus: Path, out: Path, cfg: TuneConfig, store,
          say: Callable[[str], None], link_rows: list) -> dict:
    """Tune `model_dir` on `corpus`; write the adapter (lora/qlora) or model (full) to `out`
    with curves.csv/png and tune.json; returns tune.json's content.

    With a store, graph fit is measured before and after and `cfg.replay` can mix walks of
    the checkpoint's snapshot into the batches; without one, only text loss is measured.
    `link_rows` ((tokens, context length) pairs, loop/linkrows.py) are mixed in at
    `cfg.link_rows` per text row.
    """
    if cfg.link_rows and not link_rows:
        raise GraftError(f"link_rows={cfg.link_rows} but no link rows were given")
    model_dir, out = Path(model_dir), Path(out)
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)               # DESIGN §7: ~20× on CPU (tiny singular values)
    seqs, train_rows, held_rows = text_rows(Lexicon.of_checkpoint(model_dir), corpus, cfg)
    say(f"corpus: {seqs.coverage.share:.1%} of {seqs.coverage.words} words matched, "
        f"{seqs.coverage.particles} particles, {seqs.coverage.sequences} sequences")
    if not train_rows or not held_rows:
        raise GraftError(f"{corpus}: too little matched text to train and hold out "
                         f"({len(train_rows)} training rows, {len(held_rows)} held-out rows)")
    adj = data.checkpoint_graph(store, model_dir) if store is not None else None
    if cfg.replay and adj is None:
        raise GraftError("--replay needs the store the checkpoint was compiled from (--db)")
    pairs = forgetting.sample_links(adj, cfg.graph_links, cfg.seed) if adj is not None else None

    from graph.runtime import resolve_device
    procs = Processes(resolve_device(cfg.device))
    if procs.world > 1 and cfg.batch_size < procs.world:
        raise GraftError(f"batch_size={cfg.batch_size} is smaller than the {procs.world} "
                         "processes sharing each batch")
    model = load_for_tuning(model_dir, cfg, procs.device)
    vocab = model.get_output_embeddings().weight.shape[0]
    measured = budget_rows(held_rows, vocab, cfg.seed, cfg.measure_logits)
    if len(measured) < len(held_rows):
        say(f"held-out loss measured on {len(measured)} of {len(held_rows)} rows "
            f"(≤ {cfg.measure_logits:.0e} logits of a {vocab}-token vocabulary)")
    measure = _measurer(model, measured, adj, pairs)
    before = measure()
    before["heldout_loss_tempered"], before["temperature"] = _tempered(model, train_rows,
                                                                       measured, cfg.seed)
    say(f"before: held-out loss {before['heldout_loss']:.4f}"
        f" ({before['heldout_loss_tempered']:.4f} at a scale fitted on the training text)"
        + (f", graph MRR {before['graph']['mrr']:.4f}" if adj is not None else ""))
    walks = (data.walk_rows(adj, max(len(train_rows), 1000), cfg.block, cfg.seed)
             if cfg.replay else [])
    result = _train(model, train_rows, walks, link_rows, cfg, lambda: measure()["heldout_loss"],
                    cfg.sampled_for(vocab), say, procs)
    after = measure()
    say(f"after: held-out loss {after['heldout_loss']:.4f}"
        + (f", graph MRR {after['graph']['mrr']:.4f}" if adj is not None else ""))
    # the processes must end with the same weights: a digest of each one's trainable state
    digests = procs.gather(_digest(model))
    if procs.world > 1 and len(set(digests)) > 1:
        raise GraftError(f"the {procs.world} tuning processes ended with different weights")
    if procs.main:
        _save(model, model_dir, out, cfg)
        result["curve"].write(out)
    record = {"model": str(model_dir.resolve()), "corpus": str(Path(corpus).resolve()),
              "method": cfg.method, "config": {**asdict(cfg), "lr": cfg.learning_rate},
              "coverage": seqs.coverage.to_json(),
              "rows": {"train": len(train_rows), "heldout": len(held_rows), "walks": len(walks),
                       "links": len(link_rows), "heldout_measured": len(measured)},
              "before": before, "after": after, "processes": procs.world,
              **{k: v for k, v in result.items() if k != "curve"}}
    if procs.main:
        (out / "tune.json").write_text(json.dumps(record, indent=2) + "\n")
    procs.wait()
    return record


def _digest(model) -> str:
    """sha256 of the trainable weights, in name order."""
    import hashlib
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _tempered(model, train_rows, held_rows, seed: int) -> tuple[float, float]:
    """forgetting.tempered_text_loss with the scale fitted on `scale_rows` of the training
    rows."""
    vocab = model.get_output_embeddings().weight.shape[0]
    loss, scale = forgetting.tempered_text_loss(model, scale_rows(train_rows, vocab, seed),
                                                held_rows)
    return round(loss, 6), round(scale, 6)


def scale_rows(rows: list[list[int]], vocab: int, seed: int) -> list[list[int]]:
    """The seeded training rows a text logit scale is fitted on (4e7 logit entries)."""
    return budget_rows(rows, vocab, seed, 40_000_000)


def budget_rows(rows: list[list[int]], vocab: int, seed: int, budget: int) -> list[list[int]]:
    """Seeded rows, in their order, as many as keep their logits within `budget` entries
    (at least 8; all of them when they fit)."""
    width = max(len(r) for r in rows)
    n = int(np.clip(budget // (width * vocab), 8, len(rows)))
    if n == len(rows):
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return [rows[i] for i in sorted(pick)]


def text_docs(lexicon: Lexicon, corpus: Path, cfg: TuneConfig):
    """(sequences, training documents, held-out documents) of `corpus` under `lexicon`, split
    by cfg.holdout/seed and keyed by where each document starts."""
    seqs = corpus_sequences(corpus, lexicon, docs=cfg.docs)
    return (seqs, *data.split(seqs.ids, cfg.holdout, cfg.seed, keys=seqs.lines))


def text_rows(lexicon: Lexicon, corpus: Path, cfg: TuneConfig):
    """(sequences, training rows, held-out rows): text_docs cut into cfg.block-token rows."""
    seqs, train_docs, held_docs = text_docs(lexicon, corpus, cfg)
    return seqs, data.blocks(train_docs, cfg.block), data.blocks(held_docs, cfg.block)


def _measurer(model, held_rows, adj, pairs):
    def measure() -> dict:
        result = {"heldout_loss": forgetting.text_loss(model, held_rows)}
        if adj is not None:
            result["graph"] = forgetting.graph_fit(model, adj, pairs)
        return result
    return measure


def sampled_loss(model, batch: data.Batch, sampled: int, rng: np.random.Generator
                 ) -> torch.Tensor:
    """Next-token cross-entropy of a softmax over a subset of the vocabulary: every token the
    batch must predict plus `sampled` tokens drawn uniformly (seeded) — a restricted softmax
    (Jean et al. 2015). The output head is applied to those rows only, so a step costs the
    decoder plus (B·T)·d·(targets + sampled) rather than (B·T)·d·V. It equals the full loss
    when the subset is the whole vocabulary (tests/finetune/test_tune.py); against the full
    softmax see bench/sampled_softmax.py."""
    head = model.get_output_embeddings()
    inner = model.get_decoder()                           # the decoder stack, LoRA included
    dev = head.weight.device
    hidden = inner(input_ids=batch.input_ids.to(dev),
                   attention_mask=batch.attention_mask.to(dev)).last_hidden_state
    labels = batch.labels[:, 1:].to(dev)
    keep = labels != data.IGNORE
    h, target = hidden[:, :-1][keep], labels[keep]                           # (N, d), (N,)
    draw = torch.from_numpy(rng.integers(0, head.weight.shape[0], sampled)).to(dev)
    vocab = torch.unique(torch.cat([target, draw]))                         # sorted
    logits = h @ head.weight[vocab].T                                       # (N, C)
    if head.bias is not None:
        logits = logits + head.bias[vocab]
    return torch.nn.functional.cross_entropy(logits, torch.searchsorted(vocab, target))


def _train(model, rows, walks, link_rows, cfg: TuneConfig, heldout_loss, sampled: int,
           say, procs: Processes | None = None) -> dict:
    from tqdm import tqdm
    procs = procs or Processes("cpu")
    rng = np.random.default_rng(cfg.seed)
    draws = np.random.default_rng(cfg.seed + 1)     # sampled tokens: the batch order stays
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    per_epoch = -(-len(rows) // cfg.batch_size)
    total = cfg.max_steps or per_epoch * cfg.epochs
    # rows mixed into every batch: graph walks (replay) and link rows, so many per text row
    extras = [(extra, int(round(share * cfg.batch_size)))
              for extra, share in ((walks, cfg.replay), (link_rows, cfg.link_rows))
              if extra and share]
    curve, best, best_state, best_step, bad, step = Curve(), np.inf, None, 0, 0, 0
    tokens, train_seconds, stopped = 0, 0.0, "steps"
    bar = tqdm(total=total, desc=f"tune ({cfg.method})", unit="step", leave=False,
               disable=not procs.main)
    while step < total:
        epoch = step // per_epoch
        for chunk in data.chunks(rows, cfg.batch_size, rng):
            for extra, n in extras:
                if n:
                    pick = rng.choice(len(extra), min(n, len(extra)), replace=False)
                    chunk = chunk + [extra[i] for i in pick]
            if len(chunk) < procs.world:        # every process sees the same chunk
                continue
            batch = data.collate(procs.share(chunk))
            model.train()
            start = time.perf_counter()
            loss = (sampled_loss(model, batch, sampled, draws) if sampled else
                    model(**{k: v.to(device) for k, v in batch.as_kwargs().items()}).loss)
            loss.backward()
            procs.average_grads(params)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
            train_seconds += seconds
            tokens += batch.tokens
            step += 1
            bar.update(1)
            row = {"step": step, "epoch": epoch, "train_loss": round(float(loss.detach()), 5),
                   "heldout_loss": "", "tokens": tokens, "batch_tokens": batch.tokens,
                   "seconds": round(seconds, 5)}
            if step % cfg.eval_every == 0 or step == total:
                held = procs.from_main(heldout_loss())
                row["heldout_loss"] = round(held, 5)
                bar.set_postfix(heldout=f"{held:.4f}")
                if held < best - 1e-6:
                    best, best_step, bad = held, step, 0
                    best_state = _trainable_state(model)
                else:
                    bad += 1
            curve.add(**row)
            if bad >= cfg.patience:
                stopped = "early"
                break
            if step >= total:
                break
        if stopped == "early":
            break
    bar.close()
    tokens = int(sum(procs.gather(tokens)))        # every process's share of the batches
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    say(f"trained {step} steps ({stopped} stop), best held-out {best:.4f} at step {best_step}")
    return {"curve": curve, "steps": step, "stopped": stopped, "best_step": best_step,
            "best_heldout_loss": float(best), "train_tokens": tokens,
            "train_seconds": round(train_seconds, 3),
            "tokens_per_second": round(tokens / train_seconds, 1) if train_seconds else 0.0,
            "sampled": sampled, "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "cpu")}


def _trainable_state(model) -> dict:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().clone() for n, t in model.state_dict().items() if n in names}


def _save(model, model_dir: Path, out: Path, cfg: TuneConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if cfg.method == "full" and getattr(model.config, "architectures", None) is None:
        model.config.architectures = ["LlamaForCausalLM"]
        model.config.save_pretrained(out)
    for name in CARRIED:                          # text → particles and names travel along
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, out / name)

