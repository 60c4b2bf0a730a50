"""The layering of docs/architecture.md, checked on the import graph of solo_ema/ (tests/import_graph.py).

Function-local imports count: a cycle closed inside a function is still a cycle.
"""

from __future__ import annotations

import ast
import sys

from import_graph import GRAPH, MODULES, absolute_module, find_cycle, imports_of, reachable

CLI_MODULES = {f"solo_ema.{m}" for m in ("pretrain", "train", "linear", "plot", "report", "demo", "solo_pretrain")}


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
        base = absolute_module("solo_ema.pretrain", node)
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
