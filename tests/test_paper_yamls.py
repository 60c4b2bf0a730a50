"""Each paper-era plug-in YAML (solo_configs/pretrain/*/*_paper.yaml) resolves to its bash recipe's hyper-parameters.

The YAML is read with omegaconf alone (solo-learn need not be importable); the recipe's flags are captured by
running it with PYTHON=echo and resolved by solo_ema.pretrain.build_cfg with --ema_parts projector; the two are
compared by recipe_compare.assert_same_recipe (methods' keys, BatchNorm switches, momentum, optimizer and learning
rates, schedule, per-crop augmentations, epochs, devices, accumulation, kNN).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from recipe_compare import assert_same_recipe

from solo_ema.pretrain import build_cfg

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "solo_configs" / "pretrain"
PAPER_YAMLS = sorted(CONFIGS.glob("*/*_ema_projector_paper.yaml"))


def recipe_cfg(dataset_dir: str, method: str, dataset: str):
    """build_cfg of bash_files/pretrain/<dataset_dir>/<method>.sh [cifar dataset] --ema_parts projector."""
    args = [dataset] if dataset_dir == "cifar" else []
    proc = subprocess.run(["bash", str(ROOT / "bash_files" / "pretrain" / dataset_dir / f"{method}.sh"), *args,
                           "--ema_parts", "projector"], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHON": "echo"})
    argv = proc.stdout.split()
    assert argv[:2] == ["-m", "solo_ema.pretrain"]
    return build_cfg(argv[2:])


def test_every_head_style_yaml_has_a_paper_era_twin() -> None:
    """CIFAR and ImageNet-100: six methods in both styles; ImageNet-1K: the paper-era BYOL, MoCo v2+, DINO only."""
    head = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*_ema_projector.yaml"))
    assert len(head) == 12 and {p.split("/")[0] for p in head} == {"cifar", "imagenet-100"}
    twins = [str(p.relative_to(CONFIGS)).replace("_paper", "") for p in PAPER_YAMLS]
    assert sorted(t for t in twins if not t.startswith("imagenet/")) == head
    assert sorted(t for t in twins if t.startswith("imagenet/")) == [
        f"imagenet/{m}_ema_projector.yaml" for m in ("byol", "dino", "mocov2plus")]


@pytest.mark.parametrize("path", PAPER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_yaml_matches_its_bash_recipe(path: Path) -> None:
    y = OmegaConf.load(path)
    method = path.name.removesuffix("_ema_projector_paper.yaml")
    cfg = recipe_cfg(path.parent.name, method, str(y.data.dataset))
    assert y.momentum.parts == cfg.momentum.parts == "projector"
    assert_same_recipe(y, cfg)
