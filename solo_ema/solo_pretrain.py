"""solo-ema-solo-pretrain: solo-learn's own main_pretrain.py with the partial-EMA methods registered.

    solo-ema-solo-pretrain [--solo_root PATH] --config-path DIR --config-name NAME.yaml [++key=value ...]

This entry imports nothing of solo-learn: it takes ``--solo_root`` out of the arguments, imports the
plug-in (``solo_ema.solo``, which puts the checkout named by ``$SOLO_LEARN_ROOT`` on sys.path; a
``--solo_root`` checkout is passed to it that way) and hands the rest to
``solo_ema.solo.pretrain.run``. Without solo-learn it prints the plug-in's one-line ImportError and
exits with status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

CLI_NAME = "solo-ema-solo-pretrain"
#: the variable that names a solo-learn checkout: ``solo_ema.solo.check.ROOT_ENV`` (a test keeps the two equal)
ROOT_ENV = "SOLO_LEARN_ROOT"
_ROOT_FLAGS = ("--solo_root", "--solo-root")

USAGE = f"""usage: {CLI_NAME} [--solo_root PATH] --config-path DIR --config-name NAME.yaml [++key=value ...]

Runs solo-learn's main_pretrain.py with byol_ema, dino_ema, mocov2plus_ema, ressl_ema, simclr_ema and
simsiam_ema registered (choose the EMA parts with momentum.parts, e.g. ++momentum.parts=projector).
  --solo_root PATH  solo-learn checkout holding main_pretrain.py (default: ${ROOT_ENV}, else the folder
                    above the installed solo package)
All other arguments go to solo-learn's hydra entry; a relative --config-path is made absolute.
solo-learn: without it this command prints how to install it (see docs/solo_learn.md)."""


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


def _import_plugin(solo_root: str | None):
    """``solo_ema.solo.pretrain``, imported with `solo_root` (if given) as ``$SOLO_LEARN_ROOT`` meanwhile."""
    before = os.environ.get(ROOT_ENV)
    if solo_root:
        os.environ[ROOT_ENV] = solo_root
    try:
        from .solo import pretrain
    finally:
        if before is None:
            os.environ.pop(ROOT_ENV, None)
        else:
            os.environ[ROOT_ENV] = before
    return pretrain


def main(argv: Sequence[str] | None = None) -> int:
    """Register the partial-EMA methods, then run solo-learn's ``main_pretrain.main()`` with the hydra arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        solo_root, args = split_solo_root(args)
    except ValueError as err:
        print(f"{CLI_NAME}: {err}", file=sys.stderr)
        return 2
    try:
        pretrain = _import_plugin(solo_root)
    except ImportError as err:
        print(" ".join(str(err).split()), file=sys.stderr)
        return 2
    try:
        root = pretrain.find_solo_root(solo_root, os.environ.get(ROOT_ENV))
    except FileNotFoundError as err:
        print(f"{CLI_NAME}: {err}", file=sys.stderr)
        return 2
    pretrain.run(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
