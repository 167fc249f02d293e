"""`graft cycle`: snapshot → compile → tune → fit → extract → review → stake, N times, resumable.

Every step of every cycle is recorded in the store's `cycle_steps` journal with what it made
and measured. Running the same command again skips recorded steps, so a process killed at
any point resumes where it stopped. Steps whose work commits before the journal entry are
idempotent: compiling and tuning are seeded and rewrite their folder; proposals are unique
per (cycle, src, dst); auto-accept picks the cycle's top K by score whatever their status and
accepts the ones still pending; staking stakes accepted proposals that are not staked yet.

The fit step fits the extractor's ranker (loop/rank.py) on a fold (loop/fold.py): a scratch
copy of the store with a seeded share of its ground-truth links hidden is compiled and tuned
like the cycle's own model, and the ranker learns to pick each hidden link's target from the
text and the fold's models. With too few links to hide, the extractor falls back to the lift.

Per cycle: approximation error (the compiled model's next-particle cross-entropy on the
held-out text, before tuning, measured so cycles compare — loop/approx.py: one logit scale
fitted on the training text, and cycle 1's vocabulary and lexicon for every cycle; also split
into the first position of each held-out document and the rest), graph fit, proposals,
accepted, precision of the accepted against a holdout file when one is given, eval MRR of
the tuned model, and wall time.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from compiler.types import CompileConfig
from finetune.tune import TuneConfig
from graph import sql_loop
from graph.checkpoint import COMPILE_RECORD
from graph.errors import GraftError
from graph.store import Store
from loop.extract import ExtractConfig
from loop.linkrows import LinkRowConfig, tune_model

STEPS = ("snapshot", "compile", "tune", "fit", "extract", "review", "eval")
MIN_FOLD = 10               # hidden links needed to fit a ranker
NEW_NOTE_PAGES = 0.05       # share of linked pages a fold empties when a cycle has new notes
PREVIOUS_RANKER = ("refit", "keep", "average")   # CycleConfig.previous_ranker
FAULT_ENV = "GRAFT_FAULT"   # "CYCLE:STEP": SIGKILL right after that step is done (tests)


@dataclass(frozen=True)
class CycleConfig:
    corpus: Path | None             # None: the particles' own texts in the store
    out: Path
    cycles: int = 2
    auto_accept: int = 0            # accept the top K proposals of each cycle
    accept_precision: float | None = None   # accept while the estimated precision stays ≥ P
    holdout: Path | None = None     # held-out links: eval MRR and precision per cycle
    eval_queries: int = 0           # eval ranks a seeded sample of this many of them (0: all)
    compile: CompileConfig = field(default_factory=lambda: CompileConfig(check_determinism=False))
    tune: TuneConfig = field(default_factory=TuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    fold: float = 0.1               # share of links hidden to fit the ranker; 0: no fit (lift)
    folds: int = 1                  # disjoint folds a cycle fits and calibrates on, pooled
    fold_seed: int = 0              # the fold of cycle n is seeded fold_seed + n
    same_fold: bool = False         # ... or fold_seed + 1 in every cycle: the same links hidden
    fold_token: str = "link"        # the links the fold hides (all links when none has it)
    fold_inverse: bool = False      # hide each hidden pair's reverse links too
    fold_pages: float | None = None  # also hide all out-links of this share of linked pages
                                    # (None: NEW_NOTE_PAGES when the cycle has new notes, else 0)
    link: LinkRowConfig = field(default_factory=LinkRowConfig)   # used when tune.link_rows > 0
    ranker_kind: str = "linear"     # linear, lgbm, or auto: the better on held-back fold sources
    ranker_features: str = "auto"   # auto: the feature groups that earn their place on the
                                    # fold (loop/ablate.py choose_subset; linear); all: every one
    previous_ranker: str = "keep"   # with auto features, what the previous cycle's ranker
                                    # does: refit (nothing), keep (it stays when it ranks the
                                    # new fold better) or average (with the new fit); _previous
    warm_start: bool = False        # compile from the previous cycle's subspace (compiler/warm.py)
    hard_negative: float = 1.0      # a curator-rejected candidate counts as this many in the fit
    text_embed: bool = True         # the ranker may use the MiniLM features (when installed)
    dpo_pairs: int = 0              # once curator decisions give this many preference pairs,
                                    # the tune step goes on with DPO on them (0: never)
    dpo_steps: int = 50             # DPO steps per cycle

    def __post_init__(self):
        if self.previous_ranker not in PREVIOUS_RANKER:
            raise GraftError(f"previous ranker {self.previous_ranker!r}: expected one of "
                             f"{', '.join(PREVIOUS_RANKER)}")
        if self.ranker_features not in ("auto", "all"):
            raise GraftError(f"ranker features {self.ranker_features!r}: expected auto or all")
        if self.folds < 1 or (self.fold > 0 and self.folds * self.fold >= 1):
            raise GraftError(f"--folds {self.folds} of a share of {self.fold}: expected ≥ 1 "
                             f"folds that together hide less than every link")

    @property
    def embed_cache(self) -> Path:
        return self.out / "embeddings.safetensors"


def run_cycles(store: Store, cfg: CycleConfig, say: Callable[[str], None] = lambda _: None
               ) -> list[dict]:
    """Run (or resume) cycles 1..cfg.cycles; returns each cycle's metrics."""
    if cfg.dpo_pairs and cfg.tune.method != "lora":
        raise GraftError(f"--dpo-pairs {cfg.dpo_pairs}: DPO goes on from the tuned LoRA "
                         f"adapter; --method {cfg.tune.method} has none (use --method lora)")
    if cfg.corpus is None:
        corpus = store_corpus(store, cfg.out / "corpus.txt")
        say(f"corpus: the particles' own texts, written to {corpus}")
        cfg = replace(cfg, corpus=corpus, tune=replace(cfg.tune, docs="paragraphs"),
                      extract=replace(cfg.extract, docs="paragraphs"))
    for n in range(1, cfg.cycles + 1):
        _run_cycle(store, cfg, n, say)
    return cycle_metrics(store)


def _run_cycle(store: Store, cfg: CycleConfig, n: int, say) -> None:
    folder = cfg.out / f"cycle-{n}"
    model, adapter = folder / "model", folder / "adapter"

    def step(name: str, work: Callable[[], dict]) -> dict:
        done = store.query(sql_loop.STEP_DONE, {"cycle": n, "step": name})
        if done:
            detail = json.loads(done[0][0])
            gone = _missing(name, detail, folder)
            if gone is None:
                say(f"cycle {n}: {name} already done")
                return detail
            say(f"cycle {n}: {name} was done, but {gone} is gone: doing it again")
            store.execute(sql_loop.STEP_FORGET, {"cycle": n, "step": name})
        say(f"cycle {n}: {name} …")
        start = time.perf_counter()
        detail = {**work(), "seconds": round(time.perf_counter() - start, 3),
                  "peak_rss_gb": _peak_rss_gb()}
        _fault(f"{n}:{name}-")
        store.execute(sql_loop.STEP_RECORD, {"cycle": n, "step": name,
                                             "detail": json.dumps(detail)})
        _fault(f"{n}:{name}")
        return detail

    snap_id = step("snapshot", lambda: _snapshot(store, n))["snapshot"]
    first = cfg.out / "cycle-1" / "model"          # later cycles keep its d, depth and vocabulary
    compile_cfg = cfg.compile if n == 1 else _pinned(cfg.compile, first)
    previous = cfg.out / f"cycle-{n - 1}" / "model"
    if cfg.warm_start and n > 1 and (previous / COMPILE_RECORD).exists():
        compile_cfg = replace(compile_cfg, warm_start=str(previous.resolve()))
    step("compile", lambda: _compile(store, snap_id, model, compile_cfg, say))
    step("tune", lambda: _tune(store, model, adapter, cfg, first, say))
    ranker = step("fit", lambda: _fit(store, folder, n, cfg, say)).get("ranker")
    ranker = Path(ranker) if ranker else None
    step("extract", lambda: _extract(store, model, adapter, ranker, n, cfg, say))
    step("review", lambda: _review(store, n, cfg.auto_accept, cfg.holdout,
                                   cfg.accept_precision if ranker else None))
    if cfg.holdout is not None:
        step("eval", lambda: _eval(store, folder, ranker, cfg.holdout, cfg.embed_cache,
                                   cfg.extract.device, cfg.eval_queries))


def _peak_rss_gb() -> float:
    """This process's peak resident memory so far (GB): recorded with each step, so the
    journal shows which step raised it."""
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _missing(step: str, detail: dict, folder: Path) -> Path | None:
    """The output a recorded step left on disk that is no longer there (its --out folder
    deleted or moved), or None."""
    wanted = {"compile": [folder / "model" / COMPILE_RECORD],
              "tune": [folder / "adapter"],
              "fit": [Path(detail["ranker"])] if detail.get("ranker") else []}.get(step, [])
    return next((path for path in wanted if not path.exists()), None)


def store_corpus(store: Store, path: Path) -> Path:
    """The store's particle texts as a corpus: one paragraph per particle with text — its
    name, then the text (blank lines inside a text closed up, so it stays one document) — in
    particle id order, rewritten only when it changed (a resumed cycle reads the same file)."""
    import re

    from graph import sql
    blank = re.compile(r"\n\s*\n")
    docs = [((name or "") + "\n" + blank.sub("\n", text.strip())).strip()
            for _, name, _, text in store.query(sql.EVAL_PARTICLES) if text and text.strip()]
    if not docs:
        raise GraftError("no --corpus given and no particle in the store has text: give "
                         "--corpus FILE, or ingest particles with a text field")
    body = "\n\n".join(docs) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != body:
        path.write_text(body, encoding="utf-8")
    return path


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _snapshot(store: Store, n: int) -> dict:
    """Take the cycle's snapshot, and record the pages with text and no link (new_pages)."""
    import pyarrow as pa

    from graph.snapshot import take_snapshot
    from loop.evaluate import load_graph
    snap = take_snapshot(store)
    graph = load_graph(store)
    cold = graph.cold()
    pages = sorted(graph.index[p] for p in graph.texts if cold[p])
    with store.transaction():
        store.execute(sql_loop.LINKLESS_FORGET, {"cycle": n})
        store.register("linkless_view", pa.table({"particle": pa.array(pages, pa.string())}))
        try:
            store.execute(sql_loop.LINKLESS_ADD, {"cycle": n})
        finally:
            store.unregister("linkless_view")
    return {"snapshot": snap.id, "links": snap.links, "linkless": len(pages)}


def new_pages(store: Store, n: int) -> list[str]:
    """The new notes of cycle n: pages with text and no link at its snapshot that were not
    such pages at cycle n − 1's — added (or emptied) since. None at cycle 1, nor after a
    cycle whose snapshot recorded no pages (a store older than the record): a page without
    links that was already there is one its author may have left so (cyberwiki's 642 tag
    and stub pages), and a cycle that took every such page for an unfinished note would
    stake links on all of them."""
    before = store.query(sql_loop.STEP_DONE, {"cycle": n - 1, "step": "snapshot"}) if n > 1 \
        else []
    if not before or "linkless" not in json.loads(before[0][0]):
        return []
    return [p for (p,) in store.query(sql_loop.LINKLESS_NEW, {"cycle": n})]


def _pinned(cfg: CompileConfig, first: Path) -> CompileConfig:
    """The hidden size and depth of the checkpoint `first` (cycle 1's for a later cycle; the
    cycle's own for its fold), unless the command fixed them.

    The derived d* follows the spectral entropy of the focus matrix, which a few links can
    move a lot (cyberwiki: 50 accepted links took the exact effective rank from 178 to 36),
    and the approximation error of a d = 64 model is not comparable with a d = 178 one: the
    cycles would measure the architecture, not the links.
    """
    used = json.loads((first / COMPILE_RECORD).read_text())["arch"]["used"]
    return replace(cfg, d=cfg.d or used["d"], layers=cfg.layers or used["layers"])


def _compile(store: Store, snap_id: str, out: Path, cfg: CompileConfig, say) -> dict:
    from compiler.compile import compile_snapshot
    from graph.snapshot import get_snapshot
    cert = compile_snapshot(store, get_snapshot(store, snap_id), out, cfg)
    used = json.loads((out / COMPILE_RECORD).read_text())["arch"]["used"]
    return {"model": str(out), "certificate": bool(cert["pass"]), "d": used["d"],
            "layers": used["layers"]}


def _tune(store: Store, model: Path, adapter: Path, cfg: CycleConfig, reference: Path,
          say) -> dict:
    from loop.approx import approximation_error
    r = tune_model(store, model, cfg.corpus, adapter, cfg.tune, cfg.link, say)
    dpo = curator_dpo(store, model, adapter, cfg, say) if cfg.dpo_pairs else None
    approx = approximation_error(model, reference, cfg.corpus, cfg.tune, adapter=adapter)
    say(f"approximation error {approx['error']:.4f} over cycle 1's vocabulary "
        f"(first position of a document {approx['first']}, the rest {approx['rest']}); "
        f"KL(tuned ‖ compiled) there {approx['kl']} (against the compiled logits as they "
        f"are, unscaled: {approx['kl_raw']})")
    return {"adapter": str(adapter),
            "approximation_error": approx["error"],
            "approximation_error_first": approx["first"],
            "approximation_error_rest": approx["rest"],
            "approximation_tokens": approx["tokens"],
            "kl_tuned_compiled": approx["kl"],
            "kl_tuned_compiled_raw": approx["kl_raw"],
            "approximation_error_own_vocab": r["before"]["heldout_loss_tempered"],
            "approximation_error_raw": r["before"]["heldout_loss"],
            "temperature": r["before"]["temperature"],
            "tuned_heldout_loss": r["after"]["heldout_loss"],
            "graph_mrr_before": r["before"]["graph"]["mrr"],
            "graph_mrr_after": r["after"]["graph"]["mrr"], "tune_steps": r["steps"],
            **({"dpo": dpo} if dpo is not None else {})}


def curator_dpo(store: Store, model: Path, adapter: Path, cfg: CycleConfig, say,
                fold: Store | None = None) -> dict:
    """Go on training the tuned adapter (and its other half, with link rows) with TRL's DPO
    on the curators' decisions (the loop's own acceptances are not decisions): a source's
    accepted target over its rejected ones, and its ground-truth targets over each rejected
    one (`finetune.trl_jobs.preference_pairs`), written as the checkpoint's token strings.
    The reference is the tuned adapter itself.

    fold: the fold's store, when this tunes the fold's model. Its pairs are the rejections
    under the fold's own ground truth only: the accepted links are the fold's hidden labels
    (make_fold's `curated`), and DPO on them would teach the fold its answers."""
    import shutil
    from finetune.trl_jobs import checkpoint_tokens, preference_pairs, token_rows, train
    from loop.linkrows import OTHER
    decided = store.query(sql_loop.CURATOR_DECISIONS)
    if fold is not None:
        decided = [d for d in decided if d[2] == "rejected"]
    rejected = sorted({s for s, _, st in decided if st == "rejected"})
    links: dict[str, list[str]] = {}
    for s, t in (fold or store).of_ids(rejected, sql_loop.TRUTH_OF_SOURCES):
        links.setdefault(s, []).append(t)
    if fold is None:        # what a curator accepted is ground truth too
        for s, t, st in decided:
            if st == "accepted":
                links.setdefault(s, []).append(t)
    pairs = preference_pairs(({"source": s, "target": t, "status": st} for s, t, st in decided),
                             links=links)
    rows = token_rows(((r["prompt"], r["chosen"], r["rejected"]) for r in pairs),
                      checkpoint_tokens(model))
    if len(rows) < cfg.dpo_pairs:
        say(f"DPO: {len(rows)} preference pairs from curator decisions (< {cfg.dpo_pairs})")
        return {"pairs": len(rows), "skipped": f"{len(rows)} pairs (< {cfg.dpo_pairs})"}
    data = adapter.parent / "preference.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {"pairs": len(rows), "data": str(data)}
    for part in [adapter] + ([adapter / OTHER] if (adapter / OTHER).exists() else []):
        say(f"DPO on {len(rows)} curator preference pairs, from the adapter {part}")
        trained = part.parent / f"{part.name}-dpo"
        record = train("dpo", model, data, trained, max_steps=cfg.dpo_steps,
                       batch_size=min(8, len(rows)), seed=cfg.tune.seed,
                       device=cfg.tune.device, tokens=True, adapter=part)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            (trained / name).replace(part / name)
        shutil.rmtree(trained)
        out["other" if part.name == OTHER else "adapter"] = {
            k: record[k] for k in ("steps", "first_loss", "last_loss", "train_seconds")}
    return out


def _fit(store: Store, folder: Path, n: int, cfg: CycleConfig, say) -> dict:
    """Hide a share of the links in a fold store, compile and tune it as the cycle did, and
    fit the ranker on the hidden links (loop/fold.py says why not on the store itself).

    With `cfg.folds` > 1 the cycle makes that many disjoint folds (the seed's parts), each
    compiled and tuned, and fits and calibrates on their pooled queries. Built because one
    fold's draw moves the held-out MRR by as much as a cycle's gain, and measured not to
    steady it (README, "Several folds"): three folds' queries leave the spread over fold
    seeds as one fold's (cyberwiki sd 0.0023 against 0.0020; WordNet 0.0036 against 0.0034)."""
    from loop.ablate import choose_subset, fit_subsets, save_rankers
    from loop.calibrate import calibrate
    from loop.fit import fit_kind, pooled
    if cfg.fold <= 0:
        return {"ranker": None, "skipped": "no fold asked for (--fold 0)"}
    seed = cfg.fold_seed + (1 if cfg.same_fold else n)      # cycle 1 alike either way
    decided = store.query(sql_loop.CURATOR_DECISIONS)       # labels; the loop's own are not
    curated = [(s, d) for s, d, status in decided if status == "accepted"]
    rejected = [(s, d) for s, d, status in decided if status == "rejected"]
    fold_pages = cfg.fold_pages
    if fold_pages is None:          # new notes: their map is fitted on pages the fold empties
        fresh = len(new_pages(store, n))
        fold_pages = NEW_NOTE_PAGES if fresh else 0.0
        if fresh:
            say(f"cycle {n}: fit: {fresh} new notes without links: the fold also empties "
                f"{fold_pages:.0%} of the linked pages")
    folds, hidden, dpo = [], [], []
    for part in range(cfg.folds):
        try:
            fold, n_hidden, fold_dpo = _make_fold(store, folder / fold_folder(part), n, part,
                                                  cfg, seed, fold_pages, curated, rejected, say)
        except GraftError as exc:           # too few links to hide: rank by the lift
            return {"ranker": None, "skipped": str(exc)}
        folds.append(fold)
        hidden.append(n_hidden)
        dpo.append(fold_dpo)
    queries = pooled([f.q for f in folds])
    choice = None
    if cfg.ranker_kind == "linear" and cfg.ranker_features == "auto":
        subsets = fit_subsets(queries, "linear", seed, say=say)       # groups' worth
        choice = choose_subset(queries, subsets, seed, say=say)
        chosen = subsets[choice["subset"]]
        ranker = replace(chosen, fit={**chosen.fit, "subset": choice, "cycle": n})
        if cfg.previous_ranker != "refit":
            ranker = _previous(store, n, queries, ranker, cfg.previous_ranker, say)
    else:
        ranker = fit_kind(queries, kind=cfg.ranker_kind, seed=seed, say=say)
        subsets = fit_subsets(queries, ranker.kind, seed, say=say)   # groups' worth
    # P(true link), the fold's own: curators' decisions correct the queue they were made on
    # (loop.review.pending_confidence), not the next fold — labels and hard negatives there
    cal = calibrate(folds, ranker, folder, seed, say,
                    top=cfg.extract.per_source)     # the fold's top candidates as proposed
    ranker = replace(ranker, fit={**ranker.fit, "calibration": cal})
    path = ranker.save(folder / "ranker.json")
    save_rankers(subsets, folder)
    return {"ranker": str(path), "ranker_kind": ranker.kind, "folds": cfg.folds,
            "fold_hidden": sum(hidden), **({"fold_hidden_each": hidden} if cfg.folds > 1 else {}),
            "fold_pages": fold_pages,
            "curator_accepted_hidden": len(curated), "curator_rejected": len(rejected),
            "fold_mrr": ranker.fit["mrr"],
            "weights": dict(zip(ranker.features, ranker.weights)),
            "fold_mrr_by_subset": {k: r.fit["mrr"] for k, r in subsets.items()},
            **({"ranker_subset": ranker.fit["subset"]["subset"],
                "cv_mrr_by_subset": choice["cv_mrr"]} if choice else {}),
            **({"incumbent": ranker.fit["incumbent"]} if "incumbent" in ranker.fit else {}),
            "reliability": cal["reliability"],
            **({"fold_dpo": dpo[0] if cfg.folds == 1 else dpo} if any(dpo) else {})}


def _previous(store: Store, n: int, queries, challenger, mode: str, say):
    """The ranker cycle n extracts with, given the previous cycle's (the incumbent) and the new
    fit (the challenger). `keep`: the incumbent when it ranks this cycle's fold — hidden
    links it never saw — better than the challenger does cross-validated on the same
    queries, else the challenger. `average`: their weights averaged (Ranker.blended), so a
    ranker is a running mean over the cycles' folds with the newest weighing half. Either way
    the result is recalibrated on the new fold like a new fit.

    Why: a refit moves with its fold's draw as much as a cycle moves the graph, so a cycle
    could swap a ranker for a worse one (README, "The previous cycle's ranker")."""
    from loop.ablate import fixed_mrr
    from loop.rank import Ranker
    if n == 1:
        return challenger
    done = store.query(sql_loop.STEP_DONE, {"cycle": n - 1, "step": "fit"})
    path = json.loads(done[0][0]).get("ranker") if done else None
    if not path or not Path(path).is_file():
        say(f"cycle {n}: fit: no ranker of cycle {n - 1} to weigh the new one against")
        return challenger
    old = Ranker.load(path)
    held = None if old.model else fixed_mrr(queries, old)     # a booster has no weights
    new = challenger.fit["subset"]["cv_mrr"][challenger.fit["subset"]["subset"]]
    if held is None:
        say(f"cycle {n}: fit: cycle {n - 1}'s ranker needs features this fold lacks, or is "
            f"a booster: the new one")
        return challenger
    record = {"mode": mode, "from_cycle": old.fit.get("cycle", n - 1),
              "incumbent_mrr": round(held, 5), "challenger_cv_mrr": new,
              "challenger_subset": challenger.fit["subset"]["subset"]}
    if mode == "average":
        ranker = old.blended(challenger)
        mrr = fixed_mrr(queries, ranker)
        say(f"cycle {n}: fit: the previous ranker and the new one averaged (on this fold: "
            f"previous {held:.4f}, new {new:.4f} cross-validated, average {mrr:.4f} partly "
            f"in sample)")
        return replace(ranker, fit={**ranker.fit, "mrr": round(mrr, 5),
                                    "incumbent": {**record, "kept": False}})
    kept = held > new
    say(f"cycle {n}: fit: on this fold the previous ranker (cycle {record['from_cycle']}) "
        f"ranks {held:.4f}, the new one {new:.4f} cross-validated → "
        + ("keep the previous" if kept else "take the new"))
    if not kept:
        return replace(challenger, fit={**challenger.fit,
                                        "incumbent": {**record, "kept": False}})
    return replace(old, fit={**old.fit, "mrr": round(held, 5),
                             "incumbent": {**record, "kept": True}})


def fold_folder(part: int) -> str:
    """The folder (in the cycle's) of the cycle's fold `part`: fold, fold-2, fold-3, …"""
    return "fold" if part == 0 else f"fold-{part + 1}"


def _make_fold(store: Store, fold: Path, n: int, part: int, cfg: CycleConfig, seed: int,
               fold_pages: float, curated: list, rejected: list, say):
    """Fold `part` of cycle n in `fold`: the store less its hidden links, compiled and tuned
    as the cycle was, and its fitting queries. Returns (calibrate.Fold, links hidden, its
    DPO record or None); GraftError says why there is no fit."""
    import numpy as np

    from compiler.compile import compile_snapshot
    from graph.snapshot import take_snapshot
    from loop.calibrate import Fold
    from loop.candidates import scan_kind
    from loop.evaluate import load_graph
    from loop.extract import source_rows
    from loop.fit import fit_queries
    from loop.fold import hidden_positions, make_fold, not_candidates, positions, save_hidden
    from loop.rank import Features
    folder = fold.parent
    fold.mkdir(parents=True, exist_ok=True)
    hidden = make_fold(store, fold / "fold.duckdb", cfg.fold, seed, cfg.fold_token,
                       cfg.fold_inverse, fold_pages, curated=curated, part=part)
    if len(hidden) < MIN_FOLD:
        raise GraftError(f"{len(hidden)} hidden links (< {MIN_FOLD})")
    which = f" {part + 1} of {cfg.folds}" if cfg.folds > 1 else ""
    with Store(fold / "fold.duckdb") as fs:
        say(f"cycle {n}: fit: compiling and tuning the fold{which} ({len(hidden)} links "
            f"hidden)")
        fold_cfg = _pinned(cfg.compile, folder / "model")      # the cycle's d and depth
        if cfg.warm_start:                                     # the store minus a few links
            fold_cfg = replace(fold_cfg, warm_start=str((folder / "model").resolve()))
        compile_snapshot(fs, take_snapshot(fs), fold / "model", fold_cfg)
        tune_model(fs, fold / "model", cfg.corpus, fold / "adapter", cfg.tune, cfg.link, say)
        fold_dpo = (curator_dpo(store, fold / "model", fold / "adapter", cfg, say, fold=fs)
                    if cfg.dpo_pairs else None)
        graph = load_graph(fs)
        known = not_candidates(graph, fs)
    save_hidden(fold, hidden)
    # fitted and calibrated on the sources extraction proposes from (pages, at scale)
    allowed = source_rows(graph, cfg.extract.sources, scan_kind(cfg.extract.scan,
                                                                len(graph.index)))
    pairs = hidden_positions(graph, fold)
    pairs = pairs[np.isin(pairs[:, 0], allowed)]
    if len(pairs) < MIN_FOLD:
        raise GraftError(f"{len(pairs)} hidden links from sources extraction proposes from "
                         f"(< {MIN_FOLD})")
    features = Features(graph, fold / "model", fold / "adapter", embed_cache=cfg.embed_cache,
                        embed=cfg.text_embed, device=cfg.extract.device)
    queries = fit_queries(features, known, pairs, seed=seed + part, say=say,
                          hard=positions(graph, rejected), hard_weight=cfg.hard_negative,
                          scan=cfg.extract.scan)
    others = np.setdiff1d(allowed, pairs[:, 0])
    return Fold(queries, features, known, others), len(hidden), fold_dpo


def _extract(store: Store, model: Path, adapter: Path, ranker: Path | None, n: int,
             cfg: CycleConfig, say) -> dict:
    from loop.extract import extract
    from loop.rank import Ranker
    from loop.review import add_proposals
    fresh = new_pages(store, n)
    if fresh:
        say(f"cycle {n}: extract: {len(fresh)} new notes without links get the map of pages "
            f"the fold emptied")
    props = extract(store, model, cfg.extract, adapter=adapter,
                    ranker=Ranker.load(ranker) if ranker else None, corpus=cfg.corpus, say=say,
                    embed_cache=cfg.embed_cache, new_pages=fresh)
    new = add_proposals(store, props, n, str(model.resolve()), str(adapter.resolve()))
    return {"proposals": len(props), "new": new, "new_notes": len(fresh)}


def _review(store: Store, n: int, k: int, holdout: Path | None,
            precision: float | None = None) -> dict:
    """Accept the cycle's top K proposals, or (`precision`) the most confident ones while the
    estimated precision of those accepted stays ≥ precision (needs a calibrated ranker)."""
    from loop.review import decide
    top = [i for (i,) in store.query(sql_loop.CYCLE_TOP, {"cycle": n, "k": k})] if k else []
    # the links' time: one past the store's latest, so a rerun stakes identical links
    at = store.scalar(sql_loop.LATEST_LINK_TIME) + 1
    result = None
    if top or precision is not None:
        result = decide(store, accept=top, reviewer="auto", cycle=n, at=at,
                        accept_precision=None if top else precision)
    accepted = store.query(sql_loop.CYCLE_ACCEPTED_CONFIDENCE, {"cycle": n})
    detail = {"auto_accepted": len(result.decided) if result else 0, "accepted": len(accepted),
              "staked": result.staked if result else 0,
              "estimated_precision": (round(sum(c for _, _, c in accepted) / len(accepted), 4)
                                      if accepted else None)}
    if holdout is not None and accepted:
        from loop.evaluate import read_holdout
        truth = {(h.src, h.dst) for h in read_holdout(holdout)}
        hits = sum((s, d) in truth for s, d, _ in accepted)
        detail.update(precision=hits / len(accepted), true_accepted=hits)
    return detail


def _eval(store: Store, folder: Path, ranker: Path | None, holdout: Path,
          embed_cache: Path | None = None, device: str = "auto", sample: int = 0) -> dict:
    """graft (the extractor's ranker over this cycle's models), graft_lm (the tuned model
    alone: loop/rank.py Features.lm_feature), unlinked mentions (what Obsidian and Logseq
    show, over this cycle's graph) and, when the fit step saved them, the ablation rankers
    (loop/ablate.py) on the held-out links."""
    from loop import ablate, baselines, evaluate
    from loop.extract import lift_ranker
    from loop.rank import Features, Ranker, ranker_scorer
    model, adapter = folder / "model", folder / "adapter"
    graph = evaluate.load_graph(store)
    queries = evaluate.sample_queries(
        evaluate.select_queries(graph, evaluate.read_holdout(holdout)), sample)
    fitted = Ranker.load(ranker) if ranker else lift_ranker(0.5, True)
    features = Features(graph, model, adapter, embed_cache=embed_cache, device=device)
    scorers = {"graft": ranker_scorer(features, fitted),
               "graft_lm": ranker_scorer(features, Ranker((features.lm_feature,), (1.0,))),
               "mentions": baselines.mentions(graph, baselines.BaselineConfig())}
    subsets = ablate.load_rankers(folder) if (folder / ablate.FOLDER).is_dir() else {}
    result = evaluate.evaluate(graph, queries, {**scorers, **ablate.scorers(features, subsets)})
    out = result.to_json()
    out["methods"] = {k: v for k, v in out["methods"].items() if k in scorers}
    return {"eval": out, "ablation": ablate.table(result, subsets)}


def cycle_folder(store: Store, db: Path, cycle: int | None = None) -> tuple[int, Path]:
    """(cycle, folder) of cycle `cycle` (default: the latest whose fit step is done): the
    folder holding its model, adapter, ranker and fold, as the journal recorded it (as given,
    or relative to the store's folder)."""
    rows = [r for r in cycle_metrics(store) if "fit" in r["steps"] and r.get("model")]
    if cycle is not None:
        rows = [r for r in rows if r["cycle"] == cycle]
    if not rows:
        raise GraftError(f"{db}: no cycle{'' if cycle is None else f' {cycle}'} with a fitted "
                         "ranker in this store (run `graft cycle`, or give --model)")
    row = rows[-1]
    model = recorded_model(row, db)
    if model is None:
        raise GraftError(f"cycle {row['cycle']}'s model {row['model']} is not on disk here")
    return row["cycle"], model.parent


def recorded_model(row: dict, db: Path) -> Path | None:
    """The checkpoint a cycle's journal row names, as given or relative to the store's
    folder, when it is on disk."""
    for model in (Path(row["model"]), Path(db).parent / row["model"]):
        if (model / COMPILE_RECORD).exists():
            return model
    return None


def cycle_metrics(store: Store) -> list[dict]:
    """One row per cycle: every recorded step's detail, merged, plus the wall time and what
    people decided of its proposals (reviewed, curator_accepted, their mean confidence
    curator_estimated, and curator_precision = accepted / reviewed)."""
    by_cycle: dict[int, dict] = {}
    for cycle, name, detail, finished in store.query(sql_loop.STEPS_ALL):
        row = by_cycle.setdefault(cycle, {"cycle": cycle, "steps": [], "wall_seconds": 0.0})
        d = json.loads(detail)
        row["steps"].append(name)
        row["wall_seconds"] = round(row["wall_seconds"] + d.pop("seconds", 0.0), 3)
        if name == "eval":
            row["ablation"] = d.get("ablation") or None
            g = d["eval"]["methods"].get("graft", {})
            lm = d["eval"]["methods"].get("graft_lm", {})
            m = d["eval"]["methods"].get("mentions", {})
            row.update(eval_mrr=g.get("mrr"), eval_hits1=g.get("hits1"),
                       eval_hits10=g.get("hits10"), eval_auc=g.get("auc"),
                       eval_lm_mrr=lm.get("mrr"), eval_mentions_mrr=m.get("mrr"),
                       eval_mentions_hits10=m.get("hits10"), eval_n=d["eval"]["n"])
        else:
            row.update(d)
    for cycle, reviewed, accepted, estimated in store.query(sql_loop.CYCLE_CURATOR):
        if cycle in by_cycle:
            by_cycle[cycle].update(reviewed=reviewed, curator_accepted=accepted,
                                   curator_estimated=round(estimated, 4),
                                   curator_precision=round(accepted / reviewed, 4))
    return [by_cycle[c] for c in sorted(by_cycle)]


def format_metrics(rows: list[dict]) -> str:
    head = (f"{'cycle':>5} {'approx. error':>13} {'tuned loss':>10} {'graph MRR':>9} "
            f"{'fold MRR':>8} {'proposals':>9} {'accepted':>8} {'precision':>9} {'eval MRR':>8} "
            f"{'Hits@10':>7} {'mentions':>8} {'LM MRR':>7} {'wall s':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['cycle']:>5} {_f(r.get('approximation_error')):>13} "
                     f"{_f(r.get('tuned_heldout_loss')):>10} {_f(r.get('graph_mrr_after')):>9} "
                     f"{_f(r.get('fold_mrr')):>8} {r.get('proposals', '-'):>9} "
                     f"{r.get('accepted', '-'):>8} {_f(r.get('precision')):>9} "
                     f"{_f(r.get('eval_mrr')):>8} {_f(r.get('eval_hits10')):>7} "
                     f"{_f(r.get('eval_mentions_mrr')):>8} "
                     f"{_f(r.get('eval_lm_mrr')):>7} {r['wall_seconds']:>7.1f}")
    return "\n".join(lines)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"
