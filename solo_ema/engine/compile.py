"""torch.compile of a method's heavy stages, in place, leaving modules, state-dict keys and hooks as they are."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["COMPILED_STAGES", "compile_stages"]

#: the stages whose forward is compiled, by the last part of their name (online parts and momentum copies alike)
COMPILED_STAGES = ("layer1", "layer2", "layer3", "layer4", "projector", "predictor")


def compile_stages(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> list[str]:
    """Replace the forward of every stage named in COMPILED_STAGES by its torch.compile'd version; their names.

    Each ResNet layer and head of the online model and of the momentum copies becomes one compiled region
    (fused kernels forward and backward), while the module objects, their parameters, state-dict keys and
    hooks stay as they were: the capture hooks of partial EMA run eagerly around the compiled forwards, so
    the target pass still resumes from what the online pass computed. Shapes are static (``dynamic=False``):
    a new batch size or train/eval mode compiles once more. Compile after building the momentum copies, and
    do not deep-copy the model afterwards (a copy would call the original's compiled forward).
    """
    names = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in COMPILED_STAGES and "forward" not in vars(module):
            module.forward = torch.compile(module.forward, backend=backend, mode=mode, dynamic=False)
            names.append(name)
    return names
