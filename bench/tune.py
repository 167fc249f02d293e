"""Benchmark: `graft tune --method lora` against a bare peft + torch loop — same model, same
batches, same steps, same run. Training tokens/s and peak memory; target ratio ≥ 0.9.

Usage: python bench/tune.py [--steps 60] [--repeats 3] [--model DIR --corpus FILE]
                            [--processes N]

--processes N also runs `graft tune` data-parallel under `torchrun --nproc_per_node N` (what
`accelerate launch` does across GPUs; here N CPU processes of one thread each) beside one
process, the same batches and steps: training tokens/s of all processes together over process
0's training seconds (tune.json), and the held-out loss each reaches.

By default the model is the default data (numpy + scipy docstring graph) compiled at d = 66,
and the corpus is those docstrings, one document per function, so it runs on any machine.
Each measurement runs in a fresh subprocess (honest peak RSS, VmHWM). Tokens/s counts real
(non-pad) tokens over the seconds spent in forward + backward + optimiser step, the same
span in both loops; graft's held-out evaluations are not timed. The figure is the median of
per-step tokens/s after WARMUP steps: on a shared 2-core machine single steps stall for
seconds when another process runs, and a total would measure the neighbours.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH, BLOCK, LR, SEED, WARMUP = 16, 64, 1e-3, 0, 5


def prepare(workdir: Path) -> tuple[Path, Path]:
    """The default data compiled, and its docstrings as a corpus."""
    from compiler.compile import compile_snapshot
    from compiler.types import CompileConfig
    from graph.docs_graph import build_docs_graph
    from graph.ingest import ingest_links
    from graph.ingest_rows import ingest_particles
    from graph.snapshot import take_snapshot
    from graph.store import Store
    build_docs_graph(workdir / "data")
    with Store(workdir / "g.duckdb") as store:
        ingest_particles(store, [workdir / "data" / "particles.jsonl"])
        ingest_links(store, [workdir / "data" / "links.jsonl"])
        compile_snapshot(store, take_snapshot(store), workdir / "model",
                         CompileConfig(d=66, check_determinism=False))
        texts = [t for (t,) in store.query("SELECT text FROM particles WHERE text <> '' "
                                           "ORDER BY particle")]
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(t.split()) for t in texts) + "\n")
    return workdir / "model", corpus


def run_graft(model: Path, corpus: Path, steps: int, out: Path) -> dict:
    from finetune.tune import TuneConfig, tune
    cfg = TuneConfig(method="lora", lr=LR, max_steps=steps, eval_every=10**9, batch_size=BATCH,
                     block=BLOCK, seed=SEED)
    import csv
    record = tune(model, corpus, out, cfg)
    steps = list(csv.DictReader(open(out / "curves.csv")))
    return {"tokens": record["train_tokens"],
            "per_step": [(int(r["batch_tokens"]), float(r["seconds"])) for r in steps]}


def run_bare(model: Path, corpus: Path, steps: int) -> dict:
    """What a user would write by hand with peft and torch: same rows, order and steps."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune import data
    from finetune.text import Lexicon, corpus_sequences
    torch.manual_seed(SEED)
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)              # as graft tune does by default (TuneConfig.threads)
    seqs = corpus_sequences(corpus, Lexicon.of_checkpoint(model))
    train, _ = data.split(seqs.ids, 0.1, SEED)
    rows = data.blocks(train, BLOCK)
    net = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model)), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=LR,
                            weight_decay=0.0)
    rng, tokens, per_step, step = np.random.default_rng(SEED), 0, [], 0
    while step < steps:
        for batch in data.batches(rows, BATCH, rng):
            net.train()
            start = time.perf_counter()
            net(**batch.as_kwargs()).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            per_step.append((batch.tokens, time.perf_counter() - start))
            tokens += batch.tokens
            step += 1
            if step == steps:
                break
    return {"tokens": tokens, "per_step": per_step}


def run_processes(model: Path, corpus: Path, steps: int, n: int, out: Path) -> dict:
    """`graft tune` on n processes (torchrun; n = 1 runs it plainly): its tune.json."""
    import os
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "loop.cli"]
              if n > 1 else [sys.executable, "-m", "loop.cli"])
    subprocess.run(launch + ["--db", str(out / "none.duckdb"), "tune", str(model), "--corpus",
                             str(corpus), "--out", str(out), "--max-steps", str(steps),
                             "--eval-every", str(steps), "--batch-size", str(BATCH), "--block",
                             str(BLOCK), "--lr", str(LR), "--seed", str(SEED), "--device", "cpu"],
                   check=True, capture_output=True, text=True, cwd=REPO,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    return json.loads((out / "tune.json").read_text())


def processes_table(model: Path, corpus: Path, steps: int, n: int, workdir: Path) -> None:
    print(f"\n{'processes':<10} {'tokens/s':>9} {'tokens':>8} {'train s':>8} {'steps':>6} "
          f"{'held-out loss before → after':>30}")
    for k in (1, n):
        r = run_processes(model, corpus, steps, k, workdir / f"processes-{k}")
        print(f"{k:<10} {r['tokens_per_second']:>9.0f} {r['train_tokens']:>8} "
              f"{r['train_seconds']:>8.1f} {r['steps']:>6} "
              f"{r['before']['heldout_loss']:>14.4f} → {r['after']['heldout_loss']:.4f}")
    print(f"each process takes 1/{n} of every batch of {BATCH} rows; gradients are averaged "
          "before each step (finetune/tune.py Processes); same machine, same run.")


def measure(mode: str, model: Path, corpus: Path, steps: int, repeats: int,
            workdir: Path) -> dict:
    runs = []
    for i in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--one", mode, str(model), str(corpus),
                              str(steps), str(workdir / f"{mode}-{i}")],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {"tokens_per_s": statistics.median(statistics.median(
                t / s for t, s in r["per_step"][WARMUP:]) for r in runs),
            "tokens": runs[0]["tokens"], "peak_mib": max(r["peak_mib"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--processes", type=int, default=0,
                        help="also tune on N processes (torchrun) beside one")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, model, corpus, steps, out = args.one
        run = (run_graft(Path(model), Path(corpus), int(steps), Path(out)) if mode == "graft"
               else run_bare(Path(model), Path(corpus), int(steps)))
        from bench.ingest import _vm_hwm_mib
        print(json.dumps({**run, "peak_mib": _vm_hwm_mib()}))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="graft-bench-tune-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model, corpus = args.model, args.corpus
    if model is None or corpus is None:
        model, corpus = prepare(workdir)
    rows = []
    for _ in range(args.repeats):         # interleaved, so machine load hits both alike
        rows.append((measure("bare", model, corpus, args.steps, 1, workdir),
                     measure("graft", model, corpus, args.steps, 1, workdir)))
    bare = statistics.median(b["tokens_per_s"] for b, _ in rows)
    ours = statistics.median(g["tokens_per_s"] for _, g in rows)
    print(f"model {model}, corpus {corpus}: {args.steps} steps of {BATCH} rows × ≤ {BLOCK} "
          f"tokens, LoRA r=8 on q,k,v,o\n")
    print(f"{'loop':<24} {'tokens/s':>10} {'tokens':>8} {'peak MiB':>9}")
    print(f"{'bare peft + torch':<24} {bare:>10.0f} {rows[0][0]['tokens']:>8} "
          f"{max(b['peak_mib'] for b, _ in rows):>9.0f}")
    print(f"{'graft tune --method lora':<24} {ours:>10.0f} {rows[0][1]['tokens']:>8} "
          f"{max(g['peak_mib'] for _, g in rows):>9.0f}")
    print(f"\nratio graft / bare: {ours / bare:.2f} (target >= 0.9); median per-step tokens/s "
          f"after {WARMUP} warm-up steps, median of {args.repeats} interleaved fresh processes, "
          "same machine, same run.")
    if args.processes > 1:
        processes_table(model, corpus, args.steps, args.processes, workdir)


if __name__ == "__main__":
    main()
