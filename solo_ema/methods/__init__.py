"""Self-supervised methods on the engine's contract, registered by name."""

from ..engine import BaseMethod
from .byol import BYOL

METHODS: dict[str, type[BaseMethod]] = {"byol": BYOL}

__all__ = ["BYOL", "METHODS"]
