"use strict";
// The curator workbench page (loop/serve.py serves it and the JSON it reads).
// Data from the store reaches the DOM through textContent and setAttribute only, never
// innerHTML, so a particle named <script>…</script> stays text.

const CSRF = document.querySelector('meta[name="csrf"]').content;
const SVGNS = "http://www.w3.org/2000/svg";
const state = { page: "", rows: [], sel: 0 };

// -- DOM helpers ---------------------------------------------------------------------------
function build(node, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) node.addEventListener(ev, f);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : String(kid));
  }
  return node;
}
const el = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const svg = (tag, attrs, ...kids) => build(document.createElementNS(SVGNS, tag), attrs, kids);
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 4) => (x === null || x === undefined ? "–"
  : typeof x === "number" ? (Number.isInteger(x) ? String(x) : x.toPrecision(d)) : String(x));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const cut = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
const particleLink = (id, name) =>
  el("a", { href: "#/particle/" + encodeURIComponent(id), title: id }, name || id.slice(0, 16) + "…");

function say(message, kind = "") {
  const box = $("status");
  box.textContent = message;
  box.className = kind;
}

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new Error(data.error || (data.detail ? JSON.stringify(data.detail) : res.statusText));
  }
  return data;
}

function show(page, ...content) {
  state.page = page;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("on", a.id === "nav-" + page);
  }
  $("view").replaceChildren(...content);
}

// -- highlighting --------------------------------------------------------------------------
// Both ends' names and aliases, whole words, case-insensitive (as finetune/text.py reads text).
function highlight(text, src, dst) {
  const terms = [];
  for (const [cls, words] of [["src", src], ["dst", dst]]) {
    for (const w of words) if (w && w.trim()) terms.push([w.toLowerCase(), cls]);
  }
  terms.sort((a, b) => b[0].length - a[0].length);
  if (!terms.length) return [text];
  const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const re = new RegExp("(?<![\\p{L}\\p{N}_])(" + terms.map((t) => esc(t[0])).join("|")
    + ")(?![\\p{L}\\p{N}_])", "giu");
  const out = [];
  let at = 0;
  for (const m of text.matchAll(re)) {
    out.push(text.slice(at, m.index));
    const cls = terms.find((t) => t[0] === m[0].toLowerCase())[1];
    out.push(el("mark", { class: cls }, m[0]));
    at = m.index + m[0].length;
  }
  out.push(text.slice(at));
  return out;
}

function evidenceOf(r) {
  const ev = r.evidence || {};
  const parts = [];
  const src = [r.src_name, ...(r.src_aliases || [])];
  const dst = [r.dst_name, ...(r.dst_aliases || [])];
  if (Array.isArray(ev.lines) && ev.lines.length) {
    parts.push(el("h3", {}, "evidence: corpus lines (naming both, or the target in a document naming the source)"),
      el("ul", { class: "evidence" }, ev.lines.map(([no, text]) =>
        el("li", {}, el("span", { class: "ln" }, "line " + no), highlight(String(text), src, dst)))));
  } else {
    parts.push(el("p", { class: "muted" }, "no corpus line names both, nor the target beside the source"));
  }
  if (ev.contributions && typeof ev.contributions === "object") {   // the ranker's why
    const feats = ev.features || {};
    parts.push(barChart("the ranker's score by feature (weight × value)",
      Object.entries(ev.contributions).map(([name, v]) => ({
        label: `${name} = ${fmt(feats[name])}`, value: Number(v) || 0,
        title: `${name}: value ${feats[name]}, contribution ${v}` })), fmt));
  }
  if (Array.isArray(ev.neighbours) && ev.neighbours.length) {   // text_neighbours' why
    parts.push(el("h3", {}, "pages that read like the source and link the target (text cosine)"),
      el("ul", { class: "evidence" }, ev.neighbours.map((n) =>
        el("li", {}, `${n.name || n.particle} (${fmt(n.cosine)})`))));
  }
  for (const [key, value] of Object.entries(ev)) {       // anything else, shown as it is
    if (key === "lines" || key === "neighbours" || (ev.contributions && ["contributions", "features"].includes(key))) continue;
    parts.push(el("h3", {}, key.replaceAll("_", " ")), el("pre", {}, JSON.stringify(value)));
  }
  return parts;
}

// -- proposals queue -----------------------------------------------------------------------
// A page at a time: each source's proposals together, pages by their best proposal.
function bySource(rows) {
  const groups = new Map();
  for (const r of rows) {
    if (!groups.has(r.src)) groups.set(r.src, []);
    groups.get(r.src).push(r);
  }
  return [...groups.values()].flat();
}

async function showQueue() {
  const data = await api("/api/proposals?status=pending");
  state.rows = bySource(data.proposals);
  // the relation column only when the proposals span more than one named relation
  const relations = new Set(state.rows.map((r) => r.semcon_name || r.semcon || ""));
  const typed = relations.size > 1;
  state.sel = Math.max(0, Math.min(state.sel, state.rows.length - 1));
  const c = data.counts;
  $("counts").textContent = `pending ${c.pending || 0} · accepted ${c.accepted || 0} · `
    + `rejected ${c.rejected || 0}`;
  const threshold = el("input", { id: "threshold", type: "number", step: "any", value: "",
    size: 6, "aria-label": "score threshold" });
  const bulk = el("button", { id: "accept-above", class: "accept", disabled: "" }, "accept all ≥");
  threshold.addEventListener("input", async () => {
    const x = parseFloat(threshold.value);
    if (Number.isNaN(x)) { bulk.disabled = true; bulk.textContent = "accept all ≥"; return; }
    const { ids } = await api("/api/above?threshold=" + encodeURIComponent(x));
    bulk.disabled = !ids.length;
    bulk.textContent = `accept ${ids.length} with score ≥ ${x}`;
  });
  bulk.addEventListener("click", () => decide({ accept_above: parseFloat(threshold.value) }));
  const heads = ["#", "cycle", "target", ...(typed ? ["relation"] : []), "confidence", "score"];
  const body = [];
  state.rows.forEach((r, i) => {
    if (i === 0 || state.rows[i - 1].src !== r.src) {
      const n = state.rows.filter((x) => x.src === r.src).length;
      body.push(el("tr", { class: "page" }, el("td", { colspan: heads.length },
        r.src_name, el("span", { class: "muted" }, ` · ${n} proposal${n === 1 ? "" : "s"}`))));
    }
    body.push(el("tr", { class: "row", "data-id": r.id, on: { click: () => select(i) } },
      el("td", { class: "num" }, r.id), el("td", { class: "num" }, r.cycle),
      el("td", {}, "→ ", r.dst_name),
      ...(typed ? [el("td", {}, r.semcon_name || "–")] : []),
      el("td", { class: "num" }, pct(r.confidence)), el("td", { class: "num" }, fmt(r.score))));
  });
  const table = el("table", { id: "queue" }, el("tr", {}, heads.map((h) => el("th", {}, h))), body);
  const list = el("section", { class: "panel" },
    el("div", { class: "bar" }, el("span", {}, "score threshold"), threshold, bulk),
    state.rows.length ? table : el("p", { class: "muted" }, "no pending proposals"));
  show("queue", el("div", { class: "cols" }, list, el("section", { class: "panel", id: "detail" })));
  select(state.sel);
}

function select(i) {
  if (!state.rows.length) { $("detail").replaceChildren(el("p", { class: "muted" }, "nothing selected")); return; }
  state.sel = Math.max(0, Math.min(i, state.rows.length - 1));
  for (const tr of document.querySelectorAll("#queue tr.row")) tr.classList.remove("sel");
  const tr = document.querySelectorAll("#queue tr.row")[state.sel];
  tr.classList.add("sel");
  tr.scrollIntoView({ block: "nearest" });
  const r = state.rows[state.sel];
  const why = el("div", { id: "why" });
  $("detail").replaceChildren(
    el("h2", {}, particleLink(r.src, r.src_name), " → ", particleLink(r.dst, r.dst_name)),
    el("div", { class: "muted" }, `proposal #${r.id} · cycle ${r.cycle} · score ${fmt(r.score)} · `
      + `confidence ${pct(r.confidence)}`),
    el("div", { class: "bar" },
      el("button", { class: "accept", id: "accept", on: { click: () => decide({ accept: [r.id] }) } }, "accept (a)"),
      el("button", { class: "reject", id: "reject", on: { click: () => decide({ reject: [r.id] }) } }, "reject (r)"),
      el("button", { id: "why-button", on: { click: () => showWhy(r, why) } }, "why? (y)"),
      el("span", { class: "legend" }, el("mark", { class: "src" }, "source"), " ",
        el("mark", { class: "dst" }, "target"))),
    ...evidenceOf(r), why);
}

async function decide(body) {
  body.reviewer = $("reviewer").value.trim() || "curator";
  localStorage.setItem("graft-reviewer", body.reviewer);
  let message, kind = "ok";
  try {
    const res = await api("/api/decide", body);
    const what = body.accept_above !== undefined ? `accepted ${res.decided.length} with score ≥ ${body.accept_above}`
      : res.decided.length ? `${body.accept ? "accepted" : "rejected"} #${res.decided[0]}`
        : `#${(body.accept || body.reject)[0]} was already decided (by another reviewer or the CLI)`;
    message = `${what}; ${res.staked} link(s) staked`;
  } catch (err) {
    [message, kind] = ["not decided: " + err.message, "error"];
  }
  await route();                  // the queue as it is now, then the outcome
  say(message, kind);
}

// -- why panel -----------------------------------------------------------------------------
// items: [{label, value, title, cls}]; bars grow right (positive) or left from one axis.
function barChart(title, items, show = pct) {
  const W = 660, left = 270, right = 64, row = 20, top = 6;
  const half = (W - left - right) / 2, mid = left + half, H = top + items.length * row + 6;
  const max = Math.max(1e-12, ...items.map((it) => Math.abs(it.value || 0)));
  const chart = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": title });
  items.forEach((it, k) => {
    const y = top + k * row, v = it.value || 0, w = Math.max(1, (Math.abs(v) / max) * half);
    chart.append(svg("text", { x: left - 6, y: y + 13, "text-anchor": "end" }, cut(it.label, 44)),
      svg("rect", { x: v >= 0 ? mid : mid - w, y: y + 3, width: w, height: row - 7,
        class: it.cls || (v >= 0 ? "pos" : "neg") }, svg("title", {}, it.title || it.label)),
      svg("text", { x: W - right + 4, y: y + 13 }, show(it.value)));
  });
  chart.append(svg("line", { class: "axis", x1: mid, x2: mid, y1: 0, y2: H }));
  return el("figure", {}, el("figcaption", {}, title), chart);
}

async function showWhy(r, box) {
  box.replaceChildren(el("p", { class: "muted" }, `tracing ${r.src_name} → ${r.dst_name} …`));
  let data;
  try {
    data = await api(`/api/why?p=${encodeURIComponent(r.src)}&q=${encodeURIComponent(r.dst)}`);
  } catch (err) {
    box.replaceChildren(el("p", { class: "error" }, "why: " + err.message));
    return;
  }
  if (!data.available) { box.replaceChildren(el("h3", {}, "why"), el("p", { class: "muted" }, data.message)); return; }
  const t = data.trace, z = t.zero_layer, m = t.model;
  const links = z.links.map((l) => ({ label: `${l.src} → ${l.dst}`, value: l.share,
    title: `link #${l.seq} by ${l.neuron}, amount ${l.amount}, term ${fmt(l.term)}` }));
  if (z.other.links) links.push({ label: `(${z.other.links} more links)`, value: z.other.share, cls: "rest" });
  links.push({ label: "(residual: stored − sum)", value: z.residual_share, cls: "rest" });
  const neurons = z.neurons.slice(0, 10).map((n) => ({ label: n.neuron, value: n.share,
    title: `term ${fmt(n.term)}` }));
  const parts = [{ label: "embedding (zero-layer)", value: m.embedding },
    ...m.layers.map((x) => ({ label: `${x.kind} layer ${x.layer}`, value: x.logit }))];
  box.replaceChildren(
    el("h3", {}, `why ${t.q.name} after ${t.p.name}`),
    el("p", { class: "muted" }, `zero-layer logit ${fmt(z.value)} (rank ${fmt(z.rank)} of ${t.particles}); `
      + `model logit ${fmt(m.logit)} (rank ${fmt(m.rank)}) · checkpoint ${data.model}`),
    barChart(`share of the zero-layer logit by link (${z.links_total} link${z.links_total === 1 ? "" : "s"}; `
      + `${z.rule})`, links),
    barChart("share by neuron", neurons),
    barChart("model logit by part (direct logit attribution, approximate)", parts, (x) => fmt(x, 3)));
}

// -- particle page -------------------------------------------------------------------------
async function showParticle(ref) {
  let d;
  try { d = await api("/api/particle?ref=" + encodeURIComponent(ref)); } catch (err) {
    show("particle", el("p", { class: "error" }, err.message));
    return;
  }
  if (d.ambiguous) {
    show("particle", el("h2", {}, `${d.ambiguous.length} particles match`),
      el("ul", {}, d.ambiguous.map((p) => el("li", {}, particleLink(p.particle, p.name)))));
    return;
  }
  const linkTable = (rows) => rows.length ? el("table", {},
    el("tr", {}, ["seq", "particle", "neuron", "amount", "origin", "cycle"].map((h) => el("th", {}, h))),
    rows.map((l) => el("tr", {}, el("td", { class: "num" }, l.seq), el("td", {}, particleLink(l.other, l.other_name)),
      el("td", {}, l.neuron), el("td", { class: "num" }, (l.valence < 0 ? "−" : "") + l.amount + " " + l.token),
      el("td", {}, l.origin), el("td", { class: "num" }, fmt(l.cycle)))))
    : el("p", { class: "muted" }, "none");
  const pending = d.proposals.length ? el("table", { id: "particle-proposals" },
    el("tr", {}, ["#", "source → target", "score", ""].map((h) => el("th", {}, h))),
    d.proposals.map((r) => el("tr", {}, el("td", { class: "num" }, r.id),
      el("td", {}, particleLink(r.src, r.src_name), " → ", particleLink(r.dst, r.dst_name)),
      el("td", { class: "num" }, fmt(r.score)),
      el("td", {}, el("button", { class: "accept", on: { click: () => decide({ accept: [r.id] }) } }, "accept"), " ",
        el("button", { class: "reject", on: { click: () => decide({ reject: [r.id] }) } }, "reject")))))
    : el("p", { class: "muted" }, "none");
  show("particle", el("div", { class: "cols" },
    el("section", { class: "panel" },
      el("h2", { id: "particle-name" }, d.name || "(unnamed)"),
      el("div", { class: "mono" }, d.particle),
      d.aliases.length ? el("p", {}, "aliases: ", d.aliases.join(", ")) : null,
      el("p", {}, `focus ${fmt(d.focus)}` + (d.focus_rank ? ` (rank ${d.focus_rank} of ${d.particles})` : "")
        + ` · ${d.out_degree} links out · ${d.in_degree} in`),
      el("h3", {}, "text"), el("p", { class: "text", id: "particle-text" }, d.text || "–"),
      el("h3", {}, "pending proposals"), pending),
    el("section", { class: "panel" },
      el("h3", {}, "links out"), linkTable(d.links.filter((l) => l.out)),
      el("h3", {}, "links in"), linkTable(d.links.filter((l) => !l.out)))));
}

// -- cycles --------------------------------------------------------------------------------
const METRICS = [["approximation_error", "approximation error (nats)"], ["proposals", "proposals"],
  ["accepted", "accepted"], ["eval_mrr", "eval MRR"], ["precision", "precision"],
  ["tuned_heldout_loss", "tuned held-out loss"], ["graph_mrr_after", "graph MRR after tuning"],
  ["wall_seconds", "wall seconds"]];

function lineChart(title, points) {
  const W = 320, H = 150, l = 44, r = 20, t = 12, b = 26;
  const ys = points.map((p) => p.y), xs = points.map((p) => p.x);
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const X = (x) => l + (x1 === x0 ? (W - l - r) / 2 : ((x - x0) / (x1 - x0)) * (W - l - r));
  const Y = (y) => t + (1 - (y - lo) / (hi - lo)) * (H - t - b);
  const chart = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": title },
  svg("line", { class: "axis", x1: l, x2: l, y1: t, y2: H - b }),
  svg("line", { class: "axis", x1: l, x2: W - r, y1: H - b, y2: H - b }),
  svg("text", { x: W - r, y: H - 2, "text-anchor": "end", class: "muted" }, "cycle"),
  svg("text", { x: l - 4, y: t + 8, "text-anchor": "end" }, fmt(hi, 3)),
  svg("text", { x: l - 4, y: H - b, "text-anchor": "end" }, fmt(lo, 3)),
  svg("polyline", { points: points.map((p) => `${X(p.x)},${Y(p.y)}`).join(" ") }));
  for (const p of points) {
    chart.append(svg("circle", { cx: X(p.x), cy: Y(p.y), r: 3.5 }, svg("title", {}, `cycle ${p.x}: ${fmt(p.y)}`)),
      svg("text", { x: X(p.x), y: H - b + 14, "text-anchor": "middle" }, String(p.x)));
  }
  return el("figure", { class: "panel" }, el("figcaption", {}, title), chart);
}

async function showCycles() {
  const d = await api("/api/cycles");
  if (!d.cycles.length) {
    show("cycles", el("p", { class: "muted" }, "no cycles recorded in this store yet (`graft cycle`)"));
    return;
  }
  const charts = METRICS.map(([key, title]) => {
    const points = d.cycles.filter((c) => typeof c[key] === "number").map((c) => ({ x: c.cycle, y: c[key] }));
    return points.length ? lineChart(title, points)
      : el("figure", { class: "panel" }, el("figcaption", {}, title), el("p", { class: "muted" }, "not run"));
  });
  const table = el("table", {}, el("tr", {}, ["cycle", ...METRICS.map((m) => m[1]), "steps"].map((h) => el("th", {}, h))),
    d.cycles.map((c) => el("tr", {}, el("td", { class: "num" }, c.cycle),
      METRICS.map(([key]) => el("td", { class: "num" }, fmt(c[key]))), el("td", {}, (c.steps || []).join(", ")))));
  show("cycles", el("h2", {}, `${d.cycles.length} cycles`),
    el("p", { class: "muted" }, d.model ? `why panel checkpoint: ${d.model}` : d.model_reason),
    el("div", { class: "charts", id: "cycle-charts" }, charts), el("h3", {}, "metrics"),
    el("div", { class: "panel" }, table));
}

// -- a new note ----------------------------------------------------------------------------
// Type or paste a note (or open a note of the vault with no links): the latest cycle's
// model and ranker propose its links; accepting one writes it into the note's file.
async function showNote() {
  const notes = await api("/api/notes").catch(() => ({ vaults: [], notes: [] }));
  const name = el("input", { id: "note-name", placeholder: "note name", size: 30 });
  const text = el("textarea", { id: "note-text", rows: 14, cols: 80,
    placeholder: "the note's text (Markdown)" });
  const open = el("select", { id: "note-open", "aria-label": "open a note without links" },
    el("option", { value: "" }, notes.notes.length ? "open a note without links…" : "no note without links"),
    notes.notes.map((n) => el("option", { value: n.source }, n.name)));
  open.addEventListener("change", async () => {
    if (!open.value) return;
    const d = await api("/api/note?source=" + encodeURIComponent(open.value));
    name.value = d.name;
    text.value = d.text;
  });
  const out = el("div", { id: "suggestions" });
  const run = el("button", { id: "suggest", class: "accept" }, "suggest links");
  run.addEventListener("click", () => suggestFor(name.value.trim(), text.value, out));
  const where = notes.vaults.length === 1 ? `accepted links are written into ${notes.vaults[0].root}`
    : "import a vault (graft import vault) to write accepted links into its notes";
  show("note", el("div", { class: "cols" },
    el("section", { class: "panel" }, el("h2", {}, "a new note"),
      el("div", { class: "bar" }, name, open), text, el("div", { class: "bar" }, run,
        el("span", { class: "muted" }, where))),
    el("section", { class: "panel" }, out)));
}

async function suggestFor(name, text, out) {
  if (!name) { say("give the note a name", "error"); return; }
  out.replaceChildren(el("p", { class: "muted" }, "scoring the note …"));
  let d;
  try { d = await api("/api/suggest", { name, text, top: 10 }); } catch (err) {
    out.replaceChildren(el("p", { class: "error" }, err.message));
    return;
  }
  out.replaceChildren(el("h2", {}, `${d.suggestions.length} proposed links (cycle ${d.cycle})`),
    el("p", { class: "muted" }, d.linked.length ? "links already: " + d.linked.join(", ")
      : "no links yet"),
    el("ol", { id: "suggestion-list" }, d.suggestions.map((s) => el("li", { class: "suggestion" },
      el("div", { class: "bar" }, el("strong", {}, s.name), el("span", { class: "muted" },
        `confidence ${pct(s.confidence)}`),
      el("button", { class: "accept", on: { click: () => acceptFor(name, s, out) } }, "accept")),
      s.lines.length ? el("ul", { class: "evidence" }, s.lines.map((line) =>
        el("li", {}, highlight(line, [], [s.name])))) : null,
      (s.neighbours || []).length ? el("p", { class: "muted" }, "linked from notes like this one: "
        + s.neighbours.slice(0, 3).map((n) => n.name || n.particle).join(", ")) : null,
      barChart("the ranker's score by feature (largest parts)", Object.entries(s.contributions)
        .filter(([, v]) => v !== 0).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 5)
        .map(([f, v]) => ({ label: f, value: v })), fmt)))));
}

async function acceptFor(name, s, out) {
  const text = $("note-text").value;
  try {
    const r = await api("/api/note/accept", { name, text, dst: s.dst, score: s.score,
      confidence: s.confidence, reviewer: $("reviewer").value.trim() || "curator" });
    $("note-text").value = r.text;
    say(r.written.length ? `wrote [[${s.name}]] into ${r.source} (${r.written.join(", ")})`
      : `accepted ${s.name}; ${r.skipped.join("; ") || "nothing written"}`, r.written.length ? "ok" : "error");
    await suggestFor(name, r.text, out);
  } catch (err) {
    say("not accepted: " + err.message, "error");
  }
}

// -- routing and keys ----------------------------------------------------------------------
async function route() {
  const [, page, arg] = (location.hash || "#/queue").match(/^#\/([^/]*)\/?(.*)$/) || [];
  try {
    if (page === "particle") await showParticle(decodeURIComponent(arg));
    else if (page === "cycles") await showCycles();
    else if (page === "note") await showNote();
    else await showQueue();
  } catch (err) {
    say(err.message, "error");
  }
}

document.addEventListener("keydown", (e) => {
  if (state.page !== "queue" || e.ctrlKey || e.metaKey || e.altKey
      || e.target.closest("input, textarea, select")) return;
  const r = state.rows[state.sel];
  const keys = { j: () => select(state.sel + 1), k: () => select(state.sel - 1),
    a: () => r && decide({ accept: [r.id] }), r: () => r && decide({ reject: [r.id] }),
    y: () => r && showWhy(r, $("why")),
    s: () => { if (r) location.hash = "#/particle/" + encodeURIComponent(r.src); },
    t: () => { if (r) location.hash = "#/particle/" + encodeURIComponent(r.dst); } };
  if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
});

document.addEventListener("DOMContentLoaded", () => {
  $("reviewer").value = localStorage.getItem("graft-reviewer") || "curator";
  $("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("search-box").value.trim();
    if (q) location.hash = "#/particle/" + encodeURIComponent(q);
  });
  window.addEventListener("hashchange", route);
  route();
});
