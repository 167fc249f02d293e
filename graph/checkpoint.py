"""The checkpoint contract: what a compiled checkpoint folder holds beyond a Llama model, as
the compiler writes it and finetune and loop read it. One module, so the three agree.

A checkpoint is a folder `from_pretrained` loads (config.json with `architectures`,
model.safetensors, the tokenizer files) plus:
- token ids: SPECIAL_TOKENS first, then one token per particle of the vocabulary, in the
  compile's first-appearance order (so particle i of the vocabulary is token i + 4);
- LEXICON: per particle, its name then its aliases — how text is read as particle tokens;
- COMPILE_RECORD: the config, derived architecture, snapshot and certificate of the compile.
"""
from __future__ import annotations

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
LEXICON = "lexicon.json"          # per particle, its name then aliases (text → particles)
COMPILE_RECORD = "compile.json"   # how the checkpoint was compiled, and its certificate
