"""Building blocks for the methods' heads: MLPs with named layers (fc1, bn1, act1, fc2, ...)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn


def mlp(dims: Sequence[int], batch_norm: bool = True, last_bn: bool = False, bias: bool = True) -> nn.Sequential:
    """Linear layers of widths dims[0] -> ... -> dims[-1] with BN + ReLU between them, named fc1, bn1, act1, ...

    Named layers let an EMA spec or a weight tracker address them, e.g. ``projector.fc2``.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    n = len(dims) - 1
    for i in range(n):
        layers[f"fc{i + 1}"] = nn.Linear(dims[i], dims[i + 1], bias=bias)
        if i < n - 1:
            if batch_norm:
                layers[f"bn{i + 1}"] = nn.BatchNorm1d(dims[i + 1])
            layers[f"act{i + 1}"] = nn.ReLU(inplace=True)
    if last_bn:
        layers[f"bn{n}"] = nn.BatchNorm1d(dims[-1], affine=False)
    return nn.Sequential(layers)
