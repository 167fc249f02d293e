"""`graft report`: one self-contained HTML page of the cycles — a table and a plot."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

COLUMNS = (("cycle", "cycle"), ("approximation_error", "approximation error (nats)"),
           ("approximation_error_first", "… at a document's first position"),
           ("kl_tuned_compiled", "KL(tuned ‖ compiled) there"),
           ("kl_tuned_compiled_raw", "… against the unscaled compiled logits"),
           ("tuned_heldout_loss", "tuned held-out loss"), ("graph_mrr_after", "graph MRR"),
           ("fold_mrr", "ranker MRR on its fold"), ("proposals", "proposals"),
           ("accepted", "accepted"), ("estimated_precision", "estimated precision"),
           ("precision", "precision"), ("reviewed", "reviewed by a curator"),
           ("curator_accepted", "curator accepted"),
           ("curator_estimated", "their estimated precision"),
           ("curator_precision", "curator-observed precision"), ("eval_mrr", "eval MRR"),
           ("eval_hits10", "eval Hits@10"), ("eval_mentions_mrr", "unlinked mentions MRR"),
           ("eval_lm_mrr", "tuned LM alone MRR"),
           ("wall_seconds", "wall s"))


def write_report(rows: list[dict], out: Path) -> Path:
    """Write the page to `out` and return it."""
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>"
                                    for k, _ in COLUMNS) + "</tr>" for r in rows)
    ablation = _ablation(rows)
    plot = _plot(rows)
    img = f'<img alt="per-cycle metrics" src="data:image/png;base64,{plot}">' if plot else ""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>graft cycles</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>graft cycles</h1>
<p>Approximation error: the compiled model's next-particle cross-entropy on held-out text,
before tuning, at one logit scale fitted on the training text; it should fall as accepted
links reach the graph.</p>
<table><tr>{head}</tr>{body}</table>
{img}
{ablation}
</body></html>
""")
    return out


def _ablation(rows: list[dict]) -> str:
    """Per cycle, the ranker refitted without feature groups on the held-out links: what the
    compiled and the tuned model add to what the text alone finds (loop/ablate.py)."""
    parts = []
    for r in rows:
        table = r.get("ablation")
        if not table:
            continue
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{m[k]:.4f}</td>" for k in ("mrr", "hits1", "hits10", "auc"))
            + f"<td>{html.escape(', '.join(f'{f} {w:+.3g}' for f, w in m['weights'].items() if f.startswith('tuned')) or '–')}</td></tr>"
            for name, m in table.items())
        parts.append(f"<h3>cycle {r['cycle']}</h3><table><tr><th>ranker features</th><th>MRR"
                     "</th><th>Hits@1</th><th>Hits@10</th><th>AUC</th><th>tuned weights</th>"
                     f"</tr>{body}</table>")
    if not parts:
        return ""
    return ("<h2>What each part adds (ablation)</h2><p>The extractor's ranker refitted on the "
            "cycle's fold with feature groups left out — text: the store alone (mentions, "
            "link probability, embeddings); compiled: the compiled model; tuned: the model "
            "with its adapter — each ranking the held-out links.</p>" + "".join(parts))


def _cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict]) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cycles = [r["cycle"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    axes[0].plot(cycles, [r.get("approximation_error") for r in rows], "o-", label="all")
    if any(r.get("approximation_error_first") is not None for r in rows):
        axes[0].plot(cycles, [r.get("approximation_error_first") for r in rows], "s--",
                     label="first position")
        axes[0].legend()
    axes[0].set_title("approximation error (nats)")
    bars = [("proposals", "proposals"), ("accepted", "accepted"),
            ("reviewed", "reviewed"), ("curator_accepted", "curator accepted")]
    bars = [b for b in bars[:2] + [b for b in bars[2:] if any(r.get(b[0]) for r in rows)]]
    width = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        axes[1].bar([c - 0.4 + width * (i + 0.5) for c in cycles],
                    [r.get(key) or 0 for r in rows], width, label=label)
    axes[1].legend()
    axes[1].set_title("proposals")
    axes[2].plot(cycles, [r.get("eval_mrr") for r in rows], "o-", label="eval MRR")
    if any(r.get("eval_mentions_mrr") is not None for r in rows):
        axes[2].plot(cycles, [r.get("eval_mentions_mrr") for r in rows], "^:",
                     label="unlinked mentions")
    axes[2].plot(cycles, [r.get("graph_mrr_after") for r in rows], "s--", label="graph MRR")
    axes[2].legend()
    axes[2].set_title("MRR")
    for ax in axes[:3]:
        ax.set_xlabel("cycle")
        ax.set_xticks(cycles)
    axes[3].plot([0, 1], [0, 1], ":", color="grey")
    for r in rows:                      # calibrated confidence against the fold's truth
        table = r.get("reliability") or []
        axes[3].plot([b["estimated"] for b in table], [b["observed"] for b in table], "o-",
                     ms=3, label=f"cycle {r['cycle']}")
        if r.get("reviewed"):           # what the curator accepted of what they reviewed
            axes[3].plot([r["curator_estimated"]], [r["curator_precision"]], "*", ms=12,
                         label=f"cycle {r['cycle']}, curator")
    axes[3].set_xlabel("estimated confidence")
    axes[3].set_ylabel("observed (fold)")
    axes[3].set_title("reliability")
    if any(r.get("reliability") for r in rows):
        axes[3].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
