"""Benchmark: graft on typed graphs (Kinships, UMLS from the PyKEEN wheel) — link recovery,
the extractor, and whether compiled heads line up with relations (issue 5).

Usage: python bench/typed_graph.py [--datasets kinships,umls] [--top-k 100] [--seed 0]
                                   [--attn-gain 1.0] [--layers 2] [--kge-epochs 20]
                                   [--no-kge] [--out DIR] [--json FILE]

Per dataset (files shipped inside the installed pykeen package; nothing is downloaded):
  1. the dataset's own split: train + valid become links (graph/triples.py: one link per
     triple, `semcon` = `token` = the relation's name, so each relation is a semcon and gets
     a head), test is held out (held-out rows whose pair is already linked by another
     relation are skipped by `graft eval` and counted);
  2. `graft ingest particles|links`, then two compiles: `default` (`graft compile`: derived
     d*, h*, L*, attention gain 0) and `typed` (`--layers L --attn-gain G`: the heads write
     into the residual stream); each certificate must pass;
  3. `graft eval --json` with the default checkpoint and every baseline that makes sense
     without text (popularity, focus, adamic_adar, ppmi, spectral = the checkpoint's E·Hᵀ,
     pykeen = untyped TransE), the typed checkpoint, and spectral from a d = 64 SVD;
  4. `graft extract CKPT --top-k K --json` on each checkpoint with no adapter (the compiled
     belief alone — there is no text, so no tuning): precision@K against the held-out pairs
     (and the rate a uniform pick of an unlinked pair would get), and semcon accuracy — for
     proposals that hit a held-out pair, is the proposal's semcon (since this change, its
     largest layer-0 QK head; before, the head with the largest |o_proj contribution|) one
     of the pair's held-out relations? — and the same question with the hits typed by
     their largest layer-0 QK head computed here from the weights;
  5. per head, for every held-out pair (p, q): which head scores it highest — QK (layer-0
     x_p W_Q W_Kᵀ x_q / √d_h, as `graft trace --pair` reports it) and DLA (each head's
     o_proj contribution to q's logit after [p], loop/extract.py `_head_logits`) — against
     relation-prediction references on the same pairs: the majority relation, the source's
     most common train relation, and a typed TransE (argmax_r score(p, r, q)).
Prints one table per dataset, the date, the load average and step times.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from graph import triples as tri  # noqa: E402
from loop.cli import main  # noqa: E402

BASELINES = "popularity,focus,adamic_adar,ppmi,spectral,pykeen"   # mentions: no text here


def graft(*argv, capture: bool = False):
    """Run one graft command in-process; with capture, its stdout parsed as JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if capture else nullcontext():
        rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(f"graft {' '.join(map(str, argv))}: exit {rc}")
    return json.loads(out.getvalue()) if capture else None


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[{name}: {self.seconds[name]} s]", file=sys.stderr, flush=True)


# -- per-head analysis ---------------------------------------------------------------------
def head_semcon_names(ckpt: Path) -> tuple[list[set[str]], list[str]]:
    """For each head, the names of the semcons it carries (semcon i → head i mod heads)."""
    record = json.loads((ckpt / "compile.json").read_text())
    heads = record["arch"]["used"]["heads"]
    names = [s["name"] for s in record["semcons"]]
    out: list[set[str]] = [set() for _ in range(heads)]
    for i, n in enumerate(names):
        out[i % heads].add(n)
    return out, names


def head_views(ckpt: Path, src: np.ndarray, dst: np.ndarray) -> dict[str, np.ndarray]:
    """(n, heads) per-head scores of pairs given as checkpoint token ids: `qk` (layer 0),
    `dla` (sum over layers of each head's contribution to dst's logit after [src])."""
    import torch

    from finetune.checkpoints import load_checked
    from loop.extract import _head_logits
    model = load_checked(ckpt, dtype=torch.float32).eval()
    cfg = model.config
    h = cfg.num_attention_heads
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    with torch.no_grad():
        layer = model.model.layers[0]
        x = layer.input_layernorm(model.model.embed_tokens.weight)            # (T, d)
        q = layer.self_attn.q_proj(x).reshape(-1, h, dh)
        k = layer.self_attn.k_proj(x).reshape(-1, h, dh)
        s, d = torch.as_tensor(src), torch.as_tensor(dst)
        qk = ((q[s] * k[d]).sum(-1) / np.sqrt(dh)).numpy().astype(np.float64)   # (n, h)
        dla = _head_logits(model, src, dst, nullcontext)                        # (n, h)
    return {"qk": qk, "dla": dla}


def check_qk_against_trace(db: Path, ckpt: Path, p: str, q: str, qk_row: np.ndarray) -> float:
    """Largest |difference| between our layer-0 QK row and `graft trace --pair`'s."""
    from compiler.provenance import Trace, head_scores
    from graph.store import Store
    with Store(db, create=False, read_only=True) as store:
        tr = Trace(store, ckpt)
        scores = head_scores(tr, tr.resolve(p), tr.resolve(q))
    got = np.array([s["score"] for s in scores if s["layer"] == 0])
    return float(np.abs(got - qk_row).max())


def typed_transe(train, pairs, relations, cfg) -> np.ndarray | None:
    """(n, R) scores of a TransE trained on the typed train triples, or None if it fails."""
    import torch

    from loop.baselines import _import_pykeen
    _import_pykeen()
    from pykeen.models import model_resolver
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import TriplesFactory
    factory = TriplesFactory.from_labeled_triples(np.array(train, dtype=str))
    model = model_resolver.make("TransE", triples_factory=factory, embedding_dim=cfg.kge_dim,
                                random_seed=cfg.seed)
    loop = SLCWATrainingLoop(model=model, triples_factory=factory, optimizer="Adam",
                             optimizer_kwargs={"lr": cfg.kge_lr})
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        loop.train(triples_factory=factory, num_epochs=cfg.kge_epochs, batch_size=256,
                   use_tqdm=False, use_tqdm_batch=False)
    model.eval()
    e2i, r2i = factory.entity_to_id, factory.relation_to_id
    ht = torch.as_tensor([[e2i[p], e2i[q]] for p, q in pairs])
    with torch.no_grad():
        s = model.score_r(ht).numpy()                                         # (n, R_tf)
    out = np.full((len(pairs), len(relations)), -np.inf)
    for j, r in enumerate(relations):
        if r in r2i:
            out[:, j] = s[:, r2i[r]]
    return out


# -- one dataset ---------------------------------------------------------------------------
def run_dataset(name: str, args, work: Path) -> dict:
    from graph.ids import ZERO, particle_of_text
    from graph.store import Store
    from graph import sql_loop
    timer = Timer()
    work.mkdir(parents=True, exist_ok=True)
    folder = tri.pykeen_dataset_dir(name)
    train = tri.read_triples(folder / "train.txt") + tri.read_triples(folder / "valid.txt")
    test = tri.read_triples(folder / "test.txt")
    db = work / "g.duckdb"
    links = write_jsonl(work / "links.jsonl", tri.triples_to_links(train, neuron=name))
    particles = write_jsonl(work / "particles.jsonl", tri.triples_to_particles(train + test))
    holdout = write_jsonl(work / "holdout.jsonl", tri.triples_to_links(test, neuron=name))
    with timer("ingest"):
        graft("--db", db, "ingest", "particles", particles)
        graft("--db", db, "ingest", "links", links)
    ckpts = {"default": (work / "ckpt_default", []),
             "typed": (work / "ckpt_typed", ["--layers", args.layers, "--attn-gain", args.attn_gain])}
    arch, certs = {}, {}
    for label, (ckpt, extra) in ckpts.items():
        with timer(f"compile {label}"):
            graft("--db", db, "compile", "--out", ckpt, *extra)
        cert = json.loads((ckpt / "certificate.json").read_text())
        certs[label] = {k: (v.get("pass") if isinstance(v, dict) else v) for k, v in cert.items()}
        if not cert["pass"]:
            raise SystemExit(f"{name} {label}: certificate failed: {certs[label]}")
        record = json.loads((ckpt / "compile.json").read_text())
        arch[label] = {**record["arch"]["used"], "compile_s": round(sum(record["timings"].values()), 2),
                       "semcons": len(record["semcons"]),
                       "p_embed": round(cert["P-EMBED"]["value"], 4),
                       "p_attn_min": cert["P-ATTN"].get("min")}

    # 3. link recovery
    methods = BASELINES if args.kge else BASELINES.replace(",pykeen", "")
    table: dict[str, dict] = {}
    with timer("eval default + baselines"):
        res = graft("--db", db, "eval", "--holdout", holdout, "--model", ckpts["default"][0],
                    "--methods", "graft," + methods, "--seed", args.seed,
                    "--kge-epochs", args.kge_epochs, "--json", capture=True)
    n_eval = res["n"]
    for m, v in res["methods"].items():
        table[{"graft": "graft default", "spectral": "spectral (ckpt E·Hᵀ)",
               "pykeen": "pykeen TransE (untyped)"}.get(m, m)] = v
    with timer("eval typed + spectral d64"):
        res = graft("--db", db, "eval", "--holdout", holdout, "--model", ckpts["typed"][0],
                    "--methods", "graft", "--json", capture=True)
        table["graft typed"] = res["methods"]["graft"]
        res = graft("--db", db, "eval", "--holdout", holdout, "--methods", "spectral",
                    "--seed", args.seed, "--json", capture=True)
        table["spectral (d=64 SVD)"] = res["methods"]["spectral"]

    # held-out pairs that eval ranks: not linked in the store; their relations
    with Store(db, create=False, read_only=True) as store:
        linked = set(store.query(sql_loop.LINKED_PAIRS))
    held: dict[tuple[str, str], set[str]] = defaultdict(set)
    for h, r, t in test:
        pair = (particle_of_text(h), particle_of_text(t))
        if pair not in linked and h != t:
            held[pair].add(r)
    name_of = {particle_of_text(e): e for h, _, t in train + test for e in (h, t)}
    rel_of = {particle_of_text(r): r for _, r, _ in train + test} | {ZERO: "⊥"}
    semcons_in = set(head_semcon_names(ckpts["default"][0])[1])
    untyped = sum(1 for rs in held.values() if not rs & semcons_in)
    rel_pairs = Counter(r for rs in held.values() for r in rs)
    majority, majority_n = rel_pairs.most_common(1)[0]

    # 4. extractor
    extract = {}
    particles_json = json.loads((ckpts["default"][0] / "particles.json").read_text())
    v = len(particles_json)
    in_vocab = set(particles_json)
    open_pairs = v * (v - 1) - sum(1 for s, d in linked if s in in_vocab and d in in_vocab and s != d)
    for label, (ckpt, _) in ckpts.items():
        with timer(f"extract {label}"):
            out = graft("--db", db, "extract", ckpt, "--top-k", args.top_k, "--json",
                        capture=True)
        props = out["proposals"]
        hits = [p for p in props if (p["src"], p["dst"]) in held]
        typed = [p for p in hits if p["semcon"] is not None]
        sem_name = lambda p: rel_of.get(p["semcon"], p["semcon"][:12])   # noqa: E731
        right = [p for p in typed if sem_name(p) in held[(p["src"], p["dst"])]]
        maj = Counter(r for p in hits for r in held[(p["src"], p["dst"])]).most_common(1)
        qk_right = None
        if hits:       # what typing the same hits by the QK head (as `graft trace`) would give
            index = {q: i + 4 for i, q in enumerate(particles_json)}
            carries, _ = head_semcon_names(ckpt)
            top = head_views(ckpt, np.array([index[p["src"]] for p in hits]),
                             np.array([index[p["dst"]] for p in hits]))["qk"].argmax(1)
            qk_right = float(np.mean([bool(carries[t] & held[(p["src"], p["dst"])])
                                      for t, p in zip(top, hits)]))
        extract[label] = {
            "proposals": len(props), "precision": len(hits) / max(len(props), 1),
            "precision_chance": len(held) / max(open_pairs, 1), "hits": len(hits),
            "with_semcon": len(typed),
            "semcon_acc": (len(right) / len(typed)) if typed else None,
            "semcon_chance": (maj[0][1] / len(hits)) if maj else None,
            "qk_semcon_acc": qk_right,
            "semcons_proposed": dict(Counter(sem_name(p) for p in typed).most_common(5))}

    # 5. per-head vs relations, on every held-out pair the checkpoints know
    index = {p: i + 4 for i, p in enumerate(particles_json)}
    pairs = [pq for pq in sorted(held) if pq[0] in index and pq[1] in index]
    src = np.array([index[p] for p, _ in pairs])
    dst = np.array([index[q] for _, q in pairs])
    rels = [held[pq] for pq in pairs]
    per_head = {}
    for label, (ckpt, _) in ckpts.items():
        carries, _ = head_semcon_names(ckpt)
        with timer(f"heads {label}"):
            views = head_views(ckpt, src, dst)
        for view, scores in views.items():
            if not np.abs(scores).max() > 0:
                per_head[f"{view} {label}"] = {"acc": None, "note": "all heads 0 (attn gain 0)"}
                continue
            top = scores.argmax(1)
            acc = float(np.mean([bool(carries[t] & rs) for t, rs in zip(top, rels)]))
            per_head[f"{view} {label}"] = {
                "acc": acc, "distinct_heads_chosen": int(len(set(top.tolist()))),
                "most_chosen": Counter(sorted(carries[t])[0] if carries[t] else "-"
                                       for t in top).most_common(3)}
        if label == "default" and pairs:
            p, q = pairs[0]
            per_head["qk_trace_check_max_abs_diff"] = check_qk_against_trace(
                db, ckpt, p, q, views["qk"][0])
    # relation-prediction references on the same pairs
    by_source: dict[str, Counter] = defaultdict(Counter)
    for h, r, _ in train:
        by_source[particle_of_text(h)][r] += 1
    global_counts = Counter(r for _, r, _ in train)
    src_major = [(by_source[p] or global_counts).most_common(1)[0][0] for p, _ in pairs]
    refs = {"chance: majority relation of held-out pairs": majority_n / len(held),
            "chance: uniform over relations": 1 / len(global_counts),
            "ref: source's most common train relation":
                float(np.mean([r in rs for r, rs in zip(src_major, rels)]))}
    if args.kge:
        from loop.baselines import BaselineConfig
        relations = sorted(global_counts)
        with timer("typed TransE"):
            s = typed_transe(train, [(name_of[p], name_of[q]) for p, q in pairs], relations,
                             BaselineConfig(seed=args.seed, kge_epochs=args.kge_epochs))
        refs[f"ref: typed TransE ({args.kge_epochs} ep) argmax_r"] = float(np.mean(
            [relations[j] in rs for j, rs in zip(s.argmax(1), rels)]))
    return {"dataset": name, "triples": {"train+valid": len(train), "test": len(test)},
            "entities": len({e for h, _, t in train + test for e in (h, t)}),
            "relations": len(global_counts), "semcons": sorted(semcons_in),
            "eval_n": n_eval, "held_pairs": len(held), "held_pairs_untyped": untyped,
            "multi_relation_held_pairs": sum(1 for rs in held.values() if len(rs) > 1),
            "majority_relation": majority, "arch": arch, "certificates": certs,
            "table": table, "extract": extract, "per_head": per_head, "relation_refs": refs,
            "seconds": timer.seconds}


def fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def print_report(r: dict, top_k: int) -> None:
    print(f"\n## {r['dataset']}: {r['entities']} entities, {r['relations']} relations, "
          f"{r['triples']['train+valid']} train+valid triples ingested, {r['triples']['test']} "
          f"test triples held out → {r['held_pairs']} held-out pairs not already linked "
          f"({r['multi_relation_held_pairs']} with >1 relation); eval ranked {r['eval_n']}")
    for label, a in r["arch"].items():
        print(f"  compile {label}: d={a['d']} heads={a['heads']} head_dim={a['head_dim']} "
              f"layers={a['layers']} semcons={a['semcons']} P-EMBED={a['p_embed']} "
              f"P-ATTN min={fmt(a['p_attn_min'])} passes={r['certificates'][label]} "
              f"(passes {a['compile_s']} s)")
    print("\n| method | MRR | Hits@1 | Hits@10 | AUC |\n|---|---|---|---|---|")
    for m, v in r["table"].items():
        print(f"| {m} | {v['mrr']:.3f} | {v['hits1']:.3f} | {v['hits10']:.3f} | {v['auc']:.3f} |")
    print(f"\n| extractor (no adapter, top-k {top_k}) | precision@K | chance | hits | "
          f"semcon acc on hits | QK-head acc on the same hits | majority-relation rate on hits |"
          f"\n|---|---|---|---|---|---|---|")
    for label, e in r["extract"].items():
        print(f"| {label} | {e['precision']:.3f} | {e['precision_chance']:.3f} | {e['hits']} | "
              f"{fmt(e['semcon_acc'])} ({e['with_semcon']} with a semcon) | "
              f"{fmt(e['qk_semcon_acc'])} | "
              f"{fmt(e['semcon_chance'])} |")
    print(f"\n| relation of held-out pair (n={r['held_pairs']}; {r['held_pairs_untyped']} "
          f"have no relation among the semcons) | accuracy |\n|---|---|")
    for k, v in r["per_head"].items():
        if isinstance(v, dict):
            extra = (f" ({v['distinct_heads_chosen']} distinct heads chosen; most: "
                     f"{v['most_chosen']})" if v.get("acc") is not None else f" ({v['note']})")
            print(f"| argmax head, {k} | {fmt(v['acc'])}{extra} |")
    for k, v in r["relation_refs"].items():
        print(f"| {k} | {v:.3f} |")
    print(f"\nQK vs `graft trace` head_scores on one pair: max |diff| "
          f"{r['per_head'].get('qk_trace_check_max_abs_diff', float('nan')):.2e}; "
          f"step seconds: {r['seconds']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="kinships,umls")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attn-gain", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--kge-epochs", type=int, default=20)
    parser.add_argument("--no-kge", dest="kge", action="store_false",
                        help="skip both TransE runs (untyped baseline, typed reference)")
    parser.add_argument("--out", help="work folder (default: a new temp folder)")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="graft-typed-"))
    started = datetime.datetime.now().isoformat(timespec="seconds")
    records = []
    for name in args.datasets.split(","):
        records.append(run_dataset(name.strip(), args, work / name.strip()))
        print_report(records[-1], args.top_k)
    print(f"\nstarted {started}, finished {datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}, {os.cpu_count()} CPUs, "
          f"work {work}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2, default=str) + "\n")
