"""The solo-learn plug-in against a real solo-learn.

solo-learn is ``$SOLO_LEARN_ROOT`` (a checkout), else an importable ``solo``, else the snapshot in
``../shared/solo-learn`` beside the project's root (see conftest.use_solo_learn); without one the module
is skipped, and under ``CI=true`` that skip is a failure.

Fits of one step on fake data in the style of solo-learn's own method tests (torchvision FakeData
through solo-learn's augmentation pipeline, fast_dev_run on CPU), the backbone-forward count, the
EMA update inside a Trainer run against the cosine formula (with gradient accumulation and a per-block
placement), gradients, the equality of the projector-only target with solo-learn's own momentum path
when its momentum backbone equals the online one, every YAML in solo_configs/ through solo-learn's own
main_pretrain, and the console entry.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import use_solo_learn

SOLO_ROOT = use_solo_learn()

from lightning.pytorch import Callback, Trainer  # noqa: E402
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402
from solo.data.pretrain_dataloader import (  # noqa: E402
    FullTransformPipeline,
    NCropAugmentation,
    build_transform_pipeline,
    dataset_with_index,
    prepare_dataloader,
)
from solo.methods import METHODS  # noqa: E402
from solo.methods.base import BaseMomentumMethod  # noqa: E402
from solo_runs import FitRecorder, compose, image_folder, run, small_argv  # noqa: E402
from table_map import read_map  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchvision.datasets import FakeData  # noqa: E402

import solo_ema.solo as plugin  # noqa: E402
from solo_ema import solo_pretrain  # noqa: E402
from solo_ema.ema import parse_ema_spec  # noqa: E402
from solo_ema.solo import plugin as plugin_module  # noqa: E402
from solo_ema.solo.plugin import HEADS, SOLO_MOMENTUM_MODULES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "solo_configs" / "pretrain"
METHOD_NAMES = tuple(HEADS)
MOMENTUM_METHODS = ("byol", "dino", "mocov2plus", "ressl")
SPECS = ("all", "projector", "block4+projector", "none")
BATCH = 4
# small heads keep each fit to a few seconds on two CPU cores
METHOD_KWARGS = {
    "byol": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 64},
    "dino": {"proj_hidden_dim": 64, "proj_output_dim": 32, "num_prototypes": 64},
    "mocov2plus": {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2, "queue_size": 32},
    "ressl": {
        "proj_hidden_dim": 64,
        "proj_output_dim": 32,
        "temperature_q": 0.1,
        "temperature_k": 0.04,
        "queue_size": 32,
    },
    "simclr": {"proj_hidden_dim": 64, "proj_output_dim": 32, "temperature": 0.2},
    "simsiam": {"proj_hidden_dim": 64, "proj_output_dim": 32, "pred_hidden_dim": 16},
}


def make_cfg(method: str, parts: str | None = None, dataset: str = "custom", momentum: bool = True):
    """A solo-learn cfg as its tests build it (resnet18; 'custom' = ImageNet stem, 'cifar10' = CIFAR stem)."""
    base = method.removesuffix("_ema")
    cfg = {
        "name": "test",
        "method": method,
        "backbone": {"name": "resnet18"},
        "data": {"dataset": dataset, "num_large_crops": 2, "num_small_crops": 0, "num_classes": 10},
        "optimizer": {
            "name": "sgd",
            "batch_size": BATCH,
            "lr": 0.1,
            "classifier_lr": 0.1,
            "weight_decay": 1e-5,
            "kwargs": {"momentum": 0.9},
        },
        "scheduler": {"name": "warmup_cosine"},
        "max_epochs": 1,
        "devices": 1,
        "accelerator": "cpu",
        "method_kwargs": dict(METHOD_KWARGS[base]),
    }
    if momentum:
        cfg["momentum"] = {"base_tau": 0.99, "final_tau": 1.0, "classifier": True}
        if parts is not None:
            cfg["momentum"]["parts"] = parts
    cfg = OmegaConf.create(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


def make_loaders(dataset: str = "custom", train_size: int = 4 * BATCH):
    """Two 32 px crops per image through solo-learn's own pipeline; a 32 px validation set."""
    aug = OmegaConf.create(
        {
            "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
            "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
            "grayscale": {"prob": 0.2},
            "gaussian_blur": {"prob": 0.0},
            "solarization": {"prob": 0.2},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": 0.5},
            "crop_size": 32,
            "num_crops": 2,
        }
    )
    transform = FullTransformPipeline([NCropAugmentation(build_transform_pipeline(dataset, aug), 2)])
    train = dataset_with_index(FakeData)(size=train_size, image_size=(3, 32, 32), num_classes=10, transform=transform)
    val = FakeData(size=BATCH, image_size=(3, 32, 32), num_classes=10, transform=transforms.ToTensor())
    return prepare_dataloader(train, batch_size=BATCH, num_workers=0), DataLoader(val, batch_size=BATCH)


def fit_one_step(model, dataset: str = "custom") -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        fast_dev_run=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train, val = make_loaders(dataset)
    trainer.fit(model, train, val)


def count_forwards(module: torch.nn.Module, counts: dict[str, int]) -> None:
    def hook(mod, _args, _out):
        counts["train" if mod.training else "eval"] += 1

    module.register_forward_hook(hook)


def random_batch(size: int = 32):
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(BATCH, 3, size, size, generator=g) for _ in range(2)]
    return [torch.arange(BATCH), crops, torch.randint(0, 10, (BATCH,), generator=g)]


@pytest.fixture(scope="module")
def _frozen_heap():
    """What exists before the module's tests (imports, mostly) is left out of the collections below: they stay cheap."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _free_models(_frozen_heap):
    """Collect each test's models and trainers (reference cycles) at once: the suite's memory stays flat."""
    yield
    gc.collect()


# -------------------------------------------------------------------------------------------------------------------
def test_registered_in_solo_methods():
    for method in METHOD_NAMES:
        cls = METHODS[f"{method}_ema"]
        assert issubclass(cls, METHODS[method]) and issubclass(cls, BaseMomentumMethod)
        assert cls is plugin.CLASSES[f"{method}_ema"]
    assert plugin.register() == plugin.CLASSES


@pytest.mark.parametrize("parts", SPECS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_fit_one_step(method: str, parts: str):
    model = METHODS[f"{method}_ema"](make_cfg(f"{method}_ema", parts))
    assert model.cfg.momentum.parts == parts
    assert not any(name in model._modules for name in SOLO_MOMENTUM_MODULES)
    online = {"train": 0, "eval": 0}
    count_forwards(model.backbone, online)
    copies = {path: {"train": 0, "eval": 0} for path in model.ema.paths}
    for path, counts in copies.items():  # the target pass runs a copy stage by stage: count its first layer
        first = next(m for m in model.ema.copy_of(path).modules() if list(m.parameters(recurse=False)))
        count_forwards(first, counts)
    pairs = model.momentum_pairs
    before = [[p.detach().clone() for p in o.parameters()] for o, _ in pairs]
    for (_, m), init in zip(pairs, before):
        assert all(torch.equal(a, b) for a, b in zip(init, m.parameters()))  # copies start as exact copies

    fit_one_step(model)

    # one online backbone pass per crop (2 large crops) and per validation batch; no second backbone
    assert online == {"train": 2, "eval": 1}
    assert all(c == {"train": 2, "eval": 1} for c in copies.values()), copies
    if parts in ("projector", "none"):
        assert not any(p.startswith("backbone") for p in model.ema.paths)
    # the EMA update ran once with base_tau on exactly the EMA parts; no gradient reached the copies
    tau = model.cfg.momentum.base_tau
    assert int(model.ema.num_updates) == 1 and model.ema.last_tau == tau
    moved = False
    for (o, m), init in zip(model.momentum_pairs, before):
        for p0, po, pm in zip(init, o.parameters(), m.parameters()):
            torch.testing.assert_close(pm, tau * p0 + (1 - tau) * po.detach(), rtol=1e-5, atol=1e-6)
            moved |= not torch.equal(p0, po)
    assert moved or parts == "none"
    for p in model.ema.copies.parameters():
        assert not p.requires_grad and p.grad is None


def test_fit_with_cifar_stem():
    model = METHODS["byol_ema"](make_cfg("byol_ema", "block4+projector", dataset="cifar10"))
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    online = {"train": 0, "eval": 0}
    count_forwards(model.backbone, online)
    fit_one_step(model, dataset="cifar10")
    assert online == {"train": 2, "eval": 1}


def cosine_tau(k: int, steps: int, base: float, final: float) -> float:
    """tau of the k-th EMA update (k = 1..steps) under solo-learn's schedule: base at k = 1, cosine towards final."""
    return final - (final - base) * (math.cos(math.pi * (k - 1) / steps) + 1) / 2


class EMAStepChecker(Callback):
    """Reads the online and momentum parameters of one EMA part before every batch and at the end of the fit.

    Each reading is compared with the one before it (in float64) and the comparison is kept: the global step,
    the largest deviation of the target from ``tau_k * target_{k-1} + (1 - tau_k) * online_k`` (from no change
    at all when no optimiser step came in between), how far the online part moved, and how far the target lags.
    """

    def __init__(self, path: str, steps: int, base: float, final: float) -> None:
        self.path, self.steps, self.base, self.final = path, steps, base, final
        self.previous: tuple[int, list[torch.Tensor], list[torch.Tensor]] | None = None
        self.readings: list[dict[str, float]] = []

    def _flat(self, module: torch.nn.Module) -> torch.Tensor:
        """The part's parameters as one float64 vector; of a large part (layer4: 8.4M) every k-th entry of each."""
        params = [p.detach().reshape(-1) for p in module.parameters()]
        stride = max(1, sum(p.numel() for p in params) // 50_000)
        return torch.cat([p[::stride] for p in params]).double()

    def _read(self, trainer: Trainer, model) -> None:
        online, target = self._flat(model.get_submodule(self.path)), self._flat(model.ema.copy_of(self.path))
        step = trainer.global_step
        if self.previous is None:
            self.readings.append({"step": step, "deviation": (target - online).abs().max().item()})
        else:
            step0, online0, target0 = self.previous
            if step == step0:
                expected = target0
            else:
                tau = cosine_tau(step, self.steps, self.base, self.final)
                expected = tau * target0 + (1 - tau) * online
            self.readings.append(
                {
                    "step": step,
                    "deviation": (target - expected).abs().max().item(),
                    "scale": expected.abs().max().item(),
                    "online_moved": (online - online0).abs().max().item(),
                    "lag": (target - online).abs().max().item(),
                }
            )
        self.previous = (step, online, target)

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        self._read(trainer, pl_module)  # the state after the previous batch, its EMA update included

    def on_train_end(self, trainer: Trainer, pl_module) -> None:
        self._read(trainer, pl_module)


@pytest.mark.parametrize(
    ("accumulate", "parts", "path"),
    [(1, "projector", "projector"), (2, "projector", "projector"), (2, "block4+projector", "backbone.layer4")],
)
def test_ema_in_the_training_loop_follows_the_cosine_formula(accumulate: int, parts: str, path: str):
    """A Trainer fit through the plug-in: after optimiser step k, target_k = tau_k target_{k-1} + (1 - tau_k) online_k.

    tau_k = final - (final - base) (cos(pi (k - 1) / K) + 1) / 2 over the K optimiser steps of the run (solo-learn's
    schedule), one update per optimiser step whatever accumulate_grad_batches is, none between them.
    """
    steps, base, final = 4, 0.9, 1.0
    cfg = make_cfg("byol_ema", parts)
    cfg.momentum.base_tau, cfg.momentum.final_tau = base, final
    cfg.scheduler.name = "none"  # a constant learning rate: the online part moves at every step
    cfg.accumulate_grad_batches = accumulate
    torch.manual_seed(0)
    model = METHODS["byol_ema"](cfg)
    checker = EMAStepChecker(path, steps, base, final)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        callbacks=[checker],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train, _ = make_loaders(train_size=steps * accumulate * BATCH)
    trainer.fit(model, train)

    first, *readings = checker.readings
    assert trainer.global_step == steps and len(readings) == steps * accumulate
    assert first == {"step": 0, "deviation": 0.0}  # the copies start as exact copies
    # one optimiser step (and so one EMA update) every `accumulate` batches, none in between
    assert [r["step"] for r in readings] == [(b + 1) // accumulate for b in range(steps * accumulate)]
    for before, r in zip(checker.readings, readings):
        assert r["deviation"] <= 1e-7 + 1e-6 * r["scale"], r  # float32 rounding only
        if r["step"] == before["step"]:
            assert r["online_moved"] == 0.0
        else:
            assert r["online_moved"] > 1e-3 and r["lag"] > 1e-3, r  # the online part moved; the target lags
    assert int(model.ema.num_updates) == steps
    assert model.ema.last_tau == pytest.approx(cosine_tau(steps, steps, base, final))


def _same_weights(stock, ema, perturb_backbone: bool) -> None:
    """Give the _ema model the stock model's online weights and its momentum modules as EMA copies."""
    head = ema._head
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        momentum_modules = [getattr(stock, f"momentum_{head}")] + (
            [stock.momentum_backbone] if perturb_backbone else []
        )
        for module in momentum_modules:
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    missing, unexpected = ema.load_state_dict(stock.state_dict(), strict=False)
    assert all(k.startswith("ema.") for k in missing), missing
    assert all(k.startswith("momentum_") and not k.startswith("momentum_classifier") for k in unexpected)
    sources = {"backbone": stock.momentum_backbone, head: getattr(stock, f"momentum_{head}")}
    for path in ema.ema.paths:
        ema.ema.copy_of(path).load_state_dict(sources[path].state_dict())


@pytest.mark.parametrize("parts", ["projector", "all"])
@pytest.mark.parametrize("method", MOMENTUM_METHODS)
def test_targets_match_solo_learns_momentum_path(method: str, parts: str):
    """With solo-learn's momentum backbone equal to the online one, the projector-only target is solo-learn's."""
    stock = METHODS[method](make_cfg(method))
    ema = METHODS[f"{method}_ema"](make_cfg(f"{method}_ema", parts))
    _same_weights(stock, ema, perturb_backbone=parts == "all")
    batch = random_batch()
    out_stock = BaseMomentumMethod.training_step(stock, batch, 0)
    out_ema = BaseMomentumMethod.training_step(ema, batch, 0)
    for key in ("momentum_z", "momentum_feats", "z"):
        for a, b in zip(out_stock[key], out_ema[key]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_ema["momentum_z"][0], out_ema["z"][0], atol=1e-3)  # the target is not the online z
    loss_stock, loss_ema = stock.training_step(batch, 0), ema.training_step(batch, 0)
    torch.testing.assert_close(loss_stock, loss_ema, rtol=1e-5, atol=1e-6)
    loss_ema.backward()
    assert all(p.grad is None for p in ema.ema.copies.parameters())
    assert ema.backbone.conv1.weight.grad is not None


@pytest.mark.parametrize("parts", ["none", "projector", "all"])
@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_simclr_simsiam_match_solo_learn_at_initialisation(method: str, parts: str):
    """Copies equal to the online parts: the EMA loss has solo-learn's value (its gradient differs unless 'none')."""
    stock = METHODS[method](make_cfg(method, momentum=False))
    ema = METHODS[f"{method}_ema"](make_cfg(f"{method}_ema", parts))
    missing, unexpected = ema.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("ema.", "momentum_classifier")) for k in missing)
    for online, momentum in ema.momentum_pairs:
        momentum.load_state_dict(online.state_dict())
    ema.momentum_classifier = (
        None  # solo-learn's SimCLR / SimSiam have none: compare the SSL + online classifier losses
    )
    batch = random_batch()
    loss_stock, loss_ema = stock.training_step(batch, 0), ema.training_step(batch, 0)
    torch.testing.assert_close(loss_stock, loss_ema, rtol=1e-5, atol=1e-5)
    loss_ema.backward()
    assert all(p.grad is None for p in ema.ema.copies.parameters())
    if parts != "none":
        projector_grads = [p.grad for p in ema.projector.parameters() if p.requires_grad]
        assert all(g is not None for g in projector_grads)


def test_momentum_forward_without_cache_leaves_online_batchnorm_alone():
    """A direct momentum_forward (no online pass before it) runs the shared stages without touching their BN stats."""
    model = METHODS["byol_ema"](make_cfg("byol_ema", "block4+projector"))
    x = random_batch()[1][0]
    buffers = {k: v.clone() for k, v in model.backbone.named_buffers()}
    direct = model.momentum_forward(x)
    assert all(torch.equal(v, dict(model.backbone.named_buffers())[k]) for k, v in buffers.items())
    model.base_training_step(x, torch.zeros(BATCH, dtype=torch.long))
    cached = model.momentum_forward(x)
    torch.testing.assert_close(direct["z"], cached["z"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(direct["feats"], cached["feats"], rtol=1e-5, atol=1e-5)
    assert model.ema.pending == 0


def test_checkpoint_keys():
    stock, ema = METHODS["byol"](make_cfg("byol")), METHODS["byol_ema"](make_cfg("byol_ema", "block4+projector"))
    keys_stock, keys_ema = stock.state_dict(), ema.state_dict()
    backbone = {k: v.shape for k, v in keys_stock.items() if k.startswith("backbone.")}
    assert backbone == {k: v.shape for k, v in keys_ema.items() if k.startswith("backbone.")}
    assert not any(k.startswith(SOLO_MOMENTUM_MODULES) for k in keys_ema)
    copies = {k.split(".")[2] for k in keys_ema if k.startswith("ema.copies.")}
    assert copies == {"backbone", "projector"} and any(k.startswith("ema.copies.backbone.layer4.") for k in keys_ema)
    assert not any(k.startswith("ema.copies.backbone.layer3.") for k in keys_ema)
    # half of the backbone's weights are not kept twice: only layer4 (8.4M of 11.2M parameters) is
    assert ema.ema.num_momentum_params() < sum(p.numel() for p in stock.momentum_backbone.parameters())


def _pretrain_yamls() -> list[Path]:
    """Every YAML under solo_configs/ that composes to a pretraining config (it names a method), rather than an
    option of a config group; a row YAML that extends another (hydra ``defaults``) composes to one too."""
    found = []
    for path in sorted((ROOT / "solo_configs").rglob("*.yaml")):
        node = OmegaConf.load(path)
        if isinstance(node, DictConfig) and ("method" in node or "defaults" in node):
            if "method" in compose(path):
                found.append(path)
    return found


PRETRAIN_YAMLS = _pretrain_yamls()


def test_every_yaml_is_a_config_or_an_option_of_its_groups():
    """Nothing in solo_configs/ escapes test_yaml_fits_two_steps: each other YAML is an option of a config's group."""
    assert len(PRETRAIN_YAMLS) >= 12, PRETRAIN_YAMLS
    groups = set()
    for path in PRETRAIN_YAMLS:
        for entry in OmegaConf.load(path).get("defaults", []):
            if isinstance(entry, DictConfig):
                for group, option in entry.items():
                    if not group.startswith("override "):
                        assert (path.parent / group / option).is_file(), f"{path}: no {group}/{option}"
                        groups.add(path.parent / group)
            elif entry != "_self_":  # a config this one extends: one of the pretraining configs beside it
                assert path.parent / f"{entry}.yaml" in PRETRAIN_YAMLS, f"{path}: extends {entry}"
    others = [p for p in (ROOT / "solo_configs").rglob("*.yaml") if p not in PRETRAIN_YAMLS and p.parent not in groups]
    assert not others, others


def _spec_of(value: object) -> str:
    """A YAML's momentum.parts as a spec string (a list of part names joins with '+')."""
    if isinstance(value, ListConfig):
        return "+".join(str(v) for v in value) if len(value) else "none"
    return str(value)


def check_two_step_fit(path: Path, overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A YAML (and row overrides) through solo-ema-solo-pretrain for two optimiser steps; returns the model and
    its parameters at the start, after checking what every fit must show."""
    composed = compose(path, overrides)
    method = str(composed.method)
    base_tau = float(OmegaConf.select(composed, "momentum.base_tau", default=0.99))
    final_tau = float(OmegaConf.select(composed, "momentum.final_tau", default=1.0))
    parts = str(parse_ema_spec(_spec_of(OmegaConf.select(composed, "momentum.parts", default="all"))))
    if (base_tau, final_tau) == (0, 0):
        parts = "none"
    # 5 classes: solo-learn's momentum classifier (on in the paper-era yamls) measures top-5 accuracy
    train = image_folder(tmp_path / "train", classes=5)
    argv = small_argv(path, train, overrides, "++max_steps=2", "++checkpoint.enabled=False",
                      "++auto_resume.enabled=False")
    recorder = FitRecorder(monkeypatch)
    run(argv, monkeypatch, tmp_path)
    (trainer, model, start), = recorder.runs

    assert type(model) is plugin.CLASSES[method] and model.cfg.method == method
    assert model.cfg.momentum.parts == parts and not any(n in model._modules for n in SOLO_MOMENTUM_MODULES)
    assert model.num_large_crops == 2
    for key in ("bn_backbone_out", "bn_projector_out", "bn1_position"):  # Table C.8's switches reach the model
        assert model.cfg.method_kwargs[key] == OmegaConf.select(composed, f"method_kwargs.{key}",
                                                                default=plugin_module.BN_DEFAULTS[key])
    assert (model.feats_bn is not None) == model.cfg.method_kwargs.bn_backbone_out
    # two optimiser steps, two EMA updates; the second with solo-learn's cosine tau at step 1 of 2
    assert trainer.global_step == 2 and int(model.ema.num_updates) == 2
    assert model.ema.last_tau == pytest.approx(final_tau - (final_tau - base_tau) * (math.cos(math.pi / 2) + 1) / 2)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train_")}
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    end = dict(model.named_parameters())
    copies = [n for n in end if n.startswith("ema.copies.")]
    assert bool(copies) == (parts != "none")
    if copies and base_tau < 1:
        assert any(not torch.equal(start[n], end[n]) for n in copies)  # the EMA moved the copies
    assert not logging.getLogger("lightning.pytorch").disabled  # the run left the suite's logging alone
    return model, start


@pytest.mark.parametrize(
    "path", PRETRAIN_YAMLS, ids=lambda p: str(p.relative_to(ROOT / "solo_configs").with_suffix(""))
)
def test_yaml_fits_two_steps(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each shipped YAML through solo-ema-solo-pretrain, i.e. hydra and solo-learn's main_pretrain: two steps.

    Only sizes change (crops, batch, heads, queue), the data (a generated image folder as 'custom') and the
    machine (CPU, 32-bit, no DDP); the method, momentum.parts, taus, BatchNorms, optimiser and augmentations are
    the YAML's.
    """
    model, start = check_two_step_fit(path, [], tmp_path, monkeypatch)
    end = dict(model.named_parameters())
    assert not torch.equal(start["backbone.conv1.weight"], end["backbone.conv1.weight"])  # the optimiser stepped
    if path.name.endswith("_ema_projector.yaml"):
        assert model.cfg.momentum.parts == "projector" and model.num_small_crops == 0
        assert model.ema.paths == [HEADS[model.cfg.method.removesuffix("_ema")]]


#: rows of solo_configs/paper_tables.csv fitted with their overrides (their YAMLs fit above): no encoder training
#: (Table 2), BN1 in the projector path with the kNN on (C.8), a frozen target projector at lr 4 (Table 7), and
#: SimCLR + EMA on the whole encoder (Table 1)
FITTED_ROWS = ["table2-random-encoder", "tableC8-projector-bn1", "table7-fixed-projector-lr4", "table1-simclr-ema"]


@pytest.mark.parametrize("run_name", FITTED_ROWS)
def test_table_row_with_overrides_fits_two_steps(run_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A row of the paper's tables as docs/solo_learn.md gives it (YAML + overrides) fits through solo-learn."""
    (row,) = [r for r in read_map() if r.run_name == run_name]
    # one epoch of two steps: solo-learn's warm-up (10 of max_epochs epochs, in steps) then spans both steps, so the
    # classifier's learning rate (warmed up from 0 in the random-encoder row) is above 0 at the second
    overrides = [*row.overrides, "++max_epochs=1"]
    model, start = check_two_step_fit(CONFIGS / row.config, overrides, tmp_path, monkeypatch)
    end = dict(model.named_parameters())
    moved = {n for n in end if not torch.equal(start[n], end[n])}
    if run_name == "table2-random-encoder":  # lr 0: only the online (and momentum) classifier learns
        assert moved and all(n.startswith(("classifier.", "momentum_classifier.")) for n in moved), sorted(moved)
        assert model.cfg.method_kwargs.proj_hidden_dim == 2 and model.knn_eval
    else:
        assert "backbone.conv1.weight" in moved
    if run_name == "tableC8-projector-bn1":
        assert model.feats_bn is not None and not model.bn1_on_backbone and model.knn_eval
        assert "feats_bn.weight" in moved
    if run_name == "table7-fixed-projector-lr4":  # beta 1: the target projector stays at its initial weights
        assert not any(n.startswith("ema.copies.") for n in moved) and model.ema.paths == ["projector"]
    if run_name == "table1-simclr-ema":
        assert model.ema.paths == ["backbone", "projector"] and model.cfg.momentum.base_tau == 0.9


class KNNBankReader(Callback):
    """Reads solo-learn's kNN bank (training and validation features) just before it computes the accuracy."""

    def __init__(self) -> None:
        self.banks: list[tuple[torch.Tensor, ...]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module) -> None:  # runs before the model's own hook
        if not trainer.sanity_checking:
            knn = pl_module.knn
            self.banks.append(tuple(torch.cat(getattr(knn, name)).clone() for name in (
                "train_features", "train_targets", "test_features", "test_targets")))


def paper_knn_top1(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor) -> float:
    """The paper's KNN-1 written out in float64: the 20 nearest by euclidean distance on the raw features vote for
    their class with weight 1 / (d + 1e-5); top-1 accuracy in percent."""
    d = torch.cdist(test.double(), train.double())
    dist, idx = d.topk(min(20, len(train)), dim=1, largest=False)
    scores = torch.zeros(len(test), int(train_y.max()) + 1, dtype=torch.float64)
    scores.scatter_add_(1, train_y[idx], 1 / (dist + 1e-5))
    return (scores.argmax(1) == test_y).double().mean().item() * 100


def test_paper_knn_inside_solo_learn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Table C.8's KNN-1 inside solo-learn: the row tableC8-projector (kNN on) through main_pretrain with a validation
    set logs solo-learn's val_knn_acc1, which is the paper's metric on solo-learn's bank (both large crops of every
    training step of the epoch, then the validation features): the formula written out, and the engine's
    ``--knn_metric paper`` (solo_ema.engine.knn), give the same accuracy."""
    from solo_ema.engine.knn import knn_accuracy

    (row,) = [r for r in read_map() if r.run_name == "tableC8-projector"]
    train = image_folder(tmp_path / "train", classes=5)
    val = image_folder(tmp_path / "val", classes=5, per_class=3, size=40)
    argv = small_argv(CONFIGS / row.config, train, row.overrides, "++max_epochs=1", "++limit_train_batches=2",
                      f"++data.val_path={val}", "++checkpoint.enabled=False", "++auto_resume.enabled=False")
    reader = KNNBankReader()
    recorder = FitRecorder(monkeypatch, [reader])
    run(argv, monkeypatch, tmp_path)
    (trainer, model, _), = recorder.runs
    assert model.knn_eval and (model.knn.k, model.knn.distance_fx) == (20, "euclidean")
    (bank,) = reader.banks
    train_x, train_y, test_x, test_y = bank
    assert train_x.shape == (2 * 2 * BATCH, model.features_dim) and len(test_x) == 15  # 2 steps x 2 crops; 15 images
    expected = paper_knn_top1(*bank)
    engine, _ = knn_accuracy(train_x, train_y, test_x, test_y, 5, k=20, distance="paper")
    assert float(trainer.callback_metrics["val_knn_acc1"]) == pytest.approx(expected) == pytest.approx(engine)
    assert not model.knn.train_features  # solo-learn's compute emptied the bank for the next epoch


def test_console_entry_runs_solo_learns_main_pretrain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CLI with a shipped config and a relative --config-path on an image folder: one epoch, a checkpoint."""
    train = image_folder(tmp_path / "train", size=32)
    config_path = os.path.relpath(CONFIGS / "cifar", tmp_path)
    argv = [
        "--solo_root",
        str(SOLO_ROOT),
        "--config-path",
        config_path,
        "--config-name",
        "simclr_ema_projector.yaml",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
        "++data.dataset=custom",
        f"++data.train_path={train}",
        "++data.val_path=null",
        "++data.num_workers=0",
        f"++optimizer.batch_size={BATCH}",
        "++method_kwargs.proj_hidden_dim=64",
        "++max_epochs=1",
        "++accelerator=cpu",
        '++devices="1"',
        "++strategy=auto",
        "++precision=32",
        "++sync_batchnorm=False",
        f"++checkpoint.dir={tmp_path / 'ckpt'}",
        "++auto_resume.enabled=False",
        "++enable_progress_bar=False",
    ]
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)  # the relative --config-path is relative to the working directory
    assert solo_pretrain.main(argv) == 0
    (ckpt,) = (tmp_path / "ckpt" / "simclr_ema").rglob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert "backbone.conv1.weight" in state and "ema.copies.projector.0.weight" in state
    assert not any(k.startswith(("momentum_backbone.", "momentum_projector.")) for k in state)
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["method"] == "simclr_ema" and args["momentum"]["parts"] == "projector"


def test_capture_survives_sync_batchnorm_conversion():
    """sync_batchnorm (set in every shipped yaml) replaces BN modules; the capture hooks sit on containers."""
    model = METHODS["byol_ema"](make_cfg("byol_ema", "block4+projector"))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model and isinstance(model.backbone.bn1, torch.nn.SyncBatchNorm)
    assert isinstance(model.ema.copy_of("backbone.layer4")[0].bn1, torch.nn.SyncBatchNorm)
    x = random_batch()[1][0]
    model.base_training_step(x, torch.zeros(BATCH, dtype=torch.long))
    assert model.ema.pending == 1
    captured = model.ema._held[id(x)][1]
    assert captured["input"].shape == (BATCH, 256, 2, 2) and not captured["input"].requires_grad
    assert model.momentum_forward(x)["z"].shape == (BATCH, METHOD_KWARGS["byol"]["proj_output_dim"])


def test_small_crops_are_students_only():
    """BYOL multicrop: small crops run online only; their captures never reach a target pass."""
    cfg = make_cfg("byol_ema", "projector")
    cfg.data.num_small_crops = 2
    model = METHODS["byol_ema"](cfg)
    online = {"train": 0, "eval": 0}
    count_forwards(model.backbone, online)
    batch = random_batch()
    batch[1] += [torch.randn(BATCH, 3, 16, 16) for _ in range(2)]
    outs = BaseMomentumMethod.training_step(model, batch, 0)
    assert online["train"] == 4 and len(outs["p"]) == 4 and len(outs["momentum_z"]) == 2
    assert model.ema.pending == 0
    for z_online, z_target in zip(outs["z"][:2], outs["momentum_z"]):
        torch.testing.assert_close(z_online.detach(), z_target)  # copy == online projector at initialisation
    assert torch.isfinite(model.training_step(batch, 0))
