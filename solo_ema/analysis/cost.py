"""Cost accounting of an EMA placement (paper Table 4: # EMA layers, momentum parameters, # forwards, time).

Two counts of each column. solo-ema's own: ``ema_layers`` (every Conv2d / Linear of the momentum copies,
heads and shortcut convs included) and ``momentum_params`` (scalars in the momentum copies). The paper's
(Table 4, Sec. 5, Table D.9): ``ema_layers_paper`` counts a momentum backbone by its nominal depth (18 for
ResNet-18, 50 for ResNet-50; a single block by its main-path convs, conv1 as 1) plus the projector's Linear
layers (DINO's prototype layer ``last_layer`` not counted: 3 for DINO, 2 for BYOL), so DINO-R50 is 50 + 3 = 53
and projector-only 3; ``params_m_paper`` is "Params (MB)" read as millions of backbone parameters held, the
online backbone plus its momentum copies (2 x 23.5 = 47.0 for ResNet-50 with a momentum backbone, 23.5
projector-only), heads not counted (``backbone_params_held`` is the same count in scalars).

``cost_of_model(model)`` counts on a built method (the CLI's dry run builds it once on the meta device: no
memory, no init time; a run counts on its real model). ``solo_ema.analysis.callbacks.CostLogger`` writes the
numbers into the run's metrics (``cost/<key>``) once at the start, and the measured time per epoch and median
step time at the end.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..ema import EMASpec
from .keys import COST_PREFIX

METRIC_PREFIX = COST_PREFIX
EMA_LAYER_TYPES = (nn.Conv2d, nn.Linear)
NOMINAL_DEPTH = {"resnet18": 18, "resnet50": 50}  # the paper counts a momentum backbone by its name
PROTOTYPE_LAYER = "last_layer"  # DINO's prototype layer: not among the paper's 3 projector layers


def count_layers(module: nn.Module) -> int:
    """Number of Conv2d / Linear modules in a module (what the paper's '# EMA layers' counts)."""
    return sum(isinstance(m, EMA_LAYER_TYPES) for m in module.modules())


def _paper_layers(path: str, copy: nn.Module, depth: int | None) -> int:
    """The paper's layer count of one momentum copy (see the module docstring)."""
    if path == "backbone":
        if depth is None:
            raise ValueError("the paper's layer count needs a ResNet-18 or ResNet-50 backbone")
        return depth
    if path.startswith("backbone."):  # conv1 or a block: its convs outside the shortcut
        return sum(isinstance(m, nn.Conv2d) for n, m in copy.named_modules() if "downsample" not in n.split("."))
    return sum(isinstance(m, nn.Linear) for n, m in copy.named_modules()
               if PROTOTYPE_LAYER not in n.split(".") and not path.endswith(PROTOTYPE_LAYER))


def paper_cost(model: nn.Module, backbone_name: str | None) -> dict[str, Any]:
    """Table 4's columns in the paper's units: ema_layers_paper, backbone_params_held, params_m_paper."""
    ema = getattr(model, "ema", None)
    depth = NOMINAL_DEPTH.get(backbone_name or "")
    pairs = list(zip(ema.paths, (m for _, m in ema.pairs()))) if ema is not None else []
    layers = sum(_paper_layers(path, copy, depth) for path, copy in pairs)
    held = sum(p.numel() for p in model.backbone.parameters())
    held += sum(p.numel() for path, copy in pairs if path.split(".")[0] == "backbone" for p in copy.parameters())
    return {"ema_layers_paper": layers, "backbone_params_held": held, "params_m_paper": round(held / 1e6, 4)}


def cost_of_model(model: nn.Module, backbone_name: str | None = None) -> dict[str, Any]:
    """Cost accounting of a built method: EMA parts, EMA layers, momentum and online params, backbone forwards,
    and the paper's counts (``paper_cost``; ``backbone_name`` defaults to the model's cfg)."""
    spec = getattr(model, "ema_spec", None) or EMASpec(())
    ema = getattr(model, "ema", None)
    if backbone_name is None:
        cfg = getattr(model, "cfg", None)
        backbone_name = cfg.backbone.name if cfg is not None else None
    return {
        "ema_parts": str(spec),
        "ema_layers": count_layers(ema.copies) if ema is not None else 0,
        "momentum_params": ema.num_momentum_params() if ema is not None else 0,
        "online_params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ema.")),
        "backbone_forwards_per_view": 1 if spec.shares_backbone else 2,
        **paper_cost(model, backbone_name),
    }


def format_cost(cost: dict[str, Any]) -> str:
    """One line of cost accounting (start of a run; with the measured times at the end)."""
    line = (
        f"EMA parts: {cost['ema_parts']} | EMA layers: {cost['ema_layers']} | "
        f"momentum params: {cost['momentum_params']:,} | online params: {cost['online_params']:,} | "
        f"backbone forwards per view: {cost['backbone_forwards_per_view']}"
    )
    if "ema_layers_paper" in cost:
        line += (f" | paper's units: {cost['ema_layers_paper']} EMA layers, "
                 f"{cost['params_m_paper']:.1f} M backbone params held")
    if cost.get("median_step_time") is not None:
        line += f" | median step: {cost['median_step_time']:.3f} s"
    if cost.get("seconds_per_epoch") is not None:
        how = "" if cost.get("seconds_per_epoch_source", "measured") == "measured" else " (extrapolated)"
        line += f" | {cost['seconds_per_epoch']:.1f} s/epoch{how}"
    return line


def numeric(cost: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a cost dict as ``cost/<key>`` metrics."""
    return {
        f"{METRIC_PREFIX}/{k}": float(v)
        for k, v in cost.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
