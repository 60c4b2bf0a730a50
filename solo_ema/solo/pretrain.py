"""solo-learn's own main_pretrain.py run with the partial-EMA methods registered (``solo-ema-solo-pretrain``).

The console entry is ``solo_ema.solo_pretrain``, which imports nothing of solo-learn (so that without
it the command prints one line and exits 2); it calls :func:`find_solo_root` and :func:`run` here.
Every argument goes to solo-learn's hydra entry unchanged, with a relative ``--config-path`` /
``--config-dir`` made absolute first (hydra resolves a relative config path against the importing
module, not the working directory, when main_pretrain is imported). The solo-learn checkout is
``--solo_root``, else ``$SOLO_LEARN_ROOT``, else the folder above the installed ``solo`` package (an
editable install of a checkout).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from .check import ROOT_ENV, add_root_to_path

ENTRY_FILE = "main_pretrain.py"
_PATH_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd")


def absolute_config_paths(argv: Sequence[str], cwd: str | os.PathLike) -> list[str]:
    """The arguments with relative ``--config-path`` / ``-cp`` / ``--config-dir`` / ``-cd`` values made absolute."""
    out, args = [], list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if flag in _PATH_FLAGS:
            if not eq and i + 1 < len(args):
                value = args[i + 1]
                i += 1
            if value and not os.path.isabs(value):
                value = os.path.normpath(os.path.join(os.fspath(cwd), value))
            out.append(f"{flag}={value}" if eq else flag)
            if not eq:
                out.append(value)
        else:
            out.append(arg)
        i += 1
    return out


def _installed_solo_parent() -> Path | None:
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent.parent


def find_solo_root(explicit: str | None = None, env: str | None = None) -> Path:
    """The solo-learn checkout that holds main_pretrain.py; FileNotFoundError (one line) when there is none."""
    for source, value in (("--solo_root", explicit), (f"${ROOT_ENV}", env)):
        if value:
            root = Path(value).expanduser().resolve()
            if not (root / ENTRY_FILE).is_file():
                raise FileNotFoundError(f"{source}={value}: no {ENTRY_FILE} there (it must be a solo-learn checkout)")
            return root
    root = _installed_solo_parent()
    if root is not None and (root / ENTRY_FILE).is_file():
        return root
    raise FileNotFoundError(
        f"cannot find solo-learn's {ENTRY_FILE} next to the installed solo package: pass --solo_root PATH "
        f"(a solo-learn checkout) or set {ROOT_ENV}"
    )


def _load_entry(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("main_pretrain", root / ENTRY_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_pretrain"] = module
    spec.loader.exec_module(module)
    return module


def run(argv: Sequence[str], root: Path) -> None:
    """solo-learn's ``main_pretrain.main()`` of the checkout `root` on the hydra arguments `argv`."""
    args = absolute_config_paths(argv, os.getcwd())
    add_root_to_path(str(root))
    sys.argv = [str(root / ENTRY_FILE), *args]
    _load_entry(root).main()
