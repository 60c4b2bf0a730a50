"""A solo-learn config of the plug-in (a solo_configs/ YAML, raw or composed with its overrides) against the engine's
resolved config of the same recipe (``solo_ema.pretrain.build_cfg``): every hyper-parameter both faces have.

Reads omegaconf only (no solo-learn, no hydra). Keys a solo-learn config leaves out take solo-learn's defaults
(``knn_eval``: off, k 20, euclidean) or the plug-in's, which are the engine's table (Table C.8's switches off).
"""

from __future__ import annotations

from collections.abc import Collection

import pytest
from omegaconf import DictConfig, OmegaConf

from solo_ema.ema import config_parts
from solo_ema.engine.defaults import DEFAULTS

#: engine keys of method_kwargs that solo-learn's methods do not have (DINO's centre momentum is fixed there)
ENGINE_ONLY = {"center_momentum"}
#: Table C.8's switches, which both faces have, and their defaults (the plug-in's are the engine's)
BN_KEYS = ("bn_backbone_out", "bn_projector_out", "bn1_position")
SCHEDULER_KEYS = ("warmup_epochs", "warmup_start_lr", "min_lr")
#: the engine names the layers of BYOL's projector, solo-learn numbers them (a Sequential): Linear, BN, ReLU, Linear
BYOL_PROJECTOR_CHILDREN = {"fc1": "0", "bn1": "1", "act1": "2", "fc2": "3"}
#: solo-learn's kNN when the config gives no knn_eval (solo.methods.base.BaseMethod.add_and_assert_specific_cfg)
SOLO_KNN = {"enabled": False, "k": 20, "distance_func": "euclidean"}


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


def solo_parts(y: DictConfig) -> str:
    """The canonical momentum.parts of a plug-in config (as the plug-in resolves it, beta 0 throughout: 'none')."""
    m = y.momentum
    return str(config_parts(OmegaConf.select(y, "momentum.parts"), m.base_tau, m.final_tau))


def engine_parts(cfg: DictConfig) -> str:
    """The engine's canonical momentum.parts with sub-modules of BYOL's projector in solo-learn's names."""
    parts = []
    for part in str(cfg.momentum.parts).split("+"):
        head, _, child = part.partition(".")
        if head == "projector" and child and cfg.method == "byol":
            first, _, rest = child.partition(".")
            child = ".".join([BYOL_PROJECTOR_CHILDREN[first], *([rest] if rest else [])])
            part = f"{head}.{child}"
        parts.append(part)
    return "+".join(parts)


def assert_same_recipe(y: DictConfig, cfg: DictConfig, differ: Collection[str] = ()) -> None:
    """Every hyper-parameter of the plug-in config `y` is the engine config `cfg`'s, but the dotted keys in `differ`.

    Learning rates: both faces scale lr and classifier lr by batch_size x devices / 256 (solo-learn's parse_cfg,
    the engine's build_cfg); solo-learn also multiplies lr, classifier lr, warm-up start lr and min lr by
    accumulate_grad_batches (in its BaseMethod), the engine does not.
    """
    assert y.method == f"{cfg.method}_ema" and y.data.dataset == cfg.data.dataset
    assert y.backbone.name == cfg.backbone.name
    assert OmegaConf.select(y, "backbone.kwargs.zero_init_residual", default=False) == bool(
        cfg.backbone.kwargs.get("zero_init_residual", False))
    kwargs = {k: v for k, v in y.method_kwargs.items() if k not in BN_KEYS}
    ours = {k: v for k, v in cfg.method_kwargs.items() if k not in ENGINE_ONLY and k not in BN_KEYS}
    assert kwargs == pytest.approx(ours)
    for key in BN_KEYS:
        assert OmegaConf.select(y, f"method_kwargs.{key}", default=DEFAULTS[f"method_kwargs.{key}"]) == \
            cfg.method_kwargs[key], key
    assert solo_parts(y) == engine_parts(cfg)
    if cfg.momentum.parts != "none":  # with every part shared the taus act on nothing
        assert (y.momentum.base_tau, y.momentum.final_tau) == (cfg.momentum.base_tau, cfg.momentum.final_tau)
    assert y.momentum.classifier == cfg.momentum.classifier
    o, accumulate = cfg.optimizer, y.accumulate_grad_batches
    assert (y.optimizer.name, y.optimizer.batch_size) == (o.name, o.batch_size)
    scale = y.optimizer.batch_size * len(y.devices) / 256 * accumulate
    if "optimizer.lr" not in differ:
        assert y.optimizer.lr * scale == pytest.approx(o.lr)
    assert y.optimizer.classifier_lr * scale == pytest.approx(o.classifier_lr)
    assert y.optimizer.weight_decay == pytest.approx(o.weight_decay)
    assert dict(y.optimizer.kwargs) == dict(o.kwargs)
    assert y.scheduler.name == cfg.scheduler.name
    for key in SCHEDULER_KEYS:
        if f"scheduler.{key}" not in differ:
            factor = accumulate if key.endswith("_lr") else 1
            assert y.scheduler[key] * factor == pytest.approx(cfg.scheduler[key]), key
    assert per_crop(y.augmentations) == [pytest.approx(c) for c in per_crop(cfg.augmentations)]
    assert (y.max_epochs, len(y.devices), y.sync_batchnorm) == (cfg.max_epochs, cfg.devices, cfg.sync_batchnorm)
    assert accumulate == cfg.accumulate_grad_batches
    knn = {k: OmegaConf.select(y, f"knn_eval.{k}", default=v) for k, v in SOLO_KNN.items()}
    assert knn["enabled"] == cfg.knn_eval.enabled
    if knn["enabled"]:  # the paper's KNN-1 (the engine's "paper" metric) is solo-learn's euclidean kNN
        assert (cfg.knn_eval.distance_func, knn["distance_func"], knn["k"]) == ("paper", "euclidean", cfg.knn_eval.k)
