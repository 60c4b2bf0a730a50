"""METHODS (name -> method class, the names of `methods.catalog`) and `build_model`, the method factory."""

from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig

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


def build_model(cfg: DictConfig, device: str | torch.device | None = None) -> BaseMethod:
    """The method ``cfg.method`` of METHODS built from a resolved config (on "meta": structure only, no memory)."""
    with torch.device(device) if device else contextlib.nullcontext():
        return METHODS[cfg.method](cfg.copy())


__all__ = ["BYOL", "DINO", "METHODS", "MoCoV2Plus", "ReSSL", "SimCLR", "SimSiam", "build_model"]
