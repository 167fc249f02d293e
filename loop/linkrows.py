"""Link rows: a page's text followed by the pages it links, as token rows a compiled model is
tuned on, and the same layout as the context the tuned model is asked for a page's next link.

An LM tuned on running text learns what gets *mentioned* next, not what gets *linked*
(DESIGN §7: the tuned model alone ranked held-out cyberwiki links at 0.03–0.10 MRR). A link
row asks the question curators answer: after page p and the particles its text names, which
pages does p link?

    [p] [particles p's text names, in order, ≤ page_tokens] [p's other targets, shuffled] </s> t

one row per link p → t; the loss is on t alone (the rest is context). The targets are the store's
ground-truth links (`ingest`/`curator`; links the loop staked are predictions, never taught
as truth); on a fold, its hidden links are simply absent, as a missing link is in the store.
At scoring time the context is the same with all of p's known targets (in a seeded order),
and the next-particle distribution after `</s>` ranks the rest.

Cross-fitting. A link the store lacks is, in p's own rows, a particle of the context that is
never the answer: a model tuned on p's rows learns to push exactly p's missing links down
(cyberwiki fold: a hidden target named on its page ranked 4943rd of 6666). So by default two
adapters are tuned, each on the link rows of half of the pages (split by a hash of the page's
id) and all the text, and page p is scored by the adapter that never saw p's rows — the
model can only answer for p what it learned from other pages — copy a named particle the way
curators link one, or name one the text left out. The second adapter lives in the first's
folder, under OTHER.

Token ids are a checkpoint's (particle i of particles.json is token 4 + i).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph.checkpoint import SPECIAL_TOKENS
from finetune.text import Lexicon
from loop.evaluate import EvalGraph, checkpoint_positions

EOS = SPECIAL_TOKENS.index("</s>")
OTHER = "other-half"            # adapter/OTHER: the adapter tuned on the other half's rows


@dataclass(frozen=True)
class LinkRowConfig:
    page_tokens: int = 48           # text particles kept per page (its first ones)
    links: int = 15                 # link targets per row (a seeded sample beyond that)
    seed: int = 0
    own: bool = True                # start the row with p's own token (False: the model must
                                    # predict from the text and the other links alone)
    cross_fit: bool = True          # two adapters, each tuned on half of the pages; a page is
                                    # scored by the one that never saw its rows

    FILE = "linkrows.json"

    def save(self, folder: Path) -> None:
        import json
        from dataclasses import asdict
        (Path(folder) / self.FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def of_adapter(cls, folder: Path) -> "LinkRowConfig":
        """The config an adapter was tuned with (its linkrows.json), else the default."""
        import json
        path = Path(folder) / cls.FILE
        return cls(**json.loads(path.read_text())) if path.exists() else cls()


class PageContexts:
    """Each particle's page as checkpoint tokens, and its known link targets."""

    def __init__(self, graph: EvalGraph, model_dir: Path, cfg: LinkRowConfig = LinkRowConfig()):
        self.cfg = cfg
        self.graph = graph
        self.ckpt = checkpoint_positions(model_dir, graph.index)              # (P,)
        self.offset = len(SPECIAL_TOKENS)
        lexicon = Lexicon.of_checkpoint(model_dir)
        self.page: dict[int, list[int]] = {}
        for p, text in graph.texts.items():
            if self.ckpt[p] < 0:
                continue
            own = int(self.ckpt[p]) + self.offset
            found = [t for t in lexicon.match(text)[0] if t != own]
            self.page[p] = found[:cfg.page_tokens]

    def token(self, p: int) -> int:
        return int(self.ckpt[p]) + self.offset

    def targets(self, p: int) -> np.ndarray:
        """p's ground-truth link targets that the checkpoint knows, as tokens (sorted)."""
        known = self.graph.known                   # CSR: p's row without a fancy index
        lo, hi = known.indptr[p], known.indptr[p + 1]
        cols = known.indices[lo:hi][known.data[lo:hi] != 0]
        cols = cols[self.ckpt[cols] >= 0]
        return np.sort(self.ckpt[cols] + self.offset)

    def context(self, p: int, leave_out: int | None = None) -> list[int]:
        """The context after which p's next link is asked (p must be in the checkpoint): p,
        its page, its known targets in a seeded order (at most cfg.links; `leave_out` not
        among them), then </s> — last, so the answer has to come through attention to the
        page and the links, not from the bigram of the last particle."""
        known = self.targets(p)
        if leave_out is not None:
            known = known[known != leave_out]
        rng = np.random.default_rng([self.cfg.seed, p] + ([] if leave_out is None
                                                          else [int(leave_out)]))
        known = rng.permutation(known)[:self.cfg.links]
        return [*self._own(p), *self.page.get(p, []), *known.tolist(), EOS]

    def _own(self, p: int) -> list[int]:
        return [self.token(p)] if self.cfg.own else []

    def half(self, p: int) -> int:
        """0 or 1, fixed by p's id: which half of the pages p is in."""
        digest = hashlib.blake2b(self.graph.index[p].encode(), digest_size=8).digest()
        return digest[0] & 1

    def rows(self, half: int | None = None) -> list[tuple[list[int], int]]:
        """Training rows (tokens, context length): one per known link p → t, the context
        without t followed by t; the loss is on t alone. `half`: only pages of that half."""
        out = []
        for p in np.flatnonzero(self.ckpt >= 0):
            if half is not None and self.half(int(p)) != half:
                continue
            for t in self.targets(int(p)):
                ctx = self.context(int(p), leave_out=int(t))
                out.append((ctx + [int(t)], len(ctx)))
        return out


def tune_model(store, model: Path, corpus: Path, adapter: Path, cfg, link: LinkRowConfig,
               say=lambda _: None) -> dict:
    """finetune.tune of `model` on `corpus` into `adapter`, with cfg.link_rows link rows of
    `store` per text row — cross-fitted (two LoRA adapters, the second under adapter/OTHER)
    when link.cross_fit and the method is lora. Returns the first tune's record."""
    from finetune.tune import tune
    from loop.evaluate import load_graph
    if not cfg.link_rows:
        return tune(model, corpus, adapter, cfg, store, say=say)
    pages = PageContexts(load_graph(store), model, link)
    split = link.cross_fit and cfg.method == "lora"
    rows = pages.rows(half=0 if split else None)
    say(f"tune: {len(rows)} link rows" + (" (half of the pages)" if split else ""))
    record = tune(model, corpus, adapter, cfg, store, say=say, link_rows=rows)
    if split:
        other = pages.rows(half=1)
        say(f"tune: the other half's adapter, {len(other)} link rows")
        tune(model, corpus, Path(adapter) / OTHER, cfg, None, say=say,
             link_rows=other)
    link.save(adapter)
    return record
