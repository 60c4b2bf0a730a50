"""The one table of config defaults: what the engine fills when a config omits a key, and the command line's
flag defaults.

The values are solo-learn's paper-era ones (the 1.0.x argparse defaults the paper's runs started from;
``max_epochs`` is the Lightning default of that time) where that version had one. Where it had none or a
different meaning, the table says so next to the value. Only the standard library is imported here, so a
command line can read the table (and the allowed values below) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["BACKBONE_NAMES", "BN1_POSITIONS", "CHOICES", "DEFAULTS", "DISTANCES", "OPTIMIZERS", "REQUIRED",
           "fill_defaults"]

# torchvision ResNets (solo_ema.engine.backbones builds them)
BACKBONE_NAMES = ("resnet18", "resnet50")
OPTIMIZERS = ("sgd", "lars")
# kNN metrics: cosine and euclidean on normalised features (solo-ema's own); paper: solo-learn 1.0.x's (the
# paper's KNN-1: raw features, weights 1/(d + 1e-5)). See solo_ema.engine.knn.
DISTANCES = ("cosine", "euclidean", "paper")
# Where BN1 (Table C.8's BatchNorm "on the output of block 4") sits: on the pooled feature in the projector
# path only ("projector", the default), or on the backbone output that everything downstream sees
# ("backbone": classifier, kNN, projector and the target pass).
BN1_POSITIONS = ("projector", "backbone")

DEFAULTS: dict[str, Any] = {
    "backbone.name": "resnet18",
    "max_epochs": 1000,  # 1.0.x left it to Lightning 1.6, whose default was 1000
    "accumulate_grad_batches": 1,
    "optimizer.name": "sgd",  # 1.0.x required --optimizer; sgd is torch's plain choice (--lars picks lars)
    "optimizer.batch_size": 128,
    "optimizer.lr": 0.3,
    "optimizer.classifier_lr": 0.3,
    "optimizer.weight_decay": 1e-4,
    "scheduler.name": "warmup_cosine",  # 1.0.x: "reduce", which solo-ema does not have; every recipe sets it
    "scheduler.warmup_epochs": 10,
    "scheduler.warmup_start_lr": 3e-5,
    "scheduler.min_lr": 0.0,
    "knn_eval.enabled": False,
    "knn_eval.k": 20,
    "knn_eval.temperature": 0.07,
    "knn_eval.distance_func": "cosine",  # solo-ema's own kNN; "paper" is 1.0.x's
    "performance.disable_channel_last": False,
    "performance.prefetch": True,  # --device_data: make each batch one ahead (the same batches)
    "performance.compile": False,  # torch.compile of the ResNet layers and heads (solo_ema.engine.compile)
    "performance.compile_backend": "inductor",
    "method_kwargs.bn_backbone_out": False,  # solo-ema's BN1 / BN2 switches (paper Table C.8)
    "method_kwargs.bn_projector_out": False,
    "method_kwargs.bn1_position": "projector",
    "momentum.base_tau": 0.99,
    "momentum.final_tau": 1.0,
    "momentum.classifier": False,
}
# Keys a config must give (solo-learn requires them too); their values above are the command line's defaults.
REQUIRED = ("optimizer.batch_size", "optimizer.lr")
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer.name": OPTIMIZERS,
    "knn_eval.distance_func": DISTANCES,
    "method_kwargs.bn1_position": BN1_POSITIONS,
}


def fill_defaults(cfg: DictConfig, prefixes: tuple[str, ...]) -> DictConfig:
    """Fill the table's keys under the given top-level prefixes that cfg lacks; check REQUIRED ones and CHOICES."""
    from .config import cfg_default, cfg_require

    for key, value in DEFAULTS.items():
        if key.split(".")[0] not in prefixes:
            continue
        stored = cfg_require(cfg, key) if key in REQUIRED else cfg_default(cfg, key, value)
        if key in CHOICES and stored not in CHOICES[key]:
            raise ValueError(f"{key} must be one of {', '.join(CHOICES[key])}")
    return cfg
