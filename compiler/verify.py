"""`graft verify`: recompute a checkpoint's certificate from its files (and its store)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from safetensors import safe_open

from compiler import certificate, pack
from compiler.types import CompileConfig
from graph.checkpoint import COMPILE_RECORD
from graph.errors import GraftError
from graph.snapshot import get_snapshot
from graph.store import Store


def verify_checkpoint(out: Path, store: Store | None = None) -> dict:
    """Recompute the certificate of the checkpoint folder `out`.

    From the files alone: P-LOAD, P-LAYER and the integrity of every tensor against the
    digests in compile.json. With the store that holds the snapshot: the snapshot is
    recompiled with the recorded config, giving P-EMBED, P-ATTN and P-DET (the recompiled
    weights must equal the files byte for byte).
    """
    record_path = out / COMPILE_RECORD
    if not record_path.exists():
        raise GraftError(f"{out}: no compile.json; is this a graft checkpoint?")
    record = json.loads(record_path.read_text())
    seed = int(record["snapshot"][:16], 16)
    load, layer = certificate.load_and_probe(out, seed)
    checks = {"P-LOAD": load, "P-LAYER": layer, "INTEGRITY": _integrity(out, record)}
    if store is not None:
        snap = get_snapshot(store, record["snapshot"])
        cfg = CompileConfig(**{**record["config"], "check_determinism": False})
        from compiler.compile import compile_snapshot  # (import cycle)
        with tempfile.TemporaryDirectory(prefix="graft-verify-") as tmp:
            again = compile_snapshot(store, snap, Path(tmp), cfg)
            fresh = json.loads((Path(tmp) / COMPILE_RECORD).read_text())["tensors"]
        differ = sorted(n for n, t in record["tensors"].items()
                        if fresh.get(n, {}).get("blake3") != t["blake3"])
        checks.update({"P-EMBED": again["P-EMBED"], "P-ATTN": again["P-ATTN"],
                       "P-DET": {"pass": not differ, "differing_tensors": differ[:10]}})
    checks["pass"] = all(c.get("pass") is not False for c in checks.values())
    return checks


def _integrity(out: Path, record: dict) -> dict:
    """Every tensor in model.safetensors matches the digest compile.json recorded."""
    bad, seen = [], set()
    with safe_open(out / pack.WEIGHTS, framework="np") as f:
        for name in f.keys():
            seen.add(name)
            want = record["tensors"].get(name, {}).get("blake3")
            if want != pack.digest(f.get_tensor(name)):
                bad.append(name)
    missing = sorted(set(record["tensors"]) - seen)
    return {"pass": not bad and not missing, "mismatched": bad[:10], "missing": missing[:10]}
