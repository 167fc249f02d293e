"""The default demo graph: numpy/scipy API objects linked by their docstrings' "See Also"."""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import pathlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from graph.ids import particle_of_text

# Public modules per package: the documented API surface, each importing in well under a
# second. Left out on purpose: numpy.ma/char/rec (legacy duplicates of numpy names that would
# make most short names ambiguous), numpy.testing, scipy.constants (mostly floats), scipy.io.
MODULES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.polynomial",
              "numpy.strings", "numpy.exceptions"),
    "scipy": ("scipy", "scipy.cluster.vq", "scipy.cluster.hierarchy", "scipy.fft",
              "scipy.integrate", "scipy.interpolate", "scipy.linalg", "scipy.ndimage",
              "scipy.optimize", "scipy.signal", "scipy.sparse", "scipy.sparse.linalg",
              "scipy.sparse.csgraph", "scipy.spatial", "scipy.spatial.distance",
              "scipy.special", "scipy.stats"),
}
NEURON = "numpy-docs"
TOKEN = "link"
# Links are append-only and dated; a constant keeps two builds byte-identical.
TIME = 0
SEE_ALSO = "see-also"
MEMBER_OF = "member-of"
SEMCON_TEXT = {SEE_ALSO: "Semcon: the source's docs list the target under See Also.",
               MEMBER_OF: "Semcon: the source is a public member of the target module."}
# Abbreviations docstrings use in See Also entries (scipy writes `np.linalg.svd`).
ABBREVIATIONS = {"np": "numpy", "sp": "scipy"}

_ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_TICKS = re.compile(r"`+~?([^`]*)`+")
_NAME = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*$")
# scipy's positional-argument deprecation note: "Use of argument(s) ``{'b', 'a'}`` by position".
_ARG_SET = re.compile(r"(argument\(s\) ``)\{('[^'{}]*'(?:, '[^'{}]*')*)\}")
_UNDERLINE = re.compile(r"^\s*([-=~^*#+])\1{2,}\s*$")


def _section_bounds(lines: list[str]) -> list[tuple[int, str]]:
    """(header line index, lower-cased title) of every numpydoc section: a title over dashes."""
    return [(i, lines[i].strip().lower()) for i in range(len(lines) - 1)
            if lines[i].strip() and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1])]


def _see_also_span(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the See Also section (header included), or None when there is none."""
    bounds = _section_bounds(lines)
    for k, (start, title) in enumerate(bounds):
        if title == "see also":
            end = bounds[k + 1][0] if k + 1 < len(bounds) else len(lines)
            return start, end
    return None


def parse_see_also(doc: str | None) -> list[str]:
    """The names a numpydoc docstring lists under "See Also", in order, without duplicates.

    Follows numpydoc's reader: an unindented line holds names (`a`, `a, b`, `a : text`,
    `:func:`a``), indented lines continue the description and are ignored.

    Args:
        doc: a raw or cleaned docstring.

    Returns:
        Dotted names as written (roles, backticks, `~` and trailing `()` removed).
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    span = _see_also_span(lines)
    if span is None:
        return []
    body = [ln for ln in lines[span[0] + 2: span[1]] if ln.strip()]
    indent = min((len(ln) - len(ln.lstrip()) for ln in body), default=0)
    names: list[str] = []
    for line in body:
        line = line[indent:]
        if line[0].isspace():
            continue  # a description's continuation line
        plain = _TICKS.sub(r"\1", _ROLE.sub(r"\1", line))
        for raw in plain.split(":", 1)[0].split(","):
            name = raw.strip().lstrip("~").rstrip(".").removesuffix("()")
            if _NAME.match(name) and name not in names:
                names.append(name)
    return names


def strip_see_also(doc: str | None) -> str:
    """The docstring without its See Also section, tidied.

    Args:
        doc: a raw docstring (None reads as empty).

    Returns:
        The other sections verbatim, dedented, without trailing spaces or runs of blank lines.
    """
    lines = [ln.rstrip() for ln in inspect.cleandoc(doc or "").splitlines()]
    span = _see_also_span(lines)
    if span is not None:
        lines = lines[: span[0]] + lines[span[1]:]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_prompt(line: str) -> bool:
    """A doctest input line: `>>> code`, `... code` or a bare `...`."""
    body = line.strip()
    return body.startswith((">>>", "... ")) or body == "..."


def _mask_output(block: list[str]) -> list[str]:
    """A doctest output block the docs mark `# may vary`, collapsed to one `...` line."""
    if not any(ln.rstrip().endswith("# may vary") for ln in block):
        return block
    return [block[0][: len(block[0]) - len(block[0].lstrip())] + "...  # may vary"]


def steady(text: str) -> str:
    """`text` with what differs between interpreter runs made canonical.

    scipy builds some docstrings at import: deprecation notes format a Python set (its order
    follows the hash seed) and scipy.stats examples print fresh random samples. Those sets
    are sorted; doctest output blocks the docs mark `# may vary` become `...`.
    """
    text = _ARG_SET.sub(lambda m: m[1] + "{" + ", ".join(sorted(m[2].split(", "))) + "}", text)
    out: list[str] = []
    block: list[str] = []  # output lines of the current doctest example
    in_example = False
    for line in text.splitlines():
        if _is_prompt(line) or not line.strip():
            out += _mask_output(block)
            block = []
            out.append(line)
            in_example = _is_prompt(line)
        elif in_example:
            block.append(line)
        else:
            out.append(line)
    return "\n".join(out + _mask_output(block))


def first_paragraph(doc: str | None) -> str:
    """The first prose paragraph of a module docstring, on one line.

    Underlines and RST directives (`.. currentmodule::`) are skipped and roles become plain
    text, so scipy's "Linear algebra (:mod:`scipy.linalg`)" title reads "Linear algebra
    (scipy.linalg)".
    """
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")):
        words = [ln.strip() for ln in para.splitlines()
                 if ln.strip() and not _UNDERLINE.match(ln)]
        if words and not words[0].startswith(".."):
            return _TICKS.sub(r"\1", _ROLE.sub(r"\1", " ".join(words)))
    return ""


@dataclass(frozen=True)
class NameTable:
    """What a See Also name can resolve to.

    Args:
        names: every public dotted name (canonical or alias) -> canonical particle name.
        classes: canonical names of classes, for `Class.method` references.
        short: lower-cased short names unique across the graph -> canonical name.
    """

    names: Mapping[str, str]
    classes: frozenset[str] = frozenset()
    short: Mapping[str, str] = field(default_factory=dict)


def _parents(module: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]: the prefixes numpydoc readers try, innermost first."""
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(len(parts), 0, -1)]


def _lookup(ref: str, contexts: Sequence[str], table: NameTable) -> str | None:
    """Exact name, then the name relative to each context module and its parents."""
    if ref in table.names:
        return table.names[ref]
    for ctx in contexts:
        for prefix in _parents(ctx):
            hit = table.names.get(f"{prefix}.{ref}")
            if hit is not None:
                return hit
    return None


def resolve_reference(ref: str, contexts: Sequence[str], table: NameTable) -> str | None:
    """The canonical particle name a See Also entry refers to, or None.

    Tried in order: fully qualified (`np.` read as `numpy.`); relative to each context module
    and then its parents up to the package root (`linalg.svd` in numpy.fft ->
    numpy.linalg.svd); a method or attribute of a known class (`ndarray.sum` -> numpy.ndarray,
    since methods are not particles); a short name unique across the graph.

    Args:
        ref: the name as written in the docstring.
        contexts: modules the documented object lives in, most specific first.
        table: the names that exist.

    Returns:
        A canonical name from `table`, or None when nothing matches.
    """
    head, _, rest = ref.partition(".")
    if rest and head in ABBREVIATIONS:
        ref = f"{ABBREVIATIONS[head]}.{rest}"
    hit = _lookup(ref, contexts, table)
    if hit is None and "." in ref:
        owner = _lookup(ref.rsplit(".", 1)[0], contexts, table)
        hit = owner if owner in table.classes else None
    if hit is None and "." not in ref:
        hit = table.short.get(ref.lower())
    return hit


@dataclass
class _Entry:
    """One API object: every public name it goes by, and what it is."""

    obj: object
    names: list[str]
    is_class: bool


def _is_api_object(obj: object) -> bool:
    """Functions, classes and documented callables (ufuncs, scipy.stats distributions).

    Callable instances count only with a docstring of their own: that keeps `norm` and
    `np.add`, and drops helpers such as the `test` runner that only carry their class's doc.
    """
    if inspect.ismodule(obj) or getattr(obj, "__module__", None) == "builtins":
        return False
    if inspect.isroutine(obj) or inspect.isclass(obj):
        return True
    doc = getattr(obj, "__doc__", None)
    return callable(obj) and isinstance(doc, str) and doc != type(obj).__doc__


def _public_names(module: object) -> list[str]:
    """Public attribute names of a module that are already loaded (no lazy imports)."""
    loaded = vars(module)
    names = getattr(module, "__all__", None) or [n for n in loaded if not n.startswith("_")]
    # Lazy `__getattr__` names (scipy submodules, numpy's deprecated aliases) would import
    # or warn; they are submodules or aliases, never new API objects here.
    return sorted({n for n in names if not n.startswith("_") and n in loaded})


def _collect(modules: dict[str, object]) -> dict[int, _Entry]:
    """Every API object of `modules`, keyed by identity so re-exports merge into one entry."""
    entries: dict[int, _Entry] = {}
    for mod_name in sorted(modules):
        module = modules[mod_name]
        for attr in _public_names(module):
            obj = vars(module)[attr]
            if not _is_api_object(obj):
                continue
            entry = entries.setdefault(id(obj), _Entry(obj, [], inspect.isclass(obj)))
            entry.names.append(f"{mod_name}.{attr}")
    return entries


def _canonical(entry: _Entry) -> str:
    """The name the object is documented under: its defining module and own `__name__` first."""
    home = getattr(entry.obj, "__module__", None)
    own = getattr(entry.obj, "__name__", None)

    def rank(name: str) -> tuple:
        module, _, attr = name.rpartition(".")
        return (module != home, attr != own, name.count("."), len(name), name)

    return min(entry.names, key=rank)


def _import_modules(packages: tuple[str, ...]) -> tuple[dict[str, object], list[str]]:
    """Import each package's public modules; those that fail are skipped and reported."""
    modules: dict[str, object] = {}
    failed: list[str] = []
    for package in packages:
        for name in MODULES.get(package, (package,)):
            try:
                modules[name] = importlib.import_module(name)
            except Exception:  # an optional compiled extension missing is not our error
                failed.append(name)
    return modules, failed


def _short_aliases(all_names: dict[str, list[str]]) -> dict[str, str]:
    """Canonical name -> its last dotted part, for those no other particle goes by.

    Uniqueness is case-insensitive because the tokenizer matches names that way; the last
    parts of alias names count too, so `abs` (numpy.abs) is never another particle's alias.
    """
    owners: dict[str, set[str]] = {}
    for canon, names in all_names.items():
        for name in names:
            owners.setdefault(name.rpartition(".")[2].lower(), set()).add(canon)
    shorts = {canon: canon.rpartition(".")[2] for canon in all_names}
    return {c: s for c, s in shorts.items() if s != c and len(owners[s.lower()]) == 1}


def _link(src: str, dst: str, semcon: str) -> dict:
    """One cyberlink row between two named particles."""
    return {"neuron": NEURON, "from": particle_of_text(src), "to": particle_of_text(dst),
            "token": TOKEN, "amount": 1, "valence": 1, "time": TIME, "semcon": semcon}


def _contexts(entry: _Entry, canon: str) -> list[str]:
    """Modules to resolve relative names in: where the object is exported, then defined."""
    homes = [canon.rpartition(".")[0]]
    homes += sorted({n.rpartition(".")[0] for n in entry.names} - set(homes))
    defined = getattr(entry.obj, "__module__", None)
    return homes + [defined] if isinstance(defined, str) else homes


def _see_also_links(members: dict[str, _Entry], table: NameTable, counts: dict,
                    progress: bool) -> list[tuple[str, str]]:
    """(source, target) canonical names for every resolved See Also entry; updates counts."""
    pairs: set[tuple[str, str]] = set()
    names = sorted(members)
    if progress:
        from tqdm import tqdm  # optional: only the CLI shows a bar
        names = tqdm(names, desc="see also", unit="obj")
    for canon in names:
        entry = members[canon]
        contexts = _contexts(entry, canon)
        for ref in parse_see_also(getattr(entry.obj, "__doc__", None)):
            counts["see_also_refs"] += 1
            hit = resolve_reference(ref, contexts, table)
            if hit is None:
                counts["unresolved"] += 1
            elif hit == canon:
                counts["self_refs"] += 1
            else:
                pairs.add((canon, hit))
    return sorted(pairs)


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSONL with '\\n' line ends on every platform."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def _particle_rows(all_names: dict[str, list[str]], shorts: dict[str, str],
                   modules: Mapping[str, object], members: Mapping[str, _Entry]) -> list[dict]:
    """Rows for the semcons, modules (first paragraph) and members, sorted by name."""
    rows = [{"particle": particle_of_text(s), "name": s, "aliases": [], "text": t}
            for s, t in SEMCON_TEXT.items()]
    for canon in all_names:
        aliases = sorted(set(all_names[canon]) - {canon})
        aliases += [shorts[canon]] if canon in shorts else []
        if canon in modules:
            text = first_paragraph(getattr(modules[canon], "__doc__", None))
        else:
            doc = getattr(members[canon].obj, "__doc__", None)
            text = strip_see_also(steady(doc) if isinstance(doc, str) else "")
        rows.append({"particle": particle_of_text(canon), "name": canon,
                     "aliases": aliases, "text": text})
    return sorted(rows, key=lambda row: row["name"])


def _version(package: str, modules: dict[str, object]) -> str:
    """Installed distribution version, else the module's `__version__`, else "unknown"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(modules.get(package), "__version__", "unknown"))


def build_docs_graph(out_dir: pathlib.Path, packages: tuple[str, ...] = ("numpy", "scipy"),
                     *, progress: bool = False) -> dict:
    """Write the API graph of installed packages: particles.jsonl and links.jsonl.

    Particles are the public modules and their functions, classes and documented callables,
    named by canonical dotted name. Links: `see-also` from an object to each resolved See
    Also entry, `member-of` from an object to its module and from a module to its parent.
    Output is sorted and clock-free, so two runs write byte-identical files.

    Args:
        out_dir: directory to write into (created if missing).
        packages: importable package names; those in MODULES use the listed modules, any
            other contributes just its top-level module.
        progress: show a tqdm bar while resolving See Also entries.

    Returns:
        Summary: package versions, particle and link counts, See Also references seen,
        unresolved and self references, and modules that failed to import.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation chatter on import is not our output
        modules, failed = _import_modules(packages)
        entries = _collect(modules)
    members = {_canonical(e): e for e in entries.values()}
    members = {c: e for c, e in members.items() if c not in modules}
    all_names = {m: [m] for m in modules} | {c: e.names for c, e in members.items()}
    shorts = _short_aliases(all_names)
    table = NameTable(
        names={n: c for c, names in all_names.items() for n in names},
        classes=frozenset(c for c, e in members.items() if e.is_class),
        short={s.lower(): c for c, s in shorts.items()})
    counts = {"see_also_refs": 0, "unresolved": 0, "self_refs": 0}
    pairs = [(a, b, SEE_ALSO) for a, b in _see_also_links(members, table, counts, progress)]
    pairs += [(c, c.rpartition(".")[0], MEMBER_OF) for c in members]
    # A module belongs to the nearest enclosing module in the graph (scipy.cluster.vq -> scipy).
    parents = {m: next((p for p in _parents(m)[1:] if p in modules), None) for m in modules}
    pairs += [(m, p, MEMBER_OF) for m, p in parents.items() if p is not None]
    pairs.sort()

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    particles = _particle_rows(all_names, shorts, modules, members)
    _write_jsonl(out_dir / "particles.jsonl", particles)
    _write_jsonl(out_dir / "links.jsonl", [_link(*p) for p in pairs])
    return {"packages": {p: _version(p, modules) for p in packages},
            "modules": len(modules), "particles": len(particles), "links": len(pairs),
            "see_also_links": sum(p[2] == SEE_ALSO for p in pairs),
            "member_of_links": sum(p[2] == MEMBER_OF for p in pairs), **counts,
            "failed_modules": sorted(failed)}
