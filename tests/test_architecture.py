"""The layering of docs/architecture.md, checked on the import graph of solo_ema/ (tests/import_graph.py).

Function-local imports count: a cycle closed inside a function is still a cycle. The last test checks the
graph a command line really loads: its --help and its usage errors import neither torch nor Lightning.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
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


HEAVY = ("torch", "lightning", "torchmetrics", "wandb")
# main(argv) of one entry point per call, in one fresh interpreter; after each call, the HEAVY modules it loaded
PROBE = """
import contextlib, importlib, io, json, sys
main = importlib.import_module(sys.argv[1]).main
report = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    report.append({"code": code, "err": err.getvalue(),
                   "loaded": [m for m in json.loads(sys.argv[3]) if m in sys.modules]})
print(json.dumps(report))
"""
CIFAR = ["--method", "byol", "--dataset", "cifar10"]
# (argv, exit code, the flag the one error line names); --help first, then usage errors
FAST_PATHS: dict[str, list[tuple[list[str], int, str | None]]] = {
    "solo_ema.pretrain": [
        (["--help"], 0, None),
        (["--method", "byoll", "--dataset", "cifar10"], 2, "--method"),
        ([*CIFAR, "--optimizer", "adam"], 2, "--optimizer"),
        ([*CIFAR, "--base_tau_momentum", "2"], 2, "--base_tau_momentum"),
        ([*CIFAR, "--ema_parts", "block7"], 2, "--ema_parts"),
        ([*CIFAR, "--gaussian_prob", "0.1", "0.2"], 2, "--gaussian_prob"),
        (["--method", "mocov2plus", "--dataset", "cifar10", "--num_crops_per_aug", "3"], 2, "--num_crops_per_aug"),
        ([*CIFAR, "--devices", "two"], 2, "--devices"),
        ([*CIFAR, "--data_dir", "/nonexistent/cifar"], 2, "--data_dir"),
    ],
    "solo_ema.linear": [
        (["--help"], 0, None),
        (["--pretrained_feature_extractor", "x.ckpt", "--dataset", "cifar10", "--max_epochs", "0"], 2, "--max_epochs"),
    ],
    "solo_ema.report": [(["--help"], 0, None), (["--no_such_flag"], 2, "--no_such_flag")],
    "solo_ema.plot": [(["--help"], 0, None), (["--no_such_flag"], 2, None)],
    "solo_ema.demo": [(["--help"], 0, None), (["--steps", "many"], 2, "--steps")],
    "solo_ema.solo_pretrain": [(["--help"], 0, None), (["--solo_root"], 2, "--solo_root")],
}


@pytest.mark.parametrize("module", sorted(FAST_PATHS))
def test_help_and_usage_errors_import_neither_torch_nor_lightning(module: str) -> None:
    """A command line answers --help and a bad flag value at once: no torch, Lightning, torchmetrics or wandb is
    imported (they take seconds), and the error is one line naming the flag, exit code 2."""
    cases = FAST_PATHS[module]
    proc = subprocess.run([sys.executable, "-c", PROBE, module, json.dumps([argv for argv, _, _ in cases]),
                           json.dumps(HEAVY)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    for (argv, code, flag), seen in zip(cases, json.loads(proc.stdout)):
        assert seen["loaded"] == [], f"{module} {argv} imported {seen['loaded']}"
        assert seen["code"] == code, (argv, seen)
        if code:
            lines = seen["err"].strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in seen["err"], (argv, seen["err"])
            assert flag is None or flag in lines[0], (argv, lines[0])
