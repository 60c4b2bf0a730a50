"""Each paper-era plug-in YAML (solo_configs/pretrain/*/*_paper.yaml) resolves to its bash recipe's hyper-parameters.

The YAML is read with omegaconf alone (solo-learn need not be importable); the recipe's flags are captured by
running it with PYTHON=echo and resolved by solo_ema.pretrain.build_cfg with --ema_parts projector.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from solo_ema.pretrain import build_cfg

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "solo_configs" / "pretrain"
PAPER_YAMLS = sorted(CONFIGS.glob("*/*_ema_projector_paper.yaml"))
SOLO_EMA_ONLY = {"bn_backbone_out", "bn_projector_out", "bn1_position", "center_momentum"}  # not solo-learn keys
SCHEDULER_KEYS = ("name", "warmup_epochs", "warmup_start_lr", "min_lr")


def recipe_cfg(dataset_dir: str, method: str, dataset: str):
    """build_cfg of bash_files/pretrain/<dataset_dir>/<method>.sh [cifar dataset] --ema_parts projector."""
    args = [dataset] if dataset_dir == "cifar" else []
    proc = subprocess.run(["bash", str(ROOT / "bash_files" / "pretrain" / dataset_dir / f"{method}.sh"), *args,
                           "--ema_parts", "projector"], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHON": "echo"})
    argv = proc.stdout.split()
    assert argv[:2] == ["-m", "solo_ema.pretrain"]
    return build_cfg(argv[2:])


def per_crop(augmentations) -> list[tuple]:
    """One tuple of settings per crop (a pipeline of n crops gives n equal tuples)."""
    out = []
    for a in augmentations:
        cj = a["color_jitter"]
        out += [(
            a["crop_size"], a["rrc"]["crop_min_scale"], a["rrc"]["crop_max_scale"], cj["prob"], cj["brightness"],
            cj["contrast"], cj["saturation"], cj["hue"], a["grayscale"]["prob"], a["gaussian_blur"]["prob"],
            a["solarization"]["prob"], a["horizontal_flip"]["prob"],
        )] * int(a["num_crops"])
    return out


def test_every_head_style_yaml_has_a_paper_era_twin() -> None:
    head = sorted(p.name for p in CONFIGS.glob("*/*_ema_projector.yaml"))
    assert len(PAPER_YAMLS) == len(head) == 12
    assert sorted(p.name.replace("_paper", "") for p in PAPER_YAMLS) == head


@pytest.mark.parametrize("path", PAPER_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_yaml_matches_its_bash_recipe(path: Path) -> None:
    y = OmegaConf.load(path)
    method = path.name.removesuffix("_ema_projector_paper.yaml")
    cfg = recipe_cfg(path.parent.name, method, str(y.data.dataset))
    assert y.method == f"{cfg.method}_ema" and y.data.dataset == cfg.data.dataset
    assert y.backbone.name == cfg.backbone.name
    assert y.backbone.kwargs.zero_init_residual == cfg.backbone.kwargs.zero_init_residual
    ours = {k: v for k, v in cfg.method_kwargs.items() if k not in SOLO_EMA_ONLY}
    assert dict(y.method_kwargs) == pytest.approx(ours)
    assert y.momentum.parts == cfg.momentum.parts == "projector"
    assert (y.momentum.base_tau, y.momentum.final_tau) == (cfg.momentum.base_tau, cfg.momentum.final_tau)
    assert y.momentum.classifier == cfg.momentum.classifier
    o = cfg.optimizer
    assert (y.optimizer.name, y.optimizer.batch_size) == (o.name, o.batch_size)
    # both scale lr and classifier lr by batch_size x devices / 256 (solo-learn HEAD's parse_cfg, build_cfg)
    scale = y.optimizer.batch_size * len(y.devices) / 256
    assert y.optimizer.lr * scale == pytest.approx(o.lr) and y.optimizer.classifier_lr * scale == pytest.approx(
        o.classifier_lr)
    assert y.optimizer.weight_decay == pytest.approx(o.weight_decay)
    assert dict(y.optimizer.kwargs) == dict(o.kwargs)
    assert {k: y.scheduler[k] for k in SCHEDULER_KEYS} == pytest.approx({k: cfg.scheduler[k] for k in SCHEDULER_KEYS})
    assert per_crop(y.augmentations) == [pytest.approx(c) for c in per_crop(cfg.augmentations)]
    assert (y.max_epochs, len(y.devices), y.sync_batchnorm) == (cfg.max_epochs, cfg.devices, cfg.sync_batchnorm)
    assert y.accumulate_grad_batches == cfg.accumulate_grad_batches
