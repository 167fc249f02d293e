"""The package layers: finetune reads checkpoints through the contract in graph/checkpoint.py,
never through the compiler's modules, so a checkpoint from anywhere can be tuned."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(package: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((REPO / package).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[path.name] = names
    return out


def test_finetune_does_not_import_the_compiler():
    found = {f: sorted(n for n in names if n.split(".")[0] == "compiler")
             for f, names in imports("finetune").items()}
    assert {f: n for f, n in found.items() if n} == {}


def test_graph_does_not_import_the_layers_above_it():
    found = {f: sorted(n for n in names if n.split(".")[0] in ("compiler", "finetune", "loop"))
             for f, names in imports("graph").items()}
    assert {f: n for f, n in found.items() if n} == {}


def test_the_compiler_writes_the_contracts_names():
    from compiler import types
    from graph import checkpoint
    assert types.SPECIAL_TOKENS is checkpoint.SPECIAL_TOKENS and types.LEXICON == checkpoint.LEXICON
