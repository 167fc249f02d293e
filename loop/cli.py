"""The `graft` command line: one subcommand per stage, thin wrappers over the packages."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from graph.errors import GraftError, IngestError
from graph.store import Store, default_path


def _say(message: str) -> None:
    print(f"graft: {message}", file=sys.stderr, flush=True)


def _open(args, *, create: bool = False) -> Store:
    return Store(args.db, create=create)


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False) if args.json else text)


# -- commands ------------------------------------------------------------------------------
def cmd_init(args) -> None:
    existed = Path(args.db).exists()
    with Store(args.db, hash_name=args.hash) as store:
        _emit(args, {"db": args.db, "hash": store.hash_name, "created": not existed},
              f"{'opened' if existed else 'created'} {args.db} (hash {store.hash_name})")


def cmd_ingest(args) -> None:
    from graph import ingest, ingest_rows
    run = {"links": ingest.ingest_links, "particles": ingest_rows.ingest_particles,
           "tokens": ingest_rows.ingest_tokens}[args.kind]
    with _open(args, create=True) as store:
        results = run(store, args.files, fmt=args.format, say=_say)
    payload = {"results": [r.__dict__ for r in results]}
    lines = [f"{r.source}: skipped ({r.skipped})" if r.skipped else
             f"{r.source}: {r.rows} {args.kind} as batch {r.batch}"
             + (f" (+{r.labels} label links)" if r.labels else "") for r in results]
    _emit(args, payload, "\n".join(lines))


def cmd_import_vault(args) -> None:
    from graph.ingest_rows import import_vault
    with _open(args, create=True) as store:
        result = import_vault(store, Path(args.dir), args.flavor, neuron=args.neuron,
                                    time=args.time, say=_say)
    _emit(args, result, f"{args.dir}: {result['particles']} particles, {result['links']} links"
          + (f" (skipped: {result['skipped']})" if result.get("skipped") else ""))


def cmd_vault_apply(args) -> None:
    from graph.vault_write import apply_vault
    with _open(args) as store:
        results = apply_vault(store, Path(args.dir), args.flavor, dry_run=args.dry_run,
                              related=args.related, force=args.force, say=_say)
    written = sum(len(r.written) for r in results)
    listed = [(r.source, p, t) for r in results for p, t in r.listed]
    lines = [r.diff for r in results if r.diff] if args.dry_run else [
        f"{r.source}: {len(r.written)} link(s) written" for r in results if r.written]
    lines += [f"{source}: proposal {p} → [[{t}]] not written: the note never mentions it "
              "(--related SECTION appends it)" for source, p, t in listed]
    lines.append(f"{'would write' if args.dry_run else 'wrote'} {written} link(s) into "
                 f"{sum(bool(r.diff) for r in results)} note(s); "
                 f"{sum(len(r.already) for r in results)} already linked, {len(listed)} "
                 f"unmentioned, {sum(bool(r.skipped) for r in results)} note(s) skipped")
    _emit(args, {"dry_run": args.dry_run, "notes": [
        {k: v for k, v in r.__dict__.items() if k != "new"} for r in results]},
        "\n".join(lines))


def cmd_stats(args) -> None:
    from graph import stats
    with Store(args.db, create=False, read_only=True) as store:
        result = stats.graph_stats(store, top=args.top)
    _emit(args, result, stats.format_stats(result))


def cmd_snapshot(args) -> None:
    from graph import snapshot
    if args.list:
        with Store(args.db, create=False, read_only=True) as store:
            snaps = snapshot.list_snapshots(store)
        _emit(args, {"snapshots": [s.__dict__ for s in snaps]},
              "\n".join(f"{s.id}  links={s.links}  max_seq={s.max_seq}  {s.created}" for s in snaps)
              or "no snapshots")
        return
    with _open(args) as store:
        snap = snapshot.take_snapshot(store)
    _emit(args, snap.__dict__, f"snapshot {snap.id} ({snap.links} links)")


def cmd_export(args) -> None:
    from graph import export
    with Store(args.db, create=False, read_only=True) as store:
        n = export.export_links(store, Path(args.out), fmt=args.format, snapshot_ref=args.snapshot)
    _emit(args, {"out": args.out, "links": n}, f"wrote {n} links to {args.out}")


def cmd_compile(args) -> None:
    from compiler.compile import compile_snapshot
    from compiler.types import CompileConfig
    from graph import snapshot
    cfg = CompileConfig(d=args.d, heads=args.heads, layers=args.layers, tie=args.tie,
                        focus_weighting=args.focus_weighting, attn_gain=args.attn_gain,
                        mlp_gain=args.mlp_gain, threads=args.threads,
                        calibrate=not args.no_calibrate,
                        check_determinism=not args.no_det_check,
                        warm_start=str(Path(args.warm_start).resolve()) if args.warm_start
                        else None, warm_power_iters=args.warm_power_iters,
                        dask=args.dask, dask_parts=args.dask_parts)
    with _open(args) as store:
        snap = (snapshot.get_snapshot(store, args.snapshot) if args.snapshot
                else snapshot.take_snapshot(store))
        _say(f"compiling snapshot {snap.id[:16]}… ({snap.links} links) into {args.out}")
        cert = compile_snapshot(store, snap, Path(args.out), cfg, say=_say)
    _emit(args, cert, format_certificate(cert))
    if not cert["pass"]:
        raise GraftError(f"{args.out}: the certificate failed (see certificate.json)")


def cmd_verify(args) -> None:
    from compiler.verify import verify_checkpoint
    store = Store(args.db, create=False, read_only=True) if Path(args.db).exists() else None
    try:
        result = verify_checkpoint(Path(args.dir), store)
    finally:
        if store is not None:
            store.close()
    _emit(args, result, format_certificate(result))
    if not result["pass"]:
        raise GraftError(f"{args.dir}: verification failed")


def cmd_trace(args) -> None:
    from compiler import provenance
    with Store(args.db, create=False, read_only=True) as store:
        result = provenance.trace(store, Path(args.dir), pair=args.pair, tensor=args.tensor,
                                  index=args.index, link=args.link, top=args.top)
    _emit(args, result, provenance.format_trace(result))


def format_certificate(cert: dict) -> str:
    """One line per check: name, PASS/FAIL/-, and its main figures."""
    lines = []
    for name, check in cert.items():
        if not isinstance(check, dict):
            continue
        verdict = {True: "PASS", False: "FAIL", None: "-"}[check.get("pass")]
        figures = ", ".join(f"{k}={_short(v)}" for k, v in check.items()
                            if k != "pass" and not isinstance(v, (list, dict)))
        lines.append(f"{name:<10} {verdict:<5} {figures}")
    lines.append(f"{'overall':<10} {'PASS' if cert['pass'] else 'FAIL'}")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_demo(args) -> None:
    from loop import demo
    demo.run_demo(args.db, say=_say)


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graft", description=__doc__)
    parser.add_argument("--db", default=default_path(),
                        help="the store (a DuckDB file); default $GRAFT_DB or ./graft.duckdb")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create (or open) a store")
    p.add_argument("--hash", choices=["sha256", "blake3"], default="sha256",
                   help="the content hash the new store declares for names and axons")

    p = command("ingest", cmd_ingest, "ingest links, particles or tokens (all or nothing)")
    p.add_argument("kind", choices=["links", "particles", "tokens"])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet", "graph"],
                   help="override the format read from the extension")

    p = command("import", cmd_import_vault, "import a Logseq or Obsidian vault")
    p.add_argument("what", choices=["vault"])
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--flavor", choices=["logseq", "obsidian"], required=True)
    p.add_argument("--neuron", default="vault", help="who signs the imported links")
    p.add_argument("--time", type=int, help="link time for every page (default: file mtime)")

    p = command("vault", cmd_vault_apply, "write accepted links back into the vault's notes")
    p.add_argument("what", choices=["apply"])
    p.add_argument("dir", metavar="DIR", help="the vault folder `graft import vault` read")
    p.add_argument("--flavor", choices=["logseq", "obsidian"], required=True)
    p.add_argument("--dry-run", action="store_true", help="print the unified diff, write nothing")
    p.add_argument("--related", metavar="SECTION", help="append links the note never "
                   "mentions under this section (default: leave the note, list the link)")
    p.add_argument("--force", action="store_true", help="write notes changed since they "
                   "were imported too")

    p = command("stats", cmd_stats, "counts, focus and degrees of the store")
    p.add_argument("--top", type=int, default=10, help="how many top particles by focus")

    p = command("snapshot", cmd_snapshot, "take an immutable, content-addressed snapshot")
    p.add_argument("--list", action="store_true", help="list snapshots instead")

    p = command("export", cmd_export, "export a snapshot's links")
    p.add_argument("what", choices=["links"])
    p.add_argument("out", metavar="FILE")
    p.add_argument("--format", choices=["jsonl", "graph"], default="jsonl")
    p.add_argument("--snapshot", default=None, help="snapshot id or prefix (default: all links)")

    p = command("compile", cmd_compile, "compile a snapshot into a HF Llama checkpoint")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--snapshot", help="snapshot id or prefix (default: snapshot the store now)")
    p.add_argument("--d", type=int, help="hidden size (default: derived d*)")
    p.add_argument("--heads", type=int, help="attention heads (default: h* = semcons)")
    p.add_argument("--layers", type=int, help="layers (default: derived L*, capped at 8)")
    p.add_argument("--tie", action="store_true", help="tie the output head to the embedding")
    p.add_argument("--focus-weighting", action="store_true",
                   help="factorise diag(√π) A diag(√π) instead of A")
    p.add_argument("--attn-gain", type=float, default=0.0, help="compiled attention scale")
    p.add_argument("--mlp-gain", type=float, default=0.1, help="compiled MLP scale")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (changes float bits)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="keep logit scale 1 instead of fitting it to the links")
    p.add_argument("--no-det-check", action="store_true",
                   help="skip compiling the weights twice for P-DET")
    p.add_argument("--warm-start", metavar="DIR", help="start the embedding SVD from this "
                   "earlier checkpoint's subspace (after a few links changed)")
    p.add_argument("--warm-power-iters", type=int, default=1, metavar="Q",
                   help="power iterations from a warm start (default 1; cold: 4)")
    p.add_argument("--dask", metavar="ADDRESS", help="run the embedding SVD on a Dask cluster: "
                   "local:N (a LocalCluster of N workers) or a scheduler address "
                   "(tcp://host:8786); needs graft[dist]")
    p.add_argument("--dask-parts", type=int, metavar="N",
                   help="blocks per side of the Dask SVD's grid (default 2 per worker; "
                   "float bits depend on it, not on the workers)")

    p = command("verify", cmd_verify, "recompute a checkpoint's certificate")
    p.add_argument("dir", metavar="DIR")

    p = command("trace", cmd_trace, "which links made a prediction or a weight of a checkpoint")
    p.add_argument("dir", metavar="DIR", help="the checkpoint folder (its store is --db)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pair", nargs=2, metavar=("P", "Q"),
                      help="why Q is ranked after P (ids, id prefixes or names)")
    what.add_argument("--tensor", metavar="NAME", help="a tensor name; with --index")
    what.add_argument("--link", nargs="+", metavar="ID",
                      help="a link seq, or P Q: the tensors and rows it touches")
    p.add_argument("--index", metavar="I[,J]", help="entry I,J (or row I) of --tensor")
    p.add_argument("--top", type=int, default=20, help="links shown (0: all)")

    from loop import cli_eval, cli_loop, cli_serve, cli_tune
    for module in (cli_tune, cli_loop, cli_eval, cli_serve):
        module.add_commands(lambda name, func, help_: command(
            name, lambda a, f=func: f(a, _say, lambda payload, text: _emit(a, payload, text)),
            help_))

    command("demo", cmd_demo, "build the default data, ingest it, print stats")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except IngestError as exc:
        lines = str(exc).splitlines()
        print(f"graft: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        return 1
    except GraftError as exc:
        print(f"graft: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graft: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
