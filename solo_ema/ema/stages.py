"""An encoder as an ordered list of stages, so a target pass can start at any of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from .parts import BACKBONE_PARTS, EMASpec, EMASpecError, covers


@dataclass(frozen=True)
class Stage:
    """One step of the encoder's forward: a sub-module of the root (by path) or a parameter-free function."""

    path: str = ""
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    output: str | None = None

    @property
    def is_module(self) -> bool:
        """True when the stage runs a sub-module of the root."""
        return self.fn is None


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The sub-module of root at a dotted path, with an error that lists the children on a miss."""
    module = root
    for name in path.split("."):
        children = dict(module.named_children())
        if name not in children:
            raise EMASpecError(f"no module '{path}': '{name}' is not one of {sorted(children) or 'no children'}")
        module = children[name]
    return module


def resnet_stages(
    backbone: str = "backbone", head: str = "projector", between: Sequence[str] = (), feats_at: str | None = None
) -> list[Stage]:
    """Stages of a torchvision ResNet backbone (fc = Identity), optional modules on its output, then the head.

    The features (``feats``) are the backbone's output, or the output of ``feats_at``, one of `between` (a
    BatchNorm on the backbone output that everything downstream sees, such as BN1 in its ``backbone`` reading).
    """
    if feats_at is not None and feats_at not in between:
        raise ValueError(f"feats_at={feats_at!r} is not one of the stages between backbone and head {list(between)}")
    stages = [Stage(f"{backbone}.{name}") for name in ("conv1", "bn1", "relu", "maxpool")]
    stages += [Stage(f"{backbone}.layer{i}") for i in range(1, 5)]
    stages += [Stage(f"{backbone}.avgpool"), Stage(fn=partial(torch.flatten, start_dim=1))]
    stages.append(Stage(f"{backbone}.fc", output="feats" if feats_at is None else None))
    stages += [Stage(p, output="feats" if p == feats_at else None) for p in between]
    stages.append(Stage(head, output="z"))
    return stages


def part_paths(part: str, backbone: str = "backbone", head: str = "projector") -> list[str]:
    """Module paths (from the method's root) that one canonical part name covers."""
    top, _, rest = part.partition(".")
    if top == "conv1":
        return [f"{backbone}.conv1", f"{backbone}.bn1"]
    if top in BACKBONE_PARTS:
        base = f"{backbone}.layer{top[-1]}"
    else:
        base = head
    return [f"{base}.{rest}" if rest else base]


def spec_paths(spec: EMASpec, backbone: str = "backbone", head: str = "projector") -> list[str]:
    """Module paths of every part of an EMA spec, in encoder order."""
    return [p for part in spec.parts for p in part_paths(part, backbone, head)]


def split_stages(root: nn.Module, stages: Sequence[Stage], paths: Sequence[str]) -> list[Stage]:
    """Split sequential stages until every EMA path is a whole stage or lies before/after the others."""
    out = list(stages)
    changed = True
    while changed:
        changed = False
        for i, stage in enumerate(out):
            inside = [p for p in paths if stage.is_module and p != stage.path and covers(stage.path, p)]
            if not inside:
                continue
            module = get_module(root, stage.path)
            if not isinstance(module, nn.Sequential):
                raise EMASpecError(
                    f"EMA part '{inside[0]}' lies inside '{stage.path}', which is not sequential; "
                    f"use '{stage.path}' as a whole"
                )
            children = [Stage(f"{stage.path}.{name}") for name, _ in module.named_children()]
            children[-1] = replace(children[-1], output=stage.output)
            out[i : i + 1] = children
            changed = True
            break
    return out
