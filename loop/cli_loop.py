"""The loop's commands of `graft`: extract, review, cycle, report."""
from __future__ import annotations

from pathlib import Path

from graph.runtime import DEVICE_HELP
from graph.store import Store
from loop.cli_tune import SAMPLED_HELP

SCAN_HELP = ("score every particle for each source (all), or its candidates: what it names, "
             "what its neighbours link, the compiled model's top 100, the most linked "
             "(default auto: candidates beyond 20000 particles)")


SOURCES_HELP = ("which particles get proposals: all, or text (those with text: pages); auto: "
                "text when scanning candidates (a large graph)")


def cmd_extract(args, say, emit) -> None:
    from finetune.checkpoints import require_adapter
    from loop.extract import ExtractConfig, extract
    from loop.rank import Ranker
    from loop.review import add_proposals
    adapter = Path(args.adapter) if args.adapter else None
    require_adapter(adapter)
    ranker = Ranker.load(Path(args.ranker)) if args.ranker else None
    cfg = ExtractConfig(top_k=args.top_k, per_source=args.per_source,
                        per_target=args.per_target, beta=args.beta, device=args.device,
                        scan=args.scan, sources=args.sources)
    with Store(args.db) as store:
        proposals = extract(store, Path(args.model), cfg, adapter=adapter, ranker=ranker,
                            corpus=Path(args.corpus) if args.corpus else None, say=say)
        new = add_proposals(store, proposals, args.cycle, str(Path(args.model).resolve()),
                            str(adapter.resolve()) if adapter else None)
        names = store.names_of(sorted({p.src for p in proposals} | {p.dst for p in proposals}))
    rows = [{**p.__dict__, "src_name": names.get(p.src, p.src), "dst_name": names.get(p.dst, p.dst)}
            for p in proposals]
    emit({"proposals": rows, "new": new},
         "\n".join(f"{r['score']:>9.3f}  {r['src_name']} → {r['dst_name']}" for r in rows[:50])
         + f"\n{len(rows)} proposals ({new} new) stored as pending; `graft review --list`")


def cmd_review(args, say, emit) -> None:
    from loop.review import decide, list_proposals
    with Store(args.db) as store:
        if (args.accept or args.reject or args.accept_above is not None
                or args.accept_precision is not None):
            result = decide(store, accept=args.accept or (), reject=args.reject or (),
                            accept_above=args.accept_above, cycle=args.cycle,
                            accept_precision=args.accept_precision,
                            reviewer=args.reviewer, neuron=args.neuron, token=args.token,
                            stake_scale=args.stake_scale)
            fixes = result.reestimated or {}
            emit(result.__dict__, "".join(
                f"cycle {n}: pending confidence re-estimated from {fix['reviewed']} curator "
                f"decisions ({fix['observed']:.2f} accepted where the fold estimated "
                f"{fix['estimated']:.2f})\n" for n, fix in fixes.items())
                 + f"decided {len(result.decided)} proposal(s); "
                   f"{result.staked} link(s) staked by {args.neuron}")
            return
        status = None if args.status == "all" else args.status
        rows = list_proposals(store, status=status, cycle=args.cycle, limit=args.limit)
    emit({"proposals": rows}, "\n".join(
        f"{r['id']:>6}  {r['status']:<8} {r['score']:>9.3f}  {r['src_name']} → {r['dst_name']}"
        + (f"   [{len(r['evidence'].get('lines', []))} corpus line(s)]" if r["evidence"] else "")
        for r in rows) or "no proposals")


def cmd_cycle(args, say, emit) -> None:
    from compiler.types import CompileConfig
    from finetune.tune import TuneConfig
    from loop.cycle import CycleConfig, format_metrics, run_cycles
    from loop.extract import ExtractConfig
    from loop.report import write_report
    cfg = CycleConfig(corpus=Path(args.corpus) if args.corpus else None, out=Path(args.out),
                      cycles=args.cycles,
                      auto_accept=args.auto_accept,
                      accept_precision=(None if args.auto_accept or args.curator
                                        else args.accept_precision),
                      holdout=Path(args.holdout) if args.holdout else None,
                      compile=CompileConfig(d=args.d, layers=args.layers,
                                            check_determinism=False),
                      tune=TuneConfig(method=args.method, lr=args.lr, max_steps=args.max_steps,
                                      docs=args.docs, device=args.device,
                                      replay=args.replay, link_rows=args.link_rows,
                                      sampled=args.sampled),
                      extract=ExtractConfig(top_k=args.top_k, beta=args.beta, docs=args.docs,
                                            device=args.device, scan=args.scan,
                                            sources=args.sources,
                                            per_source=args.per_source),
                      fold=args.fold, folds=args.folds, eval_queries=args.eval_queries,
                      ranker_kind=args.ranker_kind, ranker_features=args.ranker_features,
                      previous_ranker=args.previous_ranker,
                      fold_token=args.fold_token,
                      fold_inverse=args.fold_inverse, fold_pages=args.fold_pages,
                      hard_negative=args.hard_negative, warm_start=args.warm_start,
                      same_fold=args.same_fold, text_embed=not args.no_text_embed,
                      dpo_pairs=args.dpo_pairs, dpo_steps=args.dpo_steps)
    with Store(args.db) as store:
        rows = run_cycles(store, cfg, say=say)
    page = write_report(rows, Path(args.out) / "report.html")
    emit({"cycles": rows, "report": str(page)}, format_metrics(rows) + f"\nreport: {page}")


def cmd_suggest(args, say, emit) -> None:
    from loop.suggest import format_suggestions, suggest
    path = Path(args.file)
    try:
        markdown = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        from graph.errors import GraftError
        raise GraftError(f"{path}: cannot read the note ({exc})") from None
    with Store(args.db, create=False, read_only=True) as store:
        result = suggest(store, Path(args.db), args.name or path.stem, markdown, args.flavor,
                         args.cycle, args.top, args.device)
    emit(result, format_suggestions(result))


def cmd_report(args, say, emit) -> None:
    from loop.cycle import cycle_metrics
    from loop.report import write_report
    with Store(args.db, create=False, read_only=True) as store:
        rows = cycle_metrics(store)
    page = write_report(rows, Path(args.out))
    emit({"cycles": rows, "report": str(page)}, f"wrote {page} ({len(rows)} cycles)")


def add_commands(command) -> None:
    p = command("extract", cmd_extract, "propose links the tuned model believes and the graph "
                "lacks (stored as pending proposals)")
    p.add_argument("model", metavar="MODEL_DIR", help="the compiled checkpoint")
    p.add_argument("--adapter", metavar="DIR", help="its LoRA adapter from `graft tune`")
    p.add_argument("--ranker", metavar="FILE", help="a fitted ranker (cycle-N/ranker.json of "
                   "`graft cycle`); default: the lift log P_tuned − β·log P_compiled")
    p.add_argument("--corpus", metavar="FILE", help="text to quote as evidence")
    p.add_argument("--top-k", type=int, default=100, help="proposals kept")
    p.add_argument("--per-source", type=int, default=5, help="at most this many per source")
    p.add_argument("--per-target", type=int, default=5, help="at most this many per target")
    p.add_argument("--beta", type=float, default=0.5,
                   help="without --ranker: score = log P_tuned − β·log P_compiled")
    p.add_argument("--cycle", type=int, default=0, help="the cycle these proposals belong to")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--scan", default="auto", choices=["auto", "all", "candidates"],
                   help=SCAN_HELP)
    p.add_argument("--sources", default="auto", choices=["auto", "all", "text"],
                   help=SOURCES_HELP)

    p = command("review", cmd_review, "list proposals, accept or reject them; accepted ones "
                "are staked as cyberlinks")
    p.add_argument("--list", action="store_true", help="list proposals (the default)")
    p.add_argument("--accept", type=int, nargs="+", metavar="ID")
    p.add_argument("--reject", type=int, nargs="+", metavar="ID")
    p.add_argument("--accept-above", type=float, metavar="X", help="accept pending with score ≥ X")
    p.add_argument("--accept-precision", type=float, metavar="P", help="accept the most "
                   "confident pending proposals while their mean calibrated confidence (the "
                   "estimated precision) stays ≥ P; each cycle's pending are first "
                   "re-estimated from the curator decisions on that cycle's proposals (20 or "
                   "more)")
    p.add_argument("--status", choices=["pending", "accepted", "rejected", "all"],
                   default="pending")
    p.add_argument("--cycle", type=int, help="only this cycle's proposals")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--reviewer", default="curator")
    p.add_argument("--neuron", default="graft-extractor", help="who signs accepted links")
    p.add_argument("--token", default="link", help="the token of accepted links")
    p.add_argument("--stake-scale", type=float, metavar="X", help="amount = max(1, "
                   "round(confidence · X)); default: the median amount of the store's "
                   "ingest/curator links")

    p = command("cycle", cmd_cycle, "snapshot → compile → tune → extract → review, N times "
                "(rerun the same command to resume)")
    p.add_argument("--cycles", type=int, default=2)
    p.add_argument("--corpus", metavar="FILE", help="text to tune on (default: the particles' "
                   "own texts in the store)")
    p.add_argument("--docs", default="auto", choices=["auto", "paragraphs", "lines", "jsonl"],
                   help="the corpus's documents: runs of non-blank lines, one per line, or "
                   "JSONL rows with a text field (auto: by extension and blank lines)")
    p.add_argument("--out", default="cycles", metavar="DIR", help="models, adapters, report")
    p.add_argument("--auto-accept", type=int, default=0, metavar="K",
                   help="accept each cycle's top K proposals (instead of --accept-precision)")
    p.add_argument("--accept-precision", type=float, default=0.8, metavar="P",
                   help="accept the most confident proposals while the estimated precision "
                   "of those accepted (their mean calibrated confidence) stays ≥ P — possibly "
                   "none (default 0.8; needs a fitted ranker)")
    p.add_argument("--curator", action="store_true", help="accept nothing: leave the proposals "
                   "pending for a curator (`graft review`, the workbench); the next cycle "
                   "compiles what they accepted and fits its ranker on their decisions")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (tuning, extraction, eval)")
    p.add_argument("--same-fold", action="store_true", help="hide the same links for the "
                   "fold in every cycle (default: a fold reseeded each cycle)")
    p.add_argument("--warm-start", action="store_true", help="compile each cycle (and its "
                   "fold) from the previous model's subspace: fewer SVD power iterations")
    p.add_argument("--hard-negative", type=float, default=1.0, metavar="X", help="in the "
                   "ranker's fit a curator-rejected candidate counts as X candidates "
                   "(1: like any other)")
    p.add_argument("--dpo-pairs", type=int, default=0, metavar="N", help="once curator "
                   "decisions give N preference pairs (a source's accepted target over its "
                   "rejected one), tuning goes on with DPO on them (default 0: never)")
    p.add_argument("--dpo-steps", type=int, default=50, metavar="S", help="DPO steps a cycle")
    p.add_argument("--holdout", metavar="FILE", help="held-out links: eval MRR and precision")
    p.add_argument("--eval-queries", type=int, default=0, metavar="N", help="eval ranks a "
                   "seeded sample of N held-out links, each exactly (default 0: all of them)")
    p.add_argument("--d", type=int, help="hidden size (default: derived)")
    p.add_argument("--layers", type=int, help="layers (default: derived, capped at 8)")
    p.add_argument("--max-steps", type=int, help="tuning steps per cycle (default: 3 epochs)")
    p.add_argument("--replay", type=float, default=0.0)
    p.add_argument("--sampled", type=int, metavar="N", help=SAMPLED_HELP)
    p.add_argument("--method", default="lora", choices=["lora", "full"],
                   help="how the cycle tunes its model (and its fold's)")
    p.add_argument("--lr", type=float, help="tuning learning rate (default: the method's)")
    p.add_argument("--link-rows", type=float, default=0.0, metavar="R", help="link rows (a "
                   "page's text, then the pages it links: loop/linkrows.py) per text row in "
                   "every tuning batch")
    p.add_argument("--top-k", type=int, default=100, help="proposals per cycle")
    p.add_argument("--per-source", type=int, default=5, help="at most this many proposals "
                   "from one source per cycle (a new note lacks many links)")
    p.add_argument("--scan", default="auto", choices=["auto", "all", "candidates"],
                   help=SCAN_HELP)
    p.add_argument("--sources", default="auto", choices=["auto", "all", "text"],
                   help=SOURCES_HELP)
    p.add_argument("--beta", type=float, default=0.5, help="the lift's β when no ranker is fitted")
    p.add_argument("--ranker-features", default="auto", choices=["auto", "all"],
                   help="auto: a linear ranker keeps the feature groups (text, compiled, "
                   "tuned) that earn their place, cross-validated on the fold's sources — the "
                   "fewest within one standard error of the best; all: every feature")
    p.add_argument("--previous-ranker", default="keep", choices=["refit", "keep", "average"],
                   help="with --ranker-features auto, from cycle 2 on: refit (extract with "
                   "the new fit), keep (the previous cycle's ranker stays when it ranks the "
                   "new fold's hidden links better than the new fit does cross-validated) or "
                   "average (the previous ranker's and the new fit's weights averaged)")
    p.add_argument("--ranker-kind", default="linear", choices=["linear", "lgbm", "auto"],
                   help="the extractor's ranker: listwise linear, LightGBM lambdarank, or auto "
                   "(whichever ranks a held-back quarter of the fold better)")
    p.add_argument("--no-text-embed", action="store_true", help="fit the ranker without the "
                   "MiniLM text-embedding features (embed_sim, text_neighbours)")
    p.add_argument("--fold-token", default="link", metavar="TOKEN", help="hide links of this "
                   "token (a typed graph's relation, e.g. hypernym) for the fold; all links "
                   "when none has it")
    p.add_argument("--fold-inverse", action="store_true", help="the fold also hides each "
                   "hidden pair's reverse links (when the holdout dropped them too)")
    p.add_argument("--fold-pages", type=float, default=None, metavar="F", help="the fold also "
                   "hides every out-link of this share of the pages with ≥ 3 links, and new "
                   "notes (pages without links that were not such at the previous cycle) are "
                   "calibrated on those pages (default: 0.05 when the cycle has new notes, "
                   "else 0)")
    p.add_argument("--fold", type=float, default=0.1, help="share of links hidden to fit the "
                   "extractor's ranker each cycle (0: no fit, rank by the lift)")
    p.add_argument("--folds", type=int, default=1, metavar="K", help="fit and calibrate the "
                   "ranker on K disjoint folds (each compiled and tuned), pooled; K times the "
                   "fit step's work (measured: no steadier on cyberwiki or WordNet; README)")

    p = command("suggest", cmd_suggest, "proposed links for one note (new, or without "
                "links yet) from the latest cycle's model and ranker")
    p.add_argument("file", metavar="FILE.md")
    p.add_argument("--name", help="the note's name (default: the file's stem)")
    p.add_argument("--flavor", choices=["obsidian", "logseq"], default="obsidian",
                   help="how to read its markup")
    p.add_argument("--cycle", type=int, help="the cycle whose model and ranker score it "
                   "(default: the latest)")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = command("report", cmd_report, "write the cycles' HTML report")
    p.add_argument("--out", default="cycles/report.html", metavar="FILE")
