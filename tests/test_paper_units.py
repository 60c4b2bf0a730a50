"""Table 4's counts in the paper's units for other placements: nominal depth, block convs, projector layers."""

from __future__ import annotations

import pytest
import torchvision

from solo_ema.analysis.cost import cost_of_model
from solo_ema.pretrain import build_cfg, build_model

RESNET = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


def backbone_params(name: str, prefix: str = "") -> int:
    """Parameters of a torchvision ResNet without its fc (or of one of its children), counted independently."""
    model = RESNET[name]()
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc.") and n.startswith(prefix))


@pytest.mark.parametrize(("method", "backbone", "spec", "layers", "extra_prefixes"), [
    ("byol", "resnet18", "all", 18 + 2, [""]),  # Table D.9: backbone "18 layers", projector "2 layers"
    ("byol", "resnet18", "projector", 2, []),
    ("byol", "resnet18", "projector.fc2", 1, []),
    ("dino", "resnet18", "all", 18 + 3, [""]),  # Sec. 5: 21 layers for ResNet-18
    ("dino", "resnet50", "block4", 3 * 3, ["layer4."]),  # three bottlenecks of three convs
    ("dino", "resnet50", "conv1+block4+projector", 1 + 9 + 3, ["conv1.", "bn1.", "layer4."]),
    ("simclr", "resnet18", "none", 0, []),
])
def test_paper_units(method: str, backbone: str, spec: str, layers: int, extra_prefixes: list[str]) -> None:
    cfg = build_cfg(["--method", method, "--dataset", "imagenet", "--backbone", backbone, "--ema_parts", spec,
                     "--dry_run"])
    cost = cost_of_model(build_model(cfg, device="meta"))
    assert cost["ema_layers_paper"] == layers
    held = backbone_params(backbone) + sum(backbone_params(backbone, p) for p in extra_prefixes)
    assert cost["backbone_params_held"] == held
    assert cost["params_m_paper"] == pytest.approx(held / 1e6, abs=1e-4)
