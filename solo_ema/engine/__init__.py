"""A Lightning engine with solo-learn's contract, for use without a solo-learn checkout."""

from .base import BaseMethod, BaseMomentumMethod

__all__ = ["BaseMethod", "BaseMomentumMethod"]
