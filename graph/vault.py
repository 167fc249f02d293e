"""Read a Logseq or Obsidian vault into particles and cyberlinks (pure; the store writes them).

Rules follow data/cyberwiki/README.md; (*) marks a choice made where it is silent.

Pages: Logseq `pages/**/*.md` (+ `journals/` with journals=True, named by file name*), named
by `title::`, else by file name in `:triple-lowbar` format (`a___b.md` → `a/b`, `%XX` decoded);
Obsidian: every `*.md` outside dot-folders*, named by file stem as Obsidian links, front-matter
`title` setting only the display title*. Names go through `normalise_name`; files with one name
merge in path order* (text appended; first title, source, props win; earliest time).

Properties: Logseq's leading `key:: value` lines (and property-only blocks right after them);
YAML front matter in Obsidian, and in Logseq pages that start with one (BaseLoader: strings*).
`alias::`/`aliases`, `tags::`/`tags` are lists (`a, [[b, c]]` keeps the bracketed comma;
Obsidian tag strings split on spaces too*). Other keys but system ones (`icon`, `collapsed`,
`id`, `query-*`, `cssclasses`, …) go to `props` as strings (YAML lists joined by ", ", maps as
JSON*), link markup replaced by labels.

Text: one line per non-empty source line* (Logseq continuation lines, e.g. table rows, stay
apart), whitespace collapsed, without bullets, heading marks, rules or checkboxes*. Links,
embeds and tags show their label: the `|label`, else the target as written (`[[n#h]]` shows
`n`*). Dropped: images, attachment embeds*, macros but `{{embed}}`, `#+BEGIN_QUERY` blocks,
drawers, system block properties, `%%comments%%` and `^block-ids`*. Kept: code (verbatim;
fence lines dropped*, no links inside), tables, URLs, `TODO`. Other block properties become
`key: value` lines. `((uuid))` shows the text of the block with that `id::` (nothing if
unknown*).

Links: `[[t]]`, `[[t|l]]`, `#[[t]]`, `#tag`, `#a/b`, `[l]([[t]])`, `{{embed [[t]]}}`, `![[t]]`,
markup in other property values and, in Obsidian*, `[l](note.md)`, `[[dir/note]]` (→ `note`)
and `![[note#^id]]` (→ `note`) are `link` occurrences; tags are `tag` links of amount 1.
Obsidian `#2024` and `[[x.pdf]]` are text*. Targets resolve through aliases, claimed in
page-name order (first claim wins); an alias naming another page folds that page into its owner
if empty (no text, links, tags, aliases or props), else the alias is dropped. Self-links drop;
one row per (from, to, token) counts occurrences. Unknown targets become dangling particles
(text "", title = name, source None). Namespace parents are not linked.
Not supported: `.org` files, nested `[[a [[b]]]]`, legacy `.`-for-`/` file names, Obsidian
block embeds shown as the block's text.
"""
from __future__ import annotations

import json
import re
import unicodedata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from graph import ids
from graph.errors import GraftError, IngestError, Problem, shorten

FLAVORS = ("logseq", "obsidian")
# Properties the apps keep for themselves: neither props nor text.
_SYSTEM = {
    "logseq": frozenset({
        "title", "alias", "tags", "icon", "public", "filters", "collapsed", "id", "template",
        "template-including-parent", "exclude-from-graph-view", "heading", "background-color",
        "created-at", "updated-at", "ls-type", "file", "file-path"}),
    "obsidian": frozenset({"cssclasses", "cssclass"}),
}
_SYSTEM_PREFIXES = ("query-", "card-", "hl-", "logseq.")
# Obsidian links to these open a file, not a note: text, not a reference.
_ATTACHMENTS = frozenset("png jpg jpeg gif bmp svg webp avif pdf mp3 wav m4a ogg flac mp4 webm "
                         "mov mkv canvas excalidraw base".split())

_CODE = r"(?P<code>`[^`\n]+`)"
_COMMON = (
    r"|(?P<image>!\[[^\]\n]*\]\([^)\n]*\))"
    r"|(?P<embed>!\[\[(?P<embed_t>[^\[\]\n]*)\]\])"
    r"|(?P<md>\[(?P<md_label>[^\[\]\n]*)\]"
    r"\((?:\[\[(?P<md_wiki>[^\[\]\n]*)\]\]|(?P<md_url>[^()\n]*))\))"
    r"|(?P<tagwiki>\#\[\[(?P<tagwiki_t>[^\[\]\n]*)\]\])"
    r"|(?P<wiki>\[\[(?P<wiki_t>[^\[\]\n]*)\]\])")
# Logseq ends a tag at whitespace or brackets and drops trailing `.`/`:` (sentence punctuation);
# Obsidian tags are letters, digits, `_`, `-` and `/` only.
_INLINE = {
    "logseq": re.compile(
        _CODE + r"|(?P<macro>\{\{(?P<macro_body>.*?)\}\})"
        r"|(?P<blockref>\(\((?P<uuid>[0-9a-fA-F-]{36})\)\))" + _COMMON
        + r"|(?<!\S)\#(?P<tag>[^\s,;!?\"'()\[\]{}#]+)"),
    "obsidian": re.compile(
        _CODE + r"|(?P<comment>%%.*?%%)|(?P<blockid>\s+\^[A-Za-z0-9-]+\s*$)" + _COMMON
        + r"|(?<!\S)\#(?P<tag>[\w/-]+)"),
}
# Lines that open a multi-line span (named by the group; its lines are dropped, a fence's kept
# as code), or that are dropped alone: org block markers and horizontal rules.
_OPEN = {
    "logseq": re.compile(r"(?P<fence>```)|(?P<drawer>:(?!END:)[A-Z_]+:$)"  # :LOGBOOK: etc.
                         r"|(?P<query>(?i:\#\+BEGIN_QUERY))|(?P<alone>(?i:\#\+(?:BEGIN|END)_)"
                         r"|(?:[-*_]\s*){3,}$)"),
    "obsidian": re.compile(r"(?P<fence>```)|(?P<comment>%%(?!.*%%))|(?P<alone>(?:[-*_]\s*){3,}$)"),
}
_CLOSE = {"fence": re.compile("```"), "drawer": re.compile(":END:$"), "comment": re.compile(".*%%"),
          "query": re.compile(r"(?i)\#\+END_QUERY")}
_PROP = re.compile(r"(?P<key>\w[\w.\-?!*+/]*)::(?:\s(?P<value>.*))?")
_BULLET = re.compile(r"^[-*+](?:\s+|$)")
_HEADING = re.compile(r"^#{1,6}\s+")
_CHECKBOX = re.compile(r"^\[[ xX]\]\s+")
_COMMA = re.compile(r",(?![^\[]*\]\])")  # a comma not inside [[...]]
_SCHEME = re.compile(r"^[A-Za-z][\w+.-]*:")
_BLOCK_MARK = "\x00{}\x00"  # stands for a Logseq block's text until every page is read
_BLOCK_MARK_RE = re.compile("\x00([^\x00]*)\x00")


@dataclass(frozen=True)
class Vault:
    """A vault as graph rows: particles sorted by name, links sorted by (from, to, token)."""

    particles: list[dict]  # particle, name, aliases, text, title, source, props
    links: list[dict]  # neuron, from, to, token, amount, valence, time


@dataclass
class _Page:
    """One page file after parsing, before names are resolved."""

    source: str
    title: str
    mtime: int
    name: str = ""
    aliases: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    props: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)  # link targets as written, one per occurrence

    def is_empty(self) -> bool:
        """True when folding the page into an alias owner loses nothing."""
        return not (self.lines or self.refs or self.tags or self.aliases or self.props)

    def absorb(self, other: _Page) -> None:
        """Merge a later file with the same name: its text follows ours, our props win."""
        for attr in ("lines", "refs", "tags", "aliases"):
            getattr(self, attr).extend(getattr(other, attr))
        self.props |= {k: v for k, v in other.props.items() if k not in self.props}
        self.mtime = min(self.mtime, other.mtime)


def normalise_name(s: str) -> str:
    """The name a wikilink resolves by: NFC, nbsp → space, collapsed whitespace, lowercase.

    Args:
        s: a page name, title, alias or link target as written.

    Returns:
        The normalised name; its UTF-8 bytes are hashed into the particle id.
    """
    # str.split() splits on every Unicode space, nbsp included.
    return " ".join(unicodedata.normalize("NFC", s).replace("\u00a0", " ").split()).lower()


def _clean(line: str, flavor: str, refs: list[str]) -> str:
    """Visible text of one line of markup, whitespace collapsed; its references go to `refs`."""
    return " ".join(_INLINE[flavor].sub(lambda m: _label(m, flavor, refs), line).split())


def _ref(target: str, refs: list[str], label: str = "") -> str:
    """Record a reference to `target` (when there is one); return what the reader sees."""
    if target.strip():
        refs.append(target.strip())
    return label or target


def _label(m: re.Match, flavor: str, refs: list[str]) -> str:
    """What the reader sees in place of one markup match."""
    g = m.groupdict()
    if g["code"]:
        return g["code"]
    if g.get("macro"):
        head, _, arg = g["macro_body"].strip().partition(" ")
        return _clean(arg, flavor, refs) if head.lower() == "embed" else ""
    if g.get("blockref"):
        return _BLOCK_MARK.format(g["uuid"].lower())
    if g["image"] or g.get("comment") or g.get("blockid"):
        return ""
    if g["md"]:
        target = g["md_wiki"] if g["md_wiki"] is not None else _md_target(g["md_url"], flavor)
        return _ref(target, refs, g["md_label"])
    if g["wiki"] or g["embed"]:
        return _wikilink(g["wiki_t"] if g["wiki"] else g["embed_t"], flavor, refs, bool(g["embed"]))
    if g["tagwiki"]:
        return _ref(g["tagwiki_t"], refs)
    name = g["tag"].rstrip(".:") if flavor == "logseq" else g["tag"]
    if not name or name.isdigit() and flavor == "obsidian":  # Obsidian: `#2024` is no tag
        return m[0]
    return _ref(name, refs) + g["tag"][len(name):]


def _wikilink(inner: str, flavor: str, refs: list[str], embed: bool) -> str:
    """Label of `[[inner]]` (or `![[inner]]`), recording the page it names."""
    # Inside a table row Obsidian writes the label's pipe escaped: `[[note\|label]]`.
    target, _, label = inner.replace("\\|", "|").partition("|")
    if flavor == "logseq":
        return _ref(target, refs, label)
    target, _, heading = target.strip().partition("#")
    stem, dot, ext = target.rpartition(".")
    if dot and ext.lower() in _ATTACHMENTS:
        return "" if embed else label or target
    target = stem if dot and ext.lower() == "md" else target
    if not target:  # `[[#heading]]` points inside this page; a `#^block-id` shows nothing
        return label or ("" if heading.startswith("^") else heading)
    _ref(target.rsplit("/", 1)[-1], refs)  # Obsidian names a note by its file name
    return label or target


def _md_target(url: str, flavor: str) -> str:
    """The note an Obsidian `[label](url)` opens: a relative `.md` or extensionless path."""
    url = urllib.parse.unquote(url.strip().strip("<>").partition("#")[0])
    if flavor != "obsidian" or _SCHEME.match(url):
        return ""
    stem, dot, ext = url.rsplit("/", 1)[-1].rpartition(".")
    return (stem if ext.lower() == "md" else "") if dot else ext


def _split_refs(value: str, flavor: str) -> list[str]:
    """Names in a property list: `a, [[b, c]], #d` → ["a", "b, c", "d"]."""
    names: list[str] = []
    for item in _COMMA.split(value):
        found: list[str] = []
        _clean(item.strip(), flavor, found)
        names += found if found else [item.strip()] if item.strip() else []
    return names


def _is_system(key: str, flavor: str) -> bool:
    return key in _SYSTEM[flavor] or flavor == "logseq" and key.startswith(_SYSTEM_PREFIXES)


def _body(lines: list[str], flavor: str, page: _Page) -> dict[str, str]:
    """Append the visible lines of a page body to `page.lines` and its references to `page.refs`.

    Returns:
        Logseq block texts by the uuid of their `id::` property, for `((uuid))` references.
    """
    blocks: dict[str, str] = {}
    block_ids: list[str] = []
    block: list[str] = []  # the current Logseq block's own lines, properties left out
    mode = ""  # the span we are inside: fence, drawer, query or comment
    for raw in lines:
        s = raw.strip()
        if mode:
            if _CLOSE[mode].match(s):
                mode = ""
            elif mode == "fence" and s:  # code is kept verbatim: no bullets, no links
                page.lines.append(s)
            continue
        if bullet := _BULLET.match(s):
            s = s[bullet.end():]
            if flavor == "logseq":  # a bullet starts a new Logseq block
                blocks.update(dict.fromkeys(block_ids, " ".join(block)))
                block_ids, block = [], []
        if opened := _OPEN[flavor].match(s):
            mode = "" if opened.lastgroup == "alone" else opened.lastgroup
            continue
        if prop := _PROP.fullmatch(s) if flavor == "logseq" else None:
            key, value = prop["key"].lower(), prop["value"] or ""
            block_ids += [value.strip().lower()] if key == "id" else []
            if _is_system(key, flavor):
                continue
            s = f"{key}: {value}"
        if text := _clean(_HEADING.sub("", _CHECKBOX.sub("", s)), flavor, page.refs):
            page.lines.append(text)
            block += [] if prop else [text]
    blocks.update(dict.fromkeys(block_ids, " ".join(block)))
    return blocks


def _read_lines(path: Path, problems: list[Problem]) -> list[str] | None:
    """The lines of a UTF-8 page file, or None after recording why it cannot be read."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        problems.append(Problem(str(path), 0, "", shorten(exc.strerror or str(exc)),
                                "a readable file"))
        return None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(str(path), line, "", shorten(data[exc.start: exc.start + 4]),
                                "UTF-8 text"))
        return None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _md_files(root: Path, folders: list[str]) -> list[Path]:
    """Markdown files under `root/folder` for each folder, skipping dot-folders, in path order."""
    found = [path for folder in folders if (root / folder).is_dir()
             for path in (root / folder).rglob("*.md")
             if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts)]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _leading_props(lines: list[str], file: str, problems: list[Problem]) -> tuple[dict, int]:
    """Logseq's page properties (the leading `key:: value` lines), and the first body line.

    Takes `_front_matter`'s arguments so the two are interchangeable; nothing here can fail.
    """
    props: dict[str, str] = {}
    end = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    # Property-only blocks right after (`- key:: value`) count too, as in the cyberwiki export.
    while end < len(lines) and (prop := _PROP.fullmatch(_BULLET.sub("", lines[end].strip()))):
        props[prop["key"]] = prop["value"] or ""
        end += 1
    return props, end


def _front_matter(lines: list[str], file: str, problems: list[Problem]) -> tuple[dict, int]:
    """Obsidian's YAML front matter as a mapping, and the index of the first body line."""
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in ("---", "...")), None)
    if not lines or lines[0].strip() != "---" or end is None:  # unclosed: Obsidian shows text
        return {}, 0
    try:
        meta = yaml.load("\n".join(lines[1:end]), Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1  # +1 for the fence, +1 for 1-based
        problems.append(Problem(file, line, "front matter", shorten(lines[line - 1]),
                                f"valid YAML ({getattr(exc, 'problem', None) or exc})"))
        return {}, end + 1
    if meta is not None and not isinstance(meta, dict):
        problems.append(Problem(file, 2, "front matter", shorten(meta), "a YAML mapping"))
        return {}, end + 1
    return meta or {}, end + 1


def _names(value: object, tags: bool, flavor: str, file: str, problems: list[Problem]) -> list[str]:
    """Alias or tag names from a property value: a string list, or a YAML list of strings."""
    names: list[str] = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, str):
            problems.append(Problem(file, 0, "tags" if tags else "aliases", shorten(item),
                                    "a string or a list of strings"))
            continue
        # Obsidian tags never hold spaces, so `tags: a b` is two tags.
        for part in item.split() if tags and flavor == "obsidian" else [item]:
            names += _split_refs(part.lstrip("#") if tags else part, flavor)
    return names


def _prop_text(value: object, flavor: str, refs: list[str]) -> str:
    """A property value as a props string, link markup replaced by labels."""
    if isinstance(value, list):
        return ", ".join(_prop_text(item, flavor, refs) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return _clean(str(value), flavor, refs)


def _read_page(path: Path, root: Path, lines: list[str], flavor: str, time: int | None,
               problems: list[Problem]) -> tuple[_Page, dict[str, str]]:
    """One page: its properties, then its body; also its Logseq block texts by uuid."""
    stem = urllib.parse.unquote(path.stem.replace("___", "/")) if flavor == "logseq" else path.stem
    page = _Page(source=path.relative_to(root).as_posix(), title=stem,
                 mtime=time if time is not None else int(path.stat().st_mtime))
    # Logseq also reads YAML front matter when a page starts with one.
    yaml_first = flavor == "obsidian" or lines[0].strip() == "---"
    props, start = (_front_matter if yaml_first else _leading_props)(lines, str(path), problems)
    for key, value in props.items():
        key = str(key).lower()
        if key in ("alias", "aliases", "tags", "tag"):
            tags = key.startswith("tag")
            names = _names(value, tags, flavor, str(path), problems)
            (page.tags if tags else page.aliases).extend(names)
        elif key == "title" and isinstance(value, str) and value.strip():
            page.title = value.strip()
        elif not _is_system(key, flavor):
            page.props[key] = _prop_text(value, flavor, page.refs)
    # Logseq links by title; Obsidian by file name, whatever the title says.
    page.name = normalise_name(page.title if flavor == "logseq" else stem)
    return page, _body(lines[start:], flavor, page)


def _claim_aliases(by_name: dict[str, _Page]) -> dict[str, str]:
    """Map alias → owner name; fold empty pages named by an alias into their owner (in place)."""
    owner: dict[str, str] = {}
    for name in sorted(by_name):  # the first page in name order keeps a contested alias
        for alias in map(normalise_name, by_name[name].aliases):
            if alias and alias != name:
                owner.setdefault(alias, name)
    for alias in list(owner):
        page = by_name.get(alias)
        if page is not None and page.is_empty():
            del by_name[alias]
        elif page is not None:  # a page with content keeps its own name
            del owner[alias]
    return owner


def _expand(text: str, blocks: dict[str, str], seen: frozenset[str] = frozenset()) -> str:
    """Replace block marks by the blocks' text; an unknown uuid or a cycle gives nothing."""
    if "\x00" not in text:
        return text
    found = _BLOCK_MARK_RE.sub(lambda m: "" if m[1] in seen else _expand(
        blocks.get(m[1], ""), blocks, seen | {m[1]}), text)
    return " ".join(found.split())


def _assemble(pages: list[_Page], blocks: dict[str, str], neuron: str, hash_name: str) -> Vault:
    """Resolve names, count references, and lay out particles and links in their fixed order."""
    by_name: dict[str, _Page] = {}
    for page in pages:  # pages arrive in path order, so a merge keeps the first file's title
        kept = by_name.setdefault(page.name, page)
        if kept is not page:
            kept.absorb(page)
    owner = _claim_aliases(by_name)
    counts: dict[tuple[str, str, str], int] = {}
    for name, page in by_name.items():
        for token, targets in (("link", page.refs), ("tag", page.tags)):
            for target in targets:
                to = owner.get(normalise_name(target), normalise_name(target))
                if to and to != name:  # a page linking itself says nothing
                    key = (name, to, token)
                    counts[key] = 1 if token == "tag" else counts.get(key, 0) + 1
    names = set(by_name) | {to for _, to, _ in counts}
    pid = {name: ids.particle_of_text(name, hash_name) for name in names}
    aliases: dict[str, list[str]] = {}
    for alias, name in sorted(owner.items()):
        aliases.setdefault(name, []).append(alias)
    particles = []
    for name in sorted(names):
        page = by_name.get(name)
        lines = [_expand(line, blocks) for line in page.lines] if page else []
        particles.append({
            "particle": pid[name], "name": name, "aliases": aliases.get(name, []),
            "text": "\n".join(line for line in lines if line),
            "title": page.title if page else name, "source": page.source if page else None,
            "props": {k: _expand(v, blocks) for k, v in page.props.items()} if page else {}})
    links = [{"neuron": neuron, "from": pid[src], "to": pid[dst], "token": token,
              "amount": amount, "valence": 1, "time": by_name[src].mtime}
             for (src, dst, token), amount in counts.items()]
    links.sort(key=lambda row: (row["from"], row["to"], row["token"]))
    return Vault(particles=particles, links=links)


def read_vault(root: Path, flavor: str, *, neuron: str = "vault", hash_name: str = "sha256",
               time: int | None = None, journals: bool = False) -> Vault:
    """Read a Logseq graph folder or an Obsidian vault into particles and cyberlinks.

    Args:
        root: the vault folder (for Logseq, the folder that holds `pages/`).
        flavor: "logseq" or "obsidian".
        neuron: who signs every link.
        hash_name: the particle hash, "sha256" or "blake3" (the store's declared hash).
        time: the time of every link; None uses each page file's mtime (int seconds).
        journals: Logseq only: read `journals/` as well as `pages/`.

    Returns:
        Particles (pages and dangling targets) sorted by name; links, one per distinct
        (from, to, token), sorted by that key.

    Raises:
        GraftError: a bad argument or folder; IngestError (a GraftError) lists every
            unreadable or non-UTF-8 file and bad front matter, with file and line.
    """
    if flavor not in FLAVORS:
        raise GraftError(f"vault flavor {flavor!r} is not one of {FLAVORS}")
    if hash_name not in ids.HASHES:
        raise GraftError(f"hash {hash_name!r} is not one of {ids.HASHES}")
    root = Path(root)
    if not root.is_dir():
        raise GraftError(f"{root}: not a folder; expected a {flavor} vault")
    if flavor == "logseq" and not (root / "pages").is_dir():
        raise GraftError(f"{root}: no pages/ folder; expected a Logseq graph folder")
    problems: list[Problem] = []
    pages: list[_Page] = []
    blocks: dict[str, str] = {}
    folders = ["pages", "journals"][: 1 + journals] if flavor == "logseq" else ["."]
    for path in _md_files(root, folders):
        if (lines := _read_lines(path, problems)) is not None:
            page, found = _read_page(path, root, lines, flavor, time, problems)
            pages.append(page)
            blocks.update(found)
    problems += [Problem(str(root / page.source), 0, "title", shorten(page.title),
                         "a non-empty page name") for page in pages if not page.name]
    if problems:
        raise IngestError(problems)
    return _assemble(pages, blocks, neuron, hash_name)
