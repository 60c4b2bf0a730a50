"""Names shared by the monitors and the plots (no heavy imports)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# part name -> module path (from the LightningModule) whose output is the part's output
MONITORED_PARTS: dict[str, str] = {
    "conv1": "backbone.maxpool",  # the stem ends at maxpool (an Identity on the CIFAR stem)
    "block1": "backbone.layer1",
    "block2": "backbone.layer2",
    "block3": "backbone.layer3",
    "block4": "backbone.layer4",
    "projector": "projector",
}
GRAD_PREFIX = "grad_linf"  # metrics grad_linf/<part>
COST_PREFIX = "cost"  # metrics cost/<key>
WEIGHTS_GLOB = "weights_*.pt"


def saved_parts(momentum: Mapping[str, Any]) -> str | None:
    """The EMA parts of a saved run's ``momentum`` config: ``parts`` (the canonical string), or in runs saved
    before it was one, ``parts_spec`` (their ``parts`` was a list); None when neither is there."""
    parts = momentum.get("parts")
    return parts if isinstance(parts, str) else momentum.get("parts_spec")
