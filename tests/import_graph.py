"""The import graph of solo_ema/: every ``import`` statement, function-local ones included.

Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` too, so an import is an edge to the module and to each
package above it that the importer does not already sit in.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "solo_ema"


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = module_names()


def absolute_module(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved against the importer's package)."""
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(modules of solo_ema imported, top-level external modules imported) by one module, anywhere in it."""
    internal, external = set(), set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(name, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "solo_ema":
                external.add(target.split(".")[0])
                continue
            while target not in MODULES:  # an attribute of a module, not a module
                target = target.rpartition(".")[0]
            internal.add(target)
    return internal, external


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph() -> dict[str, set[str]]:
    """Module -> the modules whose code runs when it imports (the module and the packages above it)."""
    edges = {}
    for name in MODULES:
        own = set(_ancestors(name)) | {name}
        reached = set()
        for target in imports_of(name)[0]:
            reached |= {t for t in [*_ancestors(target), target] if t not in own and t != "solo_ema"}
        edges[name] = reached
    return edges


GRAPH = graph()


def reachable(start: str) -> set[str]:
    """Every module whose import statements run, transitively, when `start` is imported."""
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None
