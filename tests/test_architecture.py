"""The layering of docs/architecture.md, checked on the import graph of every ``import`` statement in solo_ema/.

Function-local imports count: a cycle closed inside a function is still a cycle. Importing ``a.b.c`` runs the
``__init__`` of ``a.b`` too, so an import is an edge to the module and to each package above it that the
importer does not already sit in.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "solo_ema"
CLI_MODULES = {f"solo_ema.{m}" for m in ("pretrain", "train", "linear", "plot", "report", "demo", "solo_pretrain")}
#: the files that may name solo-learn's package or its entry script
SOLO_LEARN_NAMES = ("solo", "main_pretrain")


def module_names() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = module_names()


def _absolute(importer: str, node: ast.ImportFrom) -> str:
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
            base = _absolute(name, node)
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


def test_the_graph_reader_sees_function_local_and_relative_imports():
    """The checks below are only as good as the graph: it must see the imports it claims to see."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    internal, external = imports_of("solo_ema.pretrain")
    assert "torch" in external or "omegaconf" in external
    assert any(m.startswith("solo_ema.") for m in internal)
    source = MODULES["solo_ema.pretrain"].read_text(encoding="utf-8")
    local = [n for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.ImportFrom)]
    for node in local:  # every function-local import is in the graph
        base = _absolute("solo_ema.pretrain", node)
        if base.startswith("solo_ema"):
            assert any(t == base or t.startswith(base + ".") or base.startswith(t) for t in internal), base


def test_the_import_graph_of_solo_ema_has_no_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_imports_only_torch_and_the_standard_library():
    for name in MODULES:
        if name == "solo_ema.ema" or name.startswith("solo_ema.ema."):
            internal, external = imports_of(name)
            outside = {m for m in internal if not m.startswith("solo_ema.ema")}
            foreign = {m for m in external if m != "torch" and m not in sys.stdlib_module_names}
            assert not outside and not foreign, f"{name} imports {sorted(outside | foreign)}"


def test_the_losses_are_pure_torch():
    internal, external = imports_of("solo_ema.losses")
    assert not internal and all(m == "torch" or m in sys.stdlib_module_names for m in external), (internal, external)


@pytest.mark.parametrize("start", [m for m in MODULES if m == "solo_ema.solo" or m.startswith("solo_ema.solo.")])
def test_the_plug_in_reaches_no_engine_method_data_or_analysis_module(start: str):
    banned = ("solo_ema.engine", "solo_ema.methods", "solo_ema.data", "solo_ema.analysis")
    reached = reachable(start)
    assert not {m for m in reached if m.startswith(banned)}, sorted(reached)
    assert not reached & CLI_MODULES, sorted(reached)


def test_only_the_plug_in_touches_solo_learn():
    for name, path in MODULES.items():
        if name == "solo_ema.solo" or name.startswith("solo_ema.solo."):
            continue
        external = imports_of(name)[1]
        assert not external & set(SOLO_LEARN_NAMES), f"{name} imports solo-learn"
        text = path.read_text(encoding="utf-8")
        for needle in ('find_spec("solo")', "find_spec('solo')", "main_pretrain.py"):
            assert needle not in text, f"{name} names {needle}"


def test_analysis_never_imports_an_entry_point_and_never_the_methods():
    for name in MODULES:
        if name.startswith("solo_ema.analysis"):
            reached = reachable(name)
            assert not reached & CLI_MODULES, (name, sorted(reached & CLI_MODULES))
            assert not any(m.startswith("solo_ema.methods") for m in reached), (name, sorted(reached))


def test_data_and_engine_stay_below_the_methods_and_the_entry_points():
    for name in MODULES:
        if name.startswith(("solo_ema.data", "solo_ema.engine")):
            reached = reachable(name)
            above = {m for m in reached if m.startswith(("solo_ema.methods", "solo_ema.analysis", "solo_ema.solo"))}
            assert not above and not reached & CLI_MODULES, (name, sorted(above | (reached & CLI_MODULES)))


def test_no_empty_package():
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "solo_ema":
            siblings = [p for p in path.parent.iterdir() if p.suffix == ".py" and p.name != "__init__.py"]
            assert siblings or path.read_text(encoding="utf-8").strip(), f"{name} is an empty package"
