"""The evaluation commands of `graft`: eval (link recovery against baselines), split-holdout."""
from __future__ import annotations

from pathlib import Path

from graph.errors import GraftError
from graph.runtime import DEVICE_HELP
from graph.store import Store


def cmd_eval(args, say, emit) -> None:
    from loop import baselines, evaluate
    _from_cycle(args, say)
    cfg = baselines.BaselineConfig(seed=args.seed, spectral_d=args.spectral_d,
                                   checkpoint=args.model, kge_model=args.kge_model,
                                   kge_epochs=args.kge_epochs)
    methods = _methods(args, baselines.available())
    rows = evaluate.read_holdout(Path(args.holdout))
    with Store(args.db, create=False, read_only=True) as store:
        graph = evaluate.load_graph(store)
    queries = evaluate.sample_queries(evaluate.select_queries(graph, rows), args.queries,
                                      args.seed)
    if any(queries.skipped.values()):
        say(f"skipped held-out links: {queries.skipped}")
    adapter = Path(args.adapter) if args.adapter else None
    scorers = {}
    for name in methods:
        say(f"building {name} …")
        if name == "graft" and args.ranker:
            from loop.rank import Features, Ranker, ranker_scorer
            cache = (args.cycle_folder.parent / "embeddings.safetensors"
                     if args.cycle_folder else None)
            features = Features(graph, Path(args.model), adapter, embed_cache=cache,
                                device=args.device)
            scorers[name] = ranker_scorer(features, Ranker.load(Path(args.ranker)))
            if adapter is not None:           # the tuned model alone, as the cycle scores it
                scorers["graft_lm"] = ranker_scorer(features,
                                                    Ranker((features.lm_feature,), (1.0,)))
                continue
            name = "graft_lm"                 # and the model's own logits beside it
        if name in ("graft", "graft_lm"):
            scorers[name] = evaluate.model_scorer(Path(args.model), graph.index, adapter,
                                                  args.device)
        else:
            scorers[name] = baselines.BASELINES[name](graph, cfg)
    say(f"ranking {len(queries.pairs)} held-out links among {len(graph.index)} particles")
    result = evaluate.evaluate(graph, queries, scorers)
    out, text = result.to_json(), evaluate.format_table(result)
    if args.ablate:
        from loop import ablate
        table = _ablation(args, graph, queries, say)
        out["ablation"] = table
        text += "\n\nablation: the ranker refitted on the cycle's fold without feature groups\n"
        text += ablate.format_ablation(table)
    emit(out, text)


def _from_cycle(args, say) -> None:
    """No --model: take the model, adapter and ranker of the latest cycle (or --cycle N)
    recorded in the store, when there is one."""
    args.cycle_folder = None
    if args.model and not args.ablate:
        return
    from loop.cycle import cycle_folder
    with Store(args.db, create=False, read_only=True) as store:
        try:
            n, folder = cycle_folder(store, Path(args.db), args.cycle)
        except GraftError:
            if args.ablate or args.cycle is not None:
                raise
            return
    args.cycle_folder = folder
    if not args.model:
        args.model = str(folder / "model")
        if not args.adapter and (folder / "adapter").exists():
            args.adapter = str(folder / "adapter")
        if not args.ranker and (folder / "ranker.json").exists():
            args.ranker = str(folder / "ranker.json")
        say(f"cycle {n}: {args.model}" + (f", ranker {args.ranker}" if args.ranker else ""))


def _ablation(args, graph, queries, say) -> dict:
    """The cycle's ablation rankers (saved by its fit step, else refitted on its fold) on the
    held-out queries, over --model/--adapter."""
    from loop import ablate, evaluate
    from loop.fit import fit_queries
    from loop.rank import Features
    folder = args.cycle_folder
    cache = folder.parent / "embeddings.safetensors"
    try:
        rankers = ablate.load_rankers(folder)
    except GraftError:
        from loop.fold import hidden_positions
        fold = folder / "fold"
        with Store(fold / "fold.duckdb", create=False, read_only=True) as fs:
            fold_graph = evaluate.load_graph(fs)
        pairs = hidden_positions(fold_graph, fold)
        adapter = fold / "adapter" if (fold / "adapter").exists() else None
        fq = fit_queries(Features(fold_graph, fold / "model", adapter, embed_cache=cache,
                                  device=args.device), fold_graph.known, pairs, say=say)
        rankers = ablate.fit_subsets(fq, say=say)
    adapter = Path(args.adapter) if args.adapter else None
    features = Features(graph, Path(args.model), adapter, embed_cache=cache, device=args.device)
    return ablate.rank_holdout(graph, queries, features, rankers)


def _methods(args, available: list[str]) -> list[str]:
    """The methods asked for (default: graft when --model is given, then every baseline
    that can run here); unknown names are an error that lists the known ones."""
    if args.ranker and not args.model:
        raise GraftError("--ranker needs --model DIR (the checkpoint its features come from)")
    default = (["graft"] if args.model else []) + available
    if args.methods is None:
        return default
    asked = [m.strip() for m in args.methods.split(",") if m.strip()]
    from loop.baselines import BASELINES
    unknown = [m for m in asked if m != "graft" and m not in BASELINES]
    if unknown:
        raise GraftError(f"--methods: unknown {unknown}; expected some of "
                         f"{['graft', *BASELINES]}")
    if "graft" in asked and not args.model:
        raise GraftError("--methods graft needs --model DIR (the checkpoint to score with)")
    if (args.adapter or args.ranker) and "graft" not in asked:
        raise GraftError("--adapter and --ranker apply to the graft method, which --methods "
                         "leaves out")
    return list(dict.fromkeys(asked))


def cmd_split(args, say, emit) -> None:
    from loop.evaluate import split_links
    record = split_links(Path(args.links), args.fraction, args.seed, Path(args.train),
                         Path(args.holdout), token=args.token, cold_pages=args.cold_pages)
    emit(record, f"{args.links}: {record['holdout']} of {record['eligible']} eligible rows "
                 f"held out to {args.holdout}, {record['train']} kept in {args.train}")


def add_commands(command) -> None:
    """Register the commands with the parser's `command(name, func, help)` helper."""
    p = command("eval", cmd_eval, "rank held-out links with the model and the baselines: "
                "MRR, Hits@1, Hits@10, AUC")
    p.add_argument("--holdout", required=True, metavar="FILE",
                   help="JSONL rows with from/to: links hidden from the store")
    p.add_argument("--model", metavar="DIR", help="a compiled (or tuned) checkpoint: the graft "
                   "method, and E·Hᵀ for spectral (default: an SVD of the store's links)")
    p.add_argument("--adapter", metavar="DIR", help="a peft LoRA adapter applied to --model")
    p.add_argument("--ranker", metavar="FILE", help="score graft by the extractor's fitted "
                   "ranker (cycle-N/ranker.json) over --model and --adapter; the model's own "
                   "logits are then shown as graft_lm")
    p.add_argument("--cycle", type=int, metavar="N", help="take --model, --adapter and "
                   "--ranker from cycle N of `graft cycle` (default without --model: the latest)")
    p.add_argument("--ablate", action="store_true", help="also rank with the cycle's ranker "
                   "refitted without each feature group (text, text+compiled, text+tuned, all)")
    p.add_argument("--methods", metavar="A,B,…", help="graft and/or baselines: popularity, "
                   "focus, adamic_adar, ppmi, spectral, mentions, pykeen (default: all that run)")
    p.add_argument("--seed", type=int, default=0, help="seeds walks, the SVD, the KGE model "
                   "and --queries' sample")
    p.add_argument("--queries", type=int, default=0, metavar="N", help="rank a seeded sample of "
                   "N held-out links (each exactly, among every particle; default 0: all)")
    p.add_argument("--spectral-d", type=int, default=64, help="SVD rank without --model")
    p.add_argument("--kge-model", default="TransE", help="the PyKEEN model of the pykeen method")
    p.add_argument("--kge-epochs", type=int, default=20)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = command("split-holdout", cmd_split, "hold out a seeded share of a links file")
    p.add_argument("links", metavar="LINKS", help="links JSONL")
    p.add_argument("--fraction", type=float, default=0.1, help="share held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", required=True, metavar="OUT", help="the rows kept")
    p.add_argument("--holdout", required=True, metavar="OUT", help="the rows held out")
    p.add_argument("--token", help="only rows with this token may be held out")
    p.add_argument("--cold-pages", type=float, default=0.0, metavar="F", help="instead, hold "
                   "out every link of a seeded share F of the pages with ≥ 3 links (cold start)")
