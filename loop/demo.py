"""`graft demo`: the main job on the default data every fresh machine has offline."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compiler.compile import compile_snapshot
from graph import stats
from graph.docs_graph import build_docs_graph
from graph.ingest import ingest_links
from graph.ingest_rows import ingest_particles
from graph.snapshot import take_snapshot
from graph.store import Store

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "generated" / "numpy-docs"
HIDDEN = 0.1                    # share of the links hidden for the cycles to find


def run_demo(db: str, say: Callable[[str], None] = print, data_dir: Path | None = None,
             cycles: int = 2) -> dict:
    """Build the numpy/scipy docs graph, hide a seeded 10% of its links, ingest the rest
    into `db`, snapshot it, print stats, compile the snapshot into a Llama checkpoint and
    print its certificate; then run `cycles` loop cycles on the docstrings as text, each
    ranking the hidden links (graft against unlinked mentions), and print where the report
    is."""
    from loop.evaluate import split_links
    data_dir = data_dir or DATA_DIR
    say(f"building the default data (numpy/scipy docstrings) in {data_dir}")
    summary = build_docs_graph(data_dir)
    say(f"default data: {summary}")
    train, hidden = data_dir / "train_links.jsonl", data_dir / "hidden_links.jsonl"
    split = split_links(data_dir / "links.jsonl", HIDDEN, 0, train, hidden)
    say(f"hiding {split['holdout']} of {split['rows']} links (seed 0) in {hidden}: the "
        "cycles must find them again")
    with Store(db) as store:
        for result in ingest_particles(store, [data_dir / "particles.jsonl"], say=say):
            say(f"particles: {result.skipped or f'{result.rows} rows as batch {result.batch}'}")
        for result in ingest_links(store, [train], say=say):
            say(f"links: {result.skipped or f'{result.rows} rows (+{result.labels} label links) as batch {result.batch}'}")
        snap = take_snapshot(store)
        say(f"snapshot {snap.id} ({snap.links} links)")
        result = stats.graph_stats(store)
        print(stats.format_stats(result))
        model_dir = data_dir.parent / f"{data_dir.name}-model"
        say(f"compiling the snapshot into {model_dir}")
        cert = compile_snapshot(store, snap, model_dir, say=say)
    from loop.cli import format_certificate  # (import cycle)
    print(f"\ncompiled model: {model_dir}\ncertificate:")
    print(format_certificate(cert))
    rows, page = _cycles(db, data_dir, cycles, hidden, say) if cycles else ([], None)
    return {**result, "model": str(model_dir), "certificate": cert, "cycles": rows,
            "report": str(page) if page else None}


def write_corpus(data_dir: Path) -> Path:
    """The docstrings as text, one document per function: its name, then its text."""
    import json
    out = data_dir / "corpus.txt"
    docs = []
    for line in (data_dir / "particles.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("text"):
            docs.append(f"{row['name']}\n{row['text'].strip()}")
    out.write_text("\n\n".join(docs) + "\n")
    return out


def _cycles(db: str, data_dir: Path, cycles: int, hidden: Path, say
            ) -> tuple[list[dict], Path]:
    from finetune.tune import TuneConfig
    from loop.cycle import CycleConfig, format_metrics, run_cycles
    from loop.extract import ExtractConfig
    from loop.report import write_report
    out = data_dir.parent / f"{data_dir.name}-cycles"
    cfg = CycleConfig(corpus=write_corpus(data_dir), out=out, cycles=cycles, auto_accept=5,
                      holdout=hidden,
                      tune=TuneConfig(max_steps=30, eval_every=10),
                      extract=ExtractConfig(top_k=20))
    say(f"running {cycles} cycles (compile → tune on the docstrings → extract → accept top 5)")
    with Store(db) as store:
        rows = run_cycles(store, cfg, say=say)
    page = write_report(rows, out / "report.html")
    print(f"\ncycles:\n{format_metrics(rows)}\nreport: {page}")
    print("\nthe hidden links, ranked among every particle (MRR / Hits@10):")
    for r in rows:
        print(f"  cycle {r['cycle']}: graft {r.get('eval_mrr', 0):.4f} / "
              f"{r.get('eval_hits10', 0):.4f}   unlinked mentions "
              f"{r.get('eval_mentions_mrr', 0):.4f} / {r.get('eval_mentions_hits10', 0):.4f}"
              f"   ({r.get('eval_n')} links)")
    return rows, page
