"""Whether solo-learn can be imported, and the one-line error that says how to install it (imports no solo)."""

from __future__ import annotations

INSTALL_HINT = "git clone https://github.com/vturrisi/solo-learn && pip install -e solo-learn"
CLI_NAME = "solo-ema-solo-pretrain"


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


def solo_import_error() -> ImportError | None:
    """None when ``solo.methods`` (and its base module) import; else the one-line ImportError to raise."""
    try:
        import solo.methods  # noqa: F401
        import solo.methods.base  # noqa: F401
    except ImportError as err:
        return ImportError(missing_message(err))
    return None
