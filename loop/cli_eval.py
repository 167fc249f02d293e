"""The evaluation commands of `graft`: eval (link recovery against baselines), split-holdout."""
from __future__ import annotations

from pathlib import Path

from graph.errors import GraftError
from graph.store import Store


def cmd_eval(args, say, emit) -> None:
    from loop import baselines, evaluate
    cfg = baselines.BaselineConfig(seed=args.seed, spectral_d=args.spectral_d,
                                   checkpoint=args.model, kge_model=args.kge_model,
                                   kge_epochs=args.kge_epochs)
    methods = _methods(args, baselines.available())
    rows = evaluate.read_holdout(Path(args.holdout))
    with Store(args.db, create=False, read_only=True) as store:
        graph = evaluate.load_graph(store)
    queries = evaluate.select_queries(graph, rows)
    if any(queries.skipped.values()):
        say(f"skipped held-out links: {queries.skipped}")
    adapter = Path(args.adapter) if args.adapter else None
    scorers = {}
    for name in methods:
        say(f"building {name} …")
        if name == "graft" and args.ranker:
            from loop.rank import Features, Ranker, ranker_scorer
            scorers[name] = ranker_scorer(Features(graph, Path(args.model), adapter),
                                          Ranker.load(Path(args.ranker)))
            name = "graft_lm"                 # and the model's own logits beside it
        if name in ("graft", "graft_lm"):
            scorers[name] = evaluate.model_scorer(Path(args.model), graph.index, adapter)
        else:
            scorers[name] = baselines.BASELINES[name](graph, cfg)
    say(f"ranking {len(queries.pairs)} held-out links among {len(graph.index)} particles")
    result = evaluate.evaluate(graph, queries, scorers)
    emit(result.to_json(), evaluate.format_table(result))


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
                         Path(args.holdout), token=args.token)
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
    p.add_argument("--methods", metavar="A,B,…", help="graft and/or baselines: popularity, "
                   "focus, adamic_adar, ppmi, spectral, mentions, pykeen (default: all that run)")
    p.add_argument("--seed", type=int, default=0, help="seeds walks, the SVD and the KGE model")
    p.add_argument("--spectral-d", type=int, default=64, help="SVD rank without --model")
    p.add_argument("--kge-model", default="TransE", help="the PyKEEN model of the pykeen method")
    p.add_argument("--kge-epochs", type=int, default=20)

    p = command("split-holdout", cmd_split, "hold out a seeded share of a links file")
    p.add_argument("links", metavar="LINKS", help="links JSONL")
    p.add_argument("--fraction", type=float, default=0.1, help="share held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", required=True, metavar="OUT", help="the rows kept")
    p.add_argument("--holdout", required=True, metavar="OUT", help="the rows held out")
    p.add_argument("--token", help="only rows with this token may be held out")
