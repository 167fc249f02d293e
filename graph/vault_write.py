"""Write accepted links back into the vault they came from (`graft vault apply`).

An accepted proposal p → q whose source p is a note of the vault becomes a link in that note,
the way Obsidian's "unlinked mentions" pane or Wikimedia's Add-a-Link place one: at the first
mention of q's name or an alias that is not already markup, in the vault's own syntax —
Obsidian `[[Target]]`, or `[[Target|the words as written]]` where they differ; Logseq
`[[the words]]` when they name the page or an alias, else `[the words]([[Target]])`. A note
that never mentions q is left alone and the link listed, unless `related` names a section:
then the link is appended there (an Obsidian `## heading`, a Logseq top-level block).

Nothing else in a file changes, byte for byte: front matter and page properties, code blocks
and code spans, existing links, embeds, tags, URLs, comments, block ids and headings are never
linked into, and line endings stay as they were. A note that already links q is not touched,
so applying twice changes nothing.

Each note's SHA-256 is kept when it is imported (`record_notes`) and when graft writes it; a
note whose bytes are neither — the curator edited it since — is skipped with a message unless
`force`. A re-import compares with the imported bytes only, so the links graft wrote come back
as the vault's own (`reimport_rows`). Each file is replaced atomically (a temporary file
beside it, fsynced, renamed), so a killed process leaves every note either as it was or as
written.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from graph import sql_vault
from graph.errors import GraftError
from graph.store import Store
from graph.vault import _INLINE, _PROP, FLAVORS, normalise_name

FAULT_ENV = "GRAFT_FAULT"            # "vault:N": SIGKILL right after the N-th note is replaced
_FENCE = re.compile(r"^\s*(?:[-*+]\s+)?(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")
_BULLET = re.compile(r"^\s*[-*+]\s+")
_URL = re.compile(r"<[^>\n]*>|\b[A-Za-z][\w+.-]*://\S+")
_TARGET = re.compile(r"!?\[\[([^\[\]\n|#^]*)[^\[\]\n]*\]\]|\]\(\[\[([^\[\]\n]*)\]\]\)"
                     r"|(?<!\S)#([\w/-]+)")


@dataclass
class NoteResult:
    """What apply did (or, dry, would do) to one note."""

    source: str
    written: list[tuple[int, str]] = field(default_factory=list)   # (proposal, mention|related)
    listed: list[tuple[int, str]] = field(default_factory=list)    # (proposal, target): unmentioned
    already: list[int] = field(default_factory=list)               # proposals the note links
    skipped: str = ""                                              # why the note was not read
    diff: str = ""
    new: bytes = field(default=b"", repr=False)                    # its bytes, when changed


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_notes(store: Store, root: Path, flavor: str, particles: list[dict]) -> int:
    """Keep the SHA-256 of each page file of an imported vault (particles with a `source`)."""
    root = Path(root).resolve()
    rows = [(p["source"], p["particle"]) for p in particles if p.get("source")]
    with store.transaction():
        for source, particle in rows:
            path = root / source
            if path.is_file():
                store.execute(sql_vault.NOTE_IMPORTED, {"root": str(root), "flavor": flavor,
                                                        "source": source,
                                                        "particle": particle,
                                                        "sha256": sha256(path.read_bytes())})
    return len(rows)


def reimport_rows(store: Store, root: Path, vault, neuron: str, at: int | None = None
                  ) -> tuple[list[dict], list[dict], dict] | None:
    """What a re-import of `vault` (graph.vault.read_vault of `root`) adds: (link rows,
    particle rows, counts), or None when no note of `root` was recorded (a first import).

    Only notes whose bytes changed since the last import or write, new notes, and notes
    deleted since are looked at. A link such a note no longer makes — or makes with another
    count — is withdrawn by a row of valence -1 from the same neuron (the compiler's rule:
    graph/sql.py WITHDRAWN), and the note's new links are added; particles of changed and
    new notes are rewritten, and targets new to the store added. `at`: the withdrawals'
    time (default now)."""
    import time

    import pyarrow as pa

    from graph import sql
    root = Path(root).resolve()
    recorded = {s: (p, h) for s, p, h, _ in store.query(sql_vault.NOTES_OF, {"root": str(root)})}
    if not recorded:
        return None
    pages = {p["source"]: p for p in vault.particles if p.get("source")}
    changed = {page["particle"] for source, page in pages.items()
               if recorded.get(source, ("", ""))[1] != sha256((root / source).read_bytes())}
    gone = {p for s, (p, _) in recorded.items() if s not in pages} - \
        {page["particle"] for page in pages.values()}
    def ask(particles: set[str], query: str, params: dict | None = None) -> list[tuple]:
        store.register("id_view", pa.table({"particle": pa.array(sorted(particles), pa.string())}))
        try:
            return store.query(query, params)
        finally:
            store.unregister("id_view")

    held = {(s, d, t): int(a) for s, d, t, a in ask(changed | gone, sql.LINKS_NOW_FROM, {
        "max_seq": store.scalar(sql.MAX_SEQ), "neuron": neuron})}
    known = {p for (p,) in ask({p["particle"] for p in vault.particles}, sql.KNOWN_PARTICLES)}
    new = {(r["from"], r["to"], r["token"]): r for r in vault.links if r["from"] in changed}
    when = int(time.time()) if at is None else at
    withdrawn = [key for key in held if key not in new or new[key]["amount"] != held[key]]
    added = [row for key, row in new.items() if held.get(key) != row["amount"]]
    rows = [{"neuron": neuron, "from": s, "to": d, "token": t, "amount": 0, "valence": -1,
             "time": when} for s, d, t in withdrawn] + added
    particles = [p for p in vault.particles
                 if p["particle"] in changed or p["particle"] not in known]
    return rows, particles, {"changed_notes": len(changed), "deleted_notes": len(gone),
                             "withdrawn": len(withdrawn), "added": len(added)}


def apply_vault(store: Store, root: Path, flavor: str, *, dry_run: bool = False,
                related: str | None = None, force: bool = False,
                only: set[str] | None = None,
                say: Callable[[str], None] = lambda _: None) -> list[NoteResult]:
    """Write every accepted, staked proposal whose source is a note of the vault at `root`
    (of the notes `only`, by path, when given) into that note (module docstring); returns
    one NoteResult per note with such a link."""
    if flavor not in FLAVORS:
        raise GraftError(f"vault flavor {flavor!r} is not one of {FLAVORS}")
    root = Path(root).resolve()
    if not root.is_dir():
        raise GraftError(f"{root}: not a folder; expected the {flavor} vault graft imported")
    notes = {s: (p, {h, w} - {None}) for s, p, h, w in store.query(sql_vault.NOTES_OF,
                                                                    {"root": str(root)})}
    if not notes:
        raise GraftError(f"{root}: no note of this vault is in the store; import it first "
                         f"(graft import vault {root} --flavor {flavor})")
    by_note: dict[str, list[tuple]] = {}
    for row in store.query(sql_vault.ACCEPTED_FOR, {"root": str(root)}):
        by_note.setdefault(row[1], []).append(row)
    results, done = [], 0
    for source, links in by_note.items():
        if only is not None and source not in only:
            continue
        result = _apply_note(root / source, source, links, notes[source][1], flavor, related,
                             force)
        results.append(result)
        if result.skipped:
            say(f"{source}: skipped — {result.skipped}")
        if result.diff and not dry_run:
            new = result.new
            atomic_write(root / source, new)
            with store.transaction():
                store.execute(sql_vault.NOTE_WRITTEN, {"root": str(root), "source": source,
                                                       "sha256": sha256(new)})
                for proposal, how in result.written:
                    store.execute(sql_vault.WRITE_RECORD, {"proposal": proposal,
                                                           "root": str(root), "source": source,
                                                           "how": how})
            done += 1
            if os.environ.get(FAULT_ENV) == f"vault:{done}":
                os.kill(os.getpid(), signal.SIGKILL)
    return results


def _apply_note(path: Path, source: str, links: list[tuple], recorded: set[str], flavor: str,
                related: str | None, force: bool) -> NoteResult:
    result = NoteResult(source)
    if not path.is_file():
        result.skipped = "the file is gone"
        return result
    data = path.read_bytes()
    if sha256(data) not in recorded and not force:      # neither as imported nor as written
        result.skipped = ("changed since graft last read it: re-import the vault first "
                          "(graft import vault), or --force")
        return result
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        result.skipped = f"not UTF-8 (byte {exc.start})"
        return result
    new = text
    for proposal, _, _, name, aliases, title, target_source in links:
        names = {n for n in [name, *aliases] if n}
        if names & linked_targets(new, flavor):
            result.already.append(proposal)
            continue
        target = _link_name(flavor, name, title, target_source)
        found = first_mention(new, flavor, sorted(names, key=len, reverse=True))
        if found:
            start, end = found
            words = new[start:end]
            new = new[:start] + link_markup(flavor, words, target, names) + new[end:]
            result.written.append((proposal, "mention"))
        elif related:
            new = add_related(new, flavor, related, target)
            result.written.append((proposal, "related"))
        else:
            result.listed.append((proposal, target))
    if new != text:
        result.diff = "".join(difflib.unified_diff(
            text.splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=f"a/{source}", tofile=f"b/{source}"))
        result.new = new.encode("utf-8")
    return result


def _link_name(flavor: str, name: str, title: str | None, source: str | None) -> str:
    """What the vault links the target by: Obsidian its file's stem, Logseq its title; the
    name as written for a page with no file."""
    if flavor == "obsidian" and source:
        return Path(source).stem
    return title or name


def link_markup(flavor: str, words: str, target: str, names: set[str]) -> str:
    """The link to `target` shown as `words`, in the vault's syntax."""
    if flavor == "obsidian":
        return f"[[{words}]]" if words == target else f"[[{target}|{words}]]"
    if words == target or normalise_name(words) in names:
        return f"[[{words}]]"                        # Logseq resolves names and aliases
    return f"[{words}]([[{target}]])"


def linked_targets(text: str, flavor: str) -> set[str]:
    """The normalised names the note links already (wikilinks, embeds, [l]([[t]]), tags;
    Obsidian's [[dir/note]] by its last part)."""
    out = set()
    for m in _TARGET.finditer(text):
        t = m[1] if m[1] is not None else m[2] if m[2] is not None else m[3]
        t = t.split("|")[0].split("#")[0]
        if flavor == "obsidian":
            t = t.rsplit("/", 1)[-1]
            t = t[:-3] if t.lower().endswith(".md") else t
        out.add(normalise_name(t))
    return out


def protected(text: str, flavor: str) -> list[tuple[int, int]]:
    """Character spans of `text` no link may be written into: front matter and leading page
    properties, fenced code, property lines, headings, and inline markup (code, links,
    embeds, tags, macros, block refs, comments, block ids) and URLs."""
    spans: list[tuple[int, int]] = []
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    i = 0
    if lines and lines[0].strip() == "---":            # YAML front matter
        for j in range(1, len(lines)):
            if lines[j].strip() == "---":
                spans.append((0, offsets[j + 1]))
                i = j + 1
                break
    fence = None
    for j in range(i, len(lines)):
        line, start = lines[j], offsets[j]
        bare = line.rstrip("\r\n")
        if fence:
            spans.append((start, offsets[j + 1]))
            if _BULLET.sub("", bare).strip().startswith(fence):
                fence = None
            continue
        opened = _FENCE.match(bare)
        if opened:
            fence = opened[1]
            spans.append((start, offsets[j + 1]))
            if bare.count(fence) >= 2:                 # ```one line```
                fence = None
            continue
        content = _BULLET.sub("", bare)
        if _HEADING.match(bare) or _PROP.fullmatch(content.strip()) or \
                (flavor == "obsidian" and content.strip().startswith("%%")):
            spans.append((start, offsets[j + 1]))
            continue
        for pattern in (_INLINE[flavor], _URL):
            spans += [(start + m.start(), start + m.end()) for m in pattern.finditer(bare)]
    return spans


def first_mention(text: str, flavor: str, names: list[str]) -> tuple[int, int] | None:
    """(start, end) of the first occurrence of one of `names` (case-insensitive, whole words,
    any run of spaces between words) outside protected spans; the longest name at a tie."""
    spans = protected(text, flavor)
    best = None
    for name in names:
        words = name.split()
        if not words:
            continue
        pattern = re.compile(r"(?<!\w)" + r"[ \t]+".join(map(re.escape, words)) + r"(?!\w)",
                             re.IGNORECASE)
        for m in pattern.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in spans):
                continue
            if best is None or m.start() < best[0] or \
                    (m.start() == best[0] and m.end() > best[1]):
                best = (m.start(), m.end())
            break
    return best


def add_related(text: str, flavor: str, section: str, target: str) -> str:
    """`text` with a link to `target` appended under the section `section` (made at the end
    when the note has none): an Obsidian `## section` heading with `- [[target]]` items, or a
    Logseq top-level block `- section` with child blocks."""
    nl = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    item = f"- [[{target}]]" if flavor == "obsidian" else f"\t- [[{target}]]"
    if flavor == "obsidian":
        head = re.compile(r"^\s{0,3}(#{1,6})\s+" + re.escape(section) + r"\s*#*\s*$")
        at = next((j for j, line in enumerate(lines) if head.match(line.rstrip("\r\n"))), None)
        if at is not None:
            level = len(head.match(lines[at].rstrip("\r\n"))[1])
            end = next((j for j in range(at + 1, len(lines)) if re.match(
                r"^\s{0,3}#{1,%d}\s" % level, lines[j])), len(lines))
            return _insert_after_content(lines, at, end, item, nl)
        block = f"## {section}{nl}{item}{nl}"
    else:
        head = re.compile(r"^[-*+]\s+" + re.escape(section) + r"\s*$")
        at = next((j for j, line in enumerate(lines) if head.match(line.rstrip("\r\n"))), None)
        if at is not None:
            end = next((j for j in range(at + 1, len(lines))
                        if lines[j].strip() and not lines[j][0].isspace()), len(lines))
            return _insert_after_content(lines, at, end, item, nl)
        block = f"- {section}{nl}{item}{nl}"
    if text and not text.endswith(("\n", "\r")):
        text += nl
    sep = nl if flavor == "obsidian" and text.strip() else ""
    return text + sep + block


def _insert_after_content(lines: list[str], at: int, end: int, item: str, nl: str) -> str:
    """Insert `item` after the last non-blank line of lines[at:end]."""
    last = max(j for j in range(at, end) if lines[j].strip())
    if not lines[last].endswith(("\n", "\r")):
        lines[last] += nl
    lines.insert(last + 1, item + nl)
    return "".join(lines)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace (or create) `path` with `data`: a temporary file in the same folder, fsynced,
    renamed over it (the file's permission bits kept)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            mode = path.stat().st_mode & 0o7777
        else:                                   # a new file: what open() would give it
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
