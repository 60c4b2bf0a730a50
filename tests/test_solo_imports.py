"""The solo-learn plug-in stands on the core alone: what ``solo_ema.solo`` imports, and who imports solo-learn.

The plug-in (``solo_ema/solo/``) may import, of this project, only the package root, the core
(``solo_ema.ema``) and ``solo_ema.losses``: never the Lightning engine, the methods, the data loaders or
the analysis tools. It is the only part of ``solo_ema`` that imports or loads solo-learn. Checked by
importing the plug-in in a fresh interpreter (over a stand-in checkout, and over real solo-learn), and
statically over every import statement, function-local ones included (those a plain import does not run).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import solo_learn_root, write_standin_checkout
from import_graph import MODULES, reachable

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "solo_ema"
PLUGIN = PACKAGE / "solo"
#: what the plug-in may import of solo_ema (a name or its submodules)
ALLOWED = ("solo_ema.ema", "solo_ema.losses", "solo_ema.solo")
#: calls that would load solo-learn without an import statement
LOADERS = {"find_spec", "import_module", "__import__", "spec_from_file_location"}


def _allowed(module: str) -> bool:
    return module == "solo_ema" or any(module == a or module.startswith(f"{a}.") for a in ALLOWED)


def test_nothing_reached_from_the_plugin_is_engine_methods_data_or_analysis() -> None:
    """Over all import statements, function-local included, the plug-in reaches only the core and the losses."""
    start = sorted(m for m in MODULES if m == "solo_ema.solo" or m.startswith("solo_ema.solo."))
    assert {"solo_ema.solo", "solo_ema.solo.plugin", "solo_ema.solo.pretrain", "solo_ema.solo.check"} <= set(start)
    reached = set().union(*(reachable(m) for m in start))
    assert {"solo_ema.ema", "solo_ema.losses"} <= reached  # the walk does follow the plug-in's imports
    bad = sorted(m for m in reached if not _allowed(m))
    assert not bad, f"reached from solo_ema/solo/: {bad}"


def _loads_solo(path: Path) -> list[str]:
    """What in `path` imports or loads solo-learn, or touches sys.path (line: statement)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in LOADERS:
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                names += ["solo"] if called == "spec_from_file_location" else []
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys":
            names = ["sys.path"]
        if any(n == "solo" or n.startswith("solo.") or n == "sys.path" for n in names):
            hits.append(f"{node.lineno}: {ast.unparse(node)}")
    return hits


def test_only_the_plugin_imports_or_loads_solo_learn() -> None:
    """Outside solo_ema/solo/ no module imports solo, find_specs it, loads main_pretrain.py or edits sys.path."""
    outside = {m: p for m, p in MODULES.items() if not (m == "solo_ema.solo" or m.startswith("solo_ema.solo."))}
    assert "solo_ema.solo_pretrain" in outside  # the console entry lives outside the plug-in
    bad = {m: hits for m, p in outside.items() if (hits := _loads_solo(p))}
    assert not bad, f"solo-learn touched outside solo_ema/solo/: {bad}"
    inside = _loads_solo(PLUGIN / "check.py") + _loads_solo(PLUGIN / "pretrain.py")
    assert any("import solo.methods" in h for h in inside) and any("spec_from_file_location" in h for h in inside)


def import_plugin_in_a_fresh_interpreter(root: Path, cwd: Path) -> dict:
    """Import solo_ema.solo in a new interpreter with ``$SOLO_LEARN_ROOT=root``; what it loaded and registered."""
    code = (
        "import json, sys\n"
        "import solo_ema.solo\n"
        "import solo.methods\n"
        "print(json.dumps({'package': solo_ema.__file__, 'solo': solo.__file__,\n"
        "                  'modules': sorted(m for m in sys.modules if m.split('.')[0] == 'solo_ema'),\n"
        "                  'ema': sorted(n for n in solo.methods.METHODS if n.endswith('_ema'))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "SOLO_LEARN_ROOT": str(root), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(seen["solo"]).resolve().is_relative_to(root.resolve())
    assert Path(seen["package"]).resolve().is_relative_to(REPO)
    assert {"solo_ema.solo.plugin", "solo_ema.ema", "solo_ema.losses"} <= set(seen["modules"])
    return seen


def test_console_entry_over_a_checkout_on_no_path_loads_no_engine_module(tmp_path: Path) -> None:
    """``python -m solo_ema.solo_pretrain --solo_root`` a stand-in checkout that is on no path (a clone, not installed).

    The plug-in imports that checkout's solo, registers its variant there and runs its main_pretrain with
    the hydra arguments; the entry and the plug-in loaded no engine, methods, data or analysis module.
    """
    checkout = write_standin_checkout(tmp_path / "checkout")
    shadow = tmp_path / "shadow" / "solo"  # without --solo_root `import solo` fails
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'solo'\", name='solo')\n")
    env = {k: v for k, v in os.environ.items() if k != "SOLO_LEARN_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), str(REPO)])
    args = ["--config-path", "cfg", "--solo_root", str(checkout), "--config-name", "y.yaml", "++max_steps=2"]
    cmd = [sys.executable, "-m", "solo_ema.solo_pretrain", *args]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    entry = str(checkout.resolve() / "main_pretrain.py")
    assert seen["argv"] == [entry, "--config-path", str(tmp_path / "cfg"), "--config-name", "y.yaml", "++max_steps=2"]
    assert seen["methods"] == ["byol", "byol_ema"]  # the plug-in registered its variant in the checkout's solo
    assert Path(seen["solo"]).resolve().is_relative_to(checkout.resolve())
    assert seen["env"] is None  # --solo_root reached the plug-in's import without staying in the environment
    assert {"solo_ema.solo.pretrain", "solo_ema.solo.plugin", "solo_ema.losses"} <= set(seen["modules"])
    bad = [m for m in seen["modules"] if not _allowed(m)]  # the entry itself runs as __main__
    assert not bad, f"the console entry loaded {bad}"


def test_importing_the_plugin_over_real_solo_learn_loads_no_engine_module(tmp_path: Path) -> None:
    """The same over real solo-learn (its checkout as $SOLO_LEARN_ROOT): the six variants, no engine module."""
    root, reason = solo_learn_root()
    if root is None:
        pytest.skip(reason)  # a failure under CI=true (conftest)
    seen = import_plugin_in_a_fresh_interpreter(root, tmp_path)
    assert seen["ema"] == [f"{m}_ema" for m in ("byol", "dino", "mocov2plus", "ressl", "simclr", "simsiam")]
    bad = [m for m in seen["modules"] if not _allowed(m)]
    assert not bad, f"importing solo_ema.solo loaded {bad}"
