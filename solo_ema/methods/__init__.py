"""Self-supervised methods on the engine's contract, registered by name."""

from ..engine import BaseMethod
from .byol import BYOL
from .dino import DINO
from .mocov2plus import MoCoV2Plus
from .ressl import ReSSL
from .simclr import SimCLR
from .simsiam import SimSiam

METHODS: dict[str, type[BaseMethod]] = {
    "byol": BYOL,
    "dino": DINO,
    "mocov2plus": MoCoV2Plus,
    "ressl": ReSSL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
}

__all__ = ["BYOL", "DINO", "METHODS", "MoCoV2Plus", "ReSSL", "SimCLR", "SimSiam"]
