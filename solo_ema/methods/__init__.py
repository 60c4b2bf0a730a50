"""Self-supervised methods on the engine's contract, registered by name, and the factory that builds one.

``METHODS``, ``build_model`` and the method classes are loaded on first use (from ``factory``), so
``solo_ema.methods.catalog`` (names, default EMA parts, accepted crops) is read without loading torch or Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BYOL", "DINO", "METHODS", "MoCoV2Plus", "ReSSL", "SimCLR", "SimSiam", "build_model"]


def __getattr__(name: str) -> Any:
    """Load a method class, METHODS or build_model from solo_ema.methods.factory on first access."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import factory

    value = getattr(factory, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exported names and the loaded globals."""
    return sorted(set(globals()) | set(__all__))
