"""Cost accounting of an EMA placement (paper Table 4: # EMA layers, momentum parameters, # forwards, time).

``cost_of(cfg)`` counts on a model built on the meta device (no memory, no init time); ``cost_of_model``
counts on any model. ``solo_ema.analysis.callbacks.CostLogger`` writes the numbers into the run's metrics
(``cost/<key>``) once at the start, and the measured time per epoch and median step time at the end.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from ..ema import parse_ema_spec
from .keys import COST_PREFIX

METRIC_PREFIX = COST_PREFIX
EMA_LAYER_TYPES = (nn.Conv2d, nn.Linear)


def count_layers(module: nn.Module) -> int:
    """Number of Conv2d / Linear modules in a module (what the paper's '# EMA layers' counts)."""
    return sum(isinstance(m, EMA_LAYER_TYPES) for m in module.modules())


def cost_of_model(model: nn.Module, spec: str) -> dict[str, Any]:
    """Cost accounting of a built method: EMA parts, EMA layers, momentum and online params, backbone forwards."""
    parsed = parse_ema_spec(spec)
    ema = getattr(model, "ema", None)
    return {
        "ema_parts": str(parsed),
        "ema_layers": count_layers(ema.copies) if ema is not None else 0,
        "momentum_params": ema.num_momentum_params() if ema is not None else 0,
        "online_params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("ema.")),
        "backbone_forwards_per_view": 1 if parsed.shares_backbone else 2,
    }


def cost_of(cfg: DictConfig) -> dict[str, Any]:
    """Cost accounting of the EMA placement, counted on a model built on the meta device (no memory)."""
    from ..pretrain import build_model

    model = build_model(cfg, device="meta")
    return cost_of_model(model, cfg.momentum.parts_spec)


def format_cost(cost: dict[str, Any]) -> str:
    """One line of cost accounting (start of a run; with the measured times at the end)."""
    line = (
        f"EMA parts: {cost['ema_parts']} | EMA layers: {cost['ema_layers']} | "
        f"momentum params: {cost['momentum_params']:,} | online params: {cost['online_params']:,} | "
        f"backbone forwards per view: {cost['backbone_forwards_per_view']}"
    )
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
