"""solo-ema-solo-pretrain: solo-learn's own main_pretrain.py with the partial-EMA methods registered.

    solo-ema-solo-pretrain [--solo_root PATH] --config-path DIR --config-name NAME.yaml [++key=value ...]

Every argument except ``--solo_root`` goes to solo-learn's hydra entry unchanged, with a relative
``--config-path`` / ``--config-dir`` made absolute first (hydra resolves a relative config path
against the importing module, not the working directory, when main_pretrain is imported). The
solo-learn checkout is ``--solo_root``, else ``$SOLO_LEARN_ROOT``, else the folder above the installed
``solo`` package (an editable install of a checkout).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .solo_learn_check import CLI_NAME, INSTALL_HINT, solo_import_error

ROOT_ENV = "SOLO_LEARN_ROOT"
ENTRY_FILE = "main_pretrain.py"
_ROOT_FLAGS = ("--solo_root", "--solo-root")
_PATH_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd")

USAGE = f"""usage: {CLI_NAME} [--solo_root PATH] --config-path DIR --config-name NAME.yaml [++key=value ...]

Runs solo-learn's main_pretrain.py with byol_ema, dino_ema, mocov2plus_ema, ressl_ema, simclr_ema and
simsiam_ema registered (choose the EMA parts with momentum.parts, e.g. ++momentum.parts=projector).
  --solo_root PATH  solo-learn checkout holding {ENTRY_FILE} (default: ${ROOT_ENV}, else the folder
                    above the installed solo package)
All other arguments go to solo-learn's hydra entry; a relative --config-path is made absolute.
solo-learn: {INSTALL_HINT}"""


def split_solo_root(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take ``--solo_root PATH`` (or ``--solo_root=PATH``) out of the arguments."""
    root, rest, args = None, [], list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if flag in _ROOT_FLAGS:
            if eq:
                root = value
            elif i + 1 < len(args):
                root = args[i + 1]
                i += 1
            else:
                raise ValueError(f"{flag} needs a path")
        else:
            rest.append(arg)
        i += 1
    return root, rest


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


def _load_entry(root: Path):
    spec = importlib.util.spec_from_file_location("main_pretrain", root / ENTRY_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_pretrain"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Register the partial-EMA methods, then run solo-learn's ``main_pretrain.main()`` with the hydra arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        explicit, args = split_solo_root(args)
    except ValueError as err:
        print(f"{CLI_NAME}: {err}", file=sys.stderr)
        return 2
    hint = explicit or os.environ.get(ROOT_ENV)
    if hint and os.path.isdir(hint) and os.path.abspath(hint) not in sys.path:
        sys.path.insert(0, os.path.abspath(hint))  # a checkout's solo package, even if not pip-installed
    error = solo_import_error()
    if error is not None:
        print(str(error), file=sys.stderr)
        return 2
    try:
        root = find_solo_root(explicit, os.environ.get(ROOT_ENV))
    except FileNotFoundError as err:
        print(f"{CLI_NAME}: {err}", file=sys.stderr)
        return 2
    from . import solo  # noqa: F401 (importing the plug-in registers the *_ema methods in solo-learn)
    args = absolute_config_paths(args, os.getcwd())
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    sys.argv = [str(root / ENTRY_FILE), *args]
    _load_entry(root).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
