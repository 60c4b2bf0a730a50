"""Backbones: torchvision ResNets, with the CIFAR stem for 32x32 inputs."""

from __future__ import annotations

import torchvision
from torch import nn

from .defaults import BACKBONE_NAMES

BACKBONES = {name: getattr(torchvision.models, name) for name in BACKBONE_NAMES}


def build_backbone(name: str, small_stem: bool = False, **kwargs) -> tuple[nn.Module, int]:
    """A ResNet without its fc (fc = Identity) and its feature width; small_stem: 3x3 conv, no max-pool."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(BACKBONES)}")
    net = BACKBONES[name](weights=None, **kwargs)
    features_dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        net.maxpool = nn.Identity()
    return net, features_dim
