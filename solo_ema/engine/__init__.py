"""A Lightning engine with solo-learn's contract, for use without a solo-learn checkout.

``BaseMethod`` and ``BaseMomentumMethod`` are loaded on first use, so ``solo_ema.engine.defaults`` (the
defaults table) is read without loading torch or Lightning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BaseMethod", "BaseMomentumMethod"]


def __getattr__(name: str) -> Any:
    """Load BaseMethod or BaseMomentumMethod from solo_ema.engine.base on first access."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import base

    return getattr(base, name)
