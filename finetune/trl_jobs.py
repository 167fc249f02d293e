"""`graft sft | dpo | reward`: TRL's trainers on JSONL, for compiled checkpoints and for
any HF causal LM, with LoRA or full weights — and curator decisions as DPO pairs.

Columns are TRL's: sft takes prompt/completion (or messages, for a tokenizer with a chat
template); dpo and reward take prompt/chosen/rejected (reward also chosen/rejected alone).
For a compiled checkpoint (it has lexicon.json) every text field is first read into
particles — names and aliases, longest match — and written as the checkpoint's tokens, so a
prompt is just particle names in plain words.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from graph.checkpoint import LEXICON, SPECIAL_TOKENS
from graph.errors import GraftError
from graph.formats import json_lines

COLUMNS = {"sft": [("prompt", "completion"), ("messages",)],
           "dpo": [("prompt", "chosen", "rejected")],
           "reward": [("prompt", "chosen", "rejected"), ("chosen", "rejected")]}
TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")


def read_rows(path: Path, kind: str) -> list[dict]:
    """JSONL rows with one of `kind`'s column sets; errors name file, line and field."""
    path, rows = Path(path), []
    for number, _, row in json_lines(path):
        if isinstance(row, json.JSONDecodeError):
            raise GraftError(f"{path}:{number}: malformed JSON ({row.msg})")
        if not isinstance(row, dict):
            raise GraftError(f"{path}:{number}: expected an object, got {type(row).__name__}")
        cols = next((c for c in COLUMNS[kind] if all(k in row for k in c)), None)
        if cols is None:
            want = " or ".join("/".join(c) for c in COLUMNS[kind])
            raise GraftError(f"{path}:{number}: missing field(s): {kind} needs {want}")
        for k in cols:
            ok = isinstance(row[k], list) if k == "messages" else isinstance(row[k], str)
            if not ok:
                raise GraftError(f"{path}:{number}: field {k!r} has {type(row[k]).__name__} "
                                 f"(expected {'a list' if k == 'messages' else 'text'})")
        rows.append({k: row[k] for k in cols})
    if not rows:
        raise GraftError(f"{path}: no rows")
    return rows


def particle_text(model_dir: Path) -> Callable[[str], str] | None:
    """For a compiled checkpoint: text → its particles as token strings; else None."""
    if not (Path(model_dir) / LEXICON).exists():
        return None
    from transformers import AutoTokenizer

    from finetune.text import Lexicon
    lexicon = Lexicon.of_checkpoint(model_dir)
    vocab = AutoTokenizer.from_pretrained(str(model_dir)).convert_ids_to_tokens
    return lambda text: " ".join(vocab(lexicon.match(text)[0]))


def to_particles(rows: list[dict], convert: Callable[[str], str], path: Path) -> list[dict]:
    out = []
    for i, row in enumerate(rows, 1):
        if "messages" in row:
            raise GraftError(f"{path}: row {i}: a compiled checkpoint has no chat template; "
                             "use prompt/completion")
        # TRL joins prompt and answer as text: a leading space keeps the words apart
        new = {k: (" " if k != "prompt" else "") + convert(v) if k in TEXT_FIELDS else v
               for k, v in row.items()}
        empty = [k for k in ("completion", "chosen", "rejected") if k in new and not new[k].strip()]
        if empty:
            raise GraftError(f"{path}: row {i}: field {empty[0]!r} names no particle "
                             f"({row[empty[0]]!r})")
        out.append(new)
    return out


def checkpoint_tokens(model_dir: Path) -> dict[str, str]:
    """particle id → its token string in a compiled checkpoint (particle i of particles.json
    is token len(SPECIAL_TOKENS) + i)."""
    from transformers import AutoTokenizer
    particles = json.loads((Path(model_dir) / "particles.json").read_text())
    names = AutoTokenizer.from_pretrained(str(model_dir)).convert_ids_to_tokens(
        list(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(particles))))
    return dict(zip(particles, names))


def token_rows(pairs: Iterable[tuple], tokens: dict) -> list[dict]:
    """(prompt, chosen, rejected) keys → DPO rows of a checkpoint's token strings, as
    `train(..., tokens=True)` reads them (a leading space keeps the answer apart); rows
    naming a key without a token are left out."""
    return [{"prompt": tokens[p], "chosen": " " + tokens[c], "rejected": " " + tokens[r]}
            for p, c, r in pairs if p in tokens and c in tokens and r in tokens]


def preference_pairs(decisions: Iterable[dict], links: dict[str, list[str]] | None = None,
                     per_rejection: int = 4) -> list[dict]:
    """Curator decisions → DPO rows: for each source, every accepted target is chosen over
    every rejected one. A decision is {"source": name, "target": name, "status":
    "accepted"|"rejected"}; other statuses are ignored. Sorted, so the output is stable.

    A review queue rarely holds two proposals of one source (cyberwiki, 3 cycles of 50: no
    source had both an accepted and a rejected one), so with `links` ({source: targets it
    links}, ground truth) each rejected target is also paired under up to `per_rejection`
    of its source's linked targets — "p links q, not r" — picked by a hash of the pair, not
    by name order."""
    by_source: dict[str, dict[str, set[str]]] = {}
    for d in decisions:
        if d["status"] in ("accepted", "rejected"):
            by_source.setdefault(d["source"], {"accepted": set(), "rejected": set()})[
                d["status"]].add(d["target"])
    rows = set()
    for s, seen in by_source.items():
        chosen = set(seen["accepted"])
        if links and seen["rejected"]:
            truth = sorted(set(links.get(s, ())) - seen["rejected"], key=lambda t: (
                hashlib.blake2b(f"{s}\t{t}".encode(), digest_size=8).digest(), t))
            chosen |= set(truth[:per_rejection])
        rows |= {(s, c, r) for c in chosen for r in seen["rejected"] if c != r}
    return [{"prompt": s, "chosen": c, "rejected": r} for s, c, r in sorted(rows)]


def train(kind: str, model_dir: Path, data_path: Path, out: Path, *, method: str = "lora",
          max_steps: int | None = None, epochs: float = 1.0, lr: float | None = None,
          batch_size: int = 4, beta: float = 0.1, rank: int = 8, alpha: int = 16,
          seed: int = 0, device: str = "auto", tokens: bool = False,
          adapter: Path | None = None, say: Callable[[str], None] = lambda _: None) -> dict:
    """Run TRL's SFT, DPO or reward trainer on `device` (auto: CUDA when torch sees it);
    the adapter or model is saved to `out`. `tokens`: the rows of a compiled checkpoint are
    its token strings already (space-separated), not text to read into particles.
    `adapter`: a peft LoRA adapter of model_dir to train on instead of a fresh one (sft,
    dpo); DPO's reference is then that adapter as it was, not the bare model."""
    from graph.runtime import resolve_device
    device = resolve_device(device)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    if method not in ("lora", "full"):
        raise GraftError(f"--method {method}: expected lora or full")
    if adapter is not None and (kind == "reward" or method != "lora"):
        raise GraftError(f"{adapter}: an adapter to continue needs sft or dpo with "
                         f"--method lora (got {kind}, {method})")
    model_dir, out = Path(model_dir), Path(out)
    rows = read_rows(data_path, kind)
    convert = None if tokens else particle_text(model_dir)
    if convert is not None:
        rows = to_particles(rows, convert, data_path)
        say(f"compiled checkpoint: text read as particles, e.g. {rows[0]}")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = _model(kind, model_dir, tok)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    torch.set_flush_denormal(True)
    # fp32 everywhere (TRL defaults to bf16); on CUDA the trainer places the model itself
    common = dict(output_dir=str(out), use_cpu=device == "cpu", bf16=False, fp16=False,
                  report_to="none",
                  save_strategy="no", logging_steps=1, seed=seed, data_seed=seed,
                  per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                  max_steps=max_steps if max_steps else -1, disable_tqdm=False,
                  learning_rate=lr if lr is not None else (2e-4 if method == "lora" else 1e-5))
    peft = (LoraConfig(r=rank, lora_alpha=alpha, task_type="SEQ_CLS" if kind == "reward"
                       else "CAUSAL_LM", target_modules="all-linear")
            if method == "lora" and adapter is None else None)
    trainer = _trainer(kind, model, tok, Dataset.from_list(rows), peft, common, beta)
    with contextlib.redirect_stdout(sys.stderr):    # the Trainer prints its log dicts;
        result = trainer.train()                     # stdout is for --json
    if adapter is None:
        trainer.save_model(str(out))
    else:   # only the trained adapter: TRL's frozen reference copy ("ref") stays behind
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
            str(out), selected_adapters=["default"])
    (out / "training_args.bin").unlink(missing_ok=True)   # a pickle: graft ships safetensors only
    tok.save_pretrained(str(out))
    for name in (LEXICON, "particles.json"):
        if (model_dir / name).exists():
            (out / name).write_bytes((model_dir / name).read_bytes())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    record = {"kind": kind, "model": str(model_dir.resolve()), "data": str(Path(data_path)),
              "method": method, "device": device, "rows": len(rows),
              "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
              "steps": trainer.state.global_step,
              "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None,
              "train_seconds": round(result.metrics.get("train_runtime", 0.0), 3)}
    (out / f"{kind}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _model(kind: str, model_dir: Path, tok):
    if kind != "reward":
        from finetune.checkpoints import load_checked
        model = load_checked(model_dir, dtype=torch.float32)
    else:
        from transformers import AutoModelForSequenceClassification
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=1, dtype=torch.float32, output_loading_info=True)
        # the score head is new by design; anything else missing would be random weights
        bad = [k for k in info["missing_keys"] if not k.startswith("score.")]
        if bad or info["mismatched_keys"]:
            raise GraftError(f"{model_dir}: checkpoint does not match its config: {bad[:5]}")
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model.config, "architectures", None) is None:
        model.config.architectures = [type(model).__name__]
    return model


def _trainer(kind, model, tok, dataset, peft, common, beta):
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer
        return SFTTrainer(model=model, args=SFTConfig(**common, max_length=512),
                          train_dataset=dataset, processing_class=tok, peft_config=peft)
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        return DPOTrainer(model=model, args=DPOConfig(**common, beta=beta, max_length=512),
                          train_dataset=dataset, processing_class=tok, peft_config=peft)
    from trl import RewardConfig, RewardTrainer
    return RewardTrainer(model=model, args=RewardConfig(**common, max_length=512),
                         train_dataset=dataset, processing_class=tok, peft_config=peft)
