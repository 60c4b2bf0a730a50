"""Whether solo-learn can be imported, and the one-line error that says how to install it.

Imported by ``solo_ema.solo``'s ``__init__`` before anything else of the plug-in; ``solo`` itself is
imported only inside :func:`solo_import_error`.
"""

from __future__ import annotations

import os
import sys

INSTALL_HINT = "git clone https://github.com/vturrisi/solo-learn && pip install -e solo-learn"
#: a solo-learn checkout; ``import solo_ema.solo`` puts it on sys.path (it need not be pip-installed)
ROOT_ENV = "SOLO_LEARN_ROOT"


def missing_message(err: BaseException | None = None) -> str:
    """One line: solo-learn is missing (or failed to import) and how to install it from a checkout."""
    name = getattr(err, "name", None) or ""
    if isinstance(err, ModuleNotFoundError) and name and name != "solo" and not name.startswith("solo."):
        return (
            f"solo_ema.solo needs solo-learn, whose import failed (missing module '{name}'); "
            f"install it with its requirements from a checkout: {INSTALL_HINT}"
        )
    if err is not None and not isinstance(err, ModuleNotFoundError):
        reason = " ".join(str(err).split())
        return (
            f"solo_ema.solo needs solo-learn, whose import failed ({reason}); "
            f"install it from a checkout: {INSTALL_HINT}"
        )
    return f"solo_ema.solo needs solo-learn, which is not installed; install it from a checkout: {INSTALL_HINT}"


def add_root_to_path(root: str | None = None) -> None:
    """Put a solo-learn checkout (default ``$SOLO_LEARN_ROOT``) first on sys.path, once; nothing if it is no folder."""
    root = os.environ.get(ROOT_ENV) if root is None else root
    if root and os.path.isdir(root) and os.path.abspath(root) not in sys.path:
        sys.path.insert(0, os.path.abspath(root))


def solo_import_error() -> ImportError | None:
    """None when ``solo.methods`` (and its base module) import; else the one-line ImportError to raise."""
    try:
        import solo.methods  # noqa: F401
        import solo.methods.base  # noqa: F401
    except ImportError as err:
        return ImportError(missing_message(err))
    return None
