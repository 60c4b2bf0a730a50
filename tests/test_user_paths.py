"""Paths users run, executed inside a real Trainer and checked against references computed here in float64.

The momentum classifier (trained on the momentum backbone's features), ``val_knn_acc1`` in the Lightning
loop, a ResNet-50 build and its parameter count, and BN1 (``--bn_backbone_out``) left untouched by the
target pass.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import small_argv
from torch import nn
from torch.utils.data import DataLoader, Dataset

from solo_ema.engine import base
from solo_ema.engine.backbones import build_backbone
from solo_ema.engine.knn import knn_accuracy
from solo_ema.pretrain import build_cfg, build_model
from solo_ema.train import build_trainer

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES, TRAIN, VAL, BATCH, SIZE, K = 4, 16, 24, 8, 16, 8


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n seeded 16x16 images (a weak colour per label 0..3 under a random tint and ramp), and the labels.

    The tint spreads the features' directions, so the kNN's temperature and k change its predictions.
    """
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % CLASSES
    colour = torch.stack([torch.cos(y * 1.7), torch.sin(y * 1.1), torch.cos(y * 0.6)], dim=1)
    offset = 1.5 * torch.randn(n, 3, 1, 1, generator=gen)
    ramp = torch.linspace(-1, 1, SIZE) * torch.randn(n, 1, 1, 1, generator=gen)
    return 0.5 * colour[:, :, None, None] + offset + ramp + 0.3 * torch.randn(n, 3, SIZE, SIZE, generator=gen), y


class TwoViews(Dataset):
    """Training items [index, [view 0, view 1], label] of fixed tensors (the pretraining batch format)."""

    def __init__(self) -> None:
        x, self.y = _images(TRAIN, 1)
        self.views = (x, x.flip(-1) + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))

    def __len__(self) -> int:
        return TRAIN

    def __getitem__(self, i: int) -> list[Any]:
        return [i, [v[i] for v in self.views], self.y[i]]


class Recorder(pl.Callback):
    """Snapshots around every training step and records what the momentum classifier and the kNN banks see."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.cls_calls: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
        self.banked: dict[str, list[torch.Tensor]] = {"train": [], "val": []}
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # the momentum backbone must differ from the online one for the test to bite
            for p in pl_module.ema.copy_of("backbone").parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        self.initial = {k: v.clone() for k, v in pl_module.momentum_classifier.state_dict().items()}

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.cls_calls.append((pl_module.training, args[0].detach().clone(), out.detach().clone()))

        pl_module.momentum_classifier.register_forward_hook(hook)
        for name, bank in (("train", pl_module.knn_bank), ("val", pl_module.knn_val)):
            add = bank.add

            def recording(feats: torch.Tensor, labels: torch.Tensor, add=add, name=name) -> None:
                self.banked[name].append(feats.detach().clone())
                add(feats, labels)

            bank.add = recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        self.steps.append({
            "batch": batch,
            "online": copy.deepcopy(pl_module.backbone),
            "momentum": copy.deepcopy(pl_module.ema.copy_of("backbone")),
            "cls": {k: v.clone() for k, v in pl_module.momentum_classifier.state_dict().items()},
            "lr": groups["momentum_classifier"],
        })

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["cls_after"] = {k: v.clone() for k, v in pl_module.momentum_classifier.state_dict().items()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory) -> dict[str, Any]:
    """One epoch of BYOL (EMA on everything) with the momentum classifier and the kNN on, in the real Trainer."""
    tmp = tmp_path_factory.mktemp("loop")
    cfg = build_cfg(small_argv(
        "all", "--momentum_classifier", "--knn_eval", "--knn_k", str(K), "--max_steps", "-1", "--max_epochs", "1",
        "--optimizer", "sgd", "--lr", "0.05", "--classifier_lr", "0.5", "--warmup_steps", "0",
        "--log_dir", str(tmp), "--name", "loop", "--num_workers", "0",
    ))
    torch.manual_seed(0)
    model = build_model(cfg)
    rec = Recorder()
    trainer = build_trainer(cfg, [rec], tmp / "loop")
    x_val, y_val = _images(VAL, 4)
    train = DataLoader(TwoViews(), batch_size=BATCH, shuffle=True, drop_last=True)
    val = DataLoader(list(zip(x_val, y_val, strict=True)), batch_size=BATCH)
    knn_calls: list[tuple[tuple, dict]] = []

    def recording_knn(*args: Any, **kwargs: Any) -> tuple[float, float]:
        knn_calls.append((args, kwargs))
        return knn_accuracy(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "knn_accuracy", recording_knn)
        trainer.fit(model, train, val)
    return {"model": model, "rec": rec, "rows": _rows(tmp / "loop" / "metrics.csv"), "val": (x_val, y_val),
            "knn_calls": knn_calls}


def _logged(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column)]


def _features(module: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    """A copy of a backbone on x (train: batch statistics; eval: running ones), as float64."""
    with torch.no_grad():
        return copy.deepcopy(module).train(train)(x).double()


def test_momentum_classifier_sees_momentum_features_and_trains_by_sgd(loop_run) -> None:
    """Each step: the momentum classifier's input is the momentum backbone on the crop; its logged loss is
    the mean CE over the two crops; its weights take exactly the SGD step (momentum 0.9) of that loss."""
    rec, rows = loop_run["rec"], loop_run["rows"]
    assert len(rec.steps) == TRAIN // BATCH
    train_calls = [c for c in rec.cls_calls if c[0]]
    assert len(train_calls) == 2 * len(rec.steps)
    losses, accs = _logged(rows, "train_momentum_class_loss_step"), _logged(rows, "train_momentum_acc1_step")
    assert len(losses) == len(rec.steps)
    buf = None
    for s, step in enumerate(rec.steps):
        _, crops, y = step["batch"]
        w = step["cls"]["weight"].double().requires_grad_()
        b = step["cls"]["bias"].double().requires_grad_()
        loss, hits = 0.0, 0.0
        for c, x in enumerate(crops):
            feats = _features(step["momentum"], x, True)
            assert not torch.allclose(feats, _features(step["online"], x, True), atol=1e-3)  # not the online ones
            _, seen, logits_seen = train_calls[2 * s + c]
            torch.testing.assert_close(seen.double(), feats, rtol=1e-4, atol=1e-4)
            logits = feats @ w.T + b
            torch.testing.assert_close(logits_seen.double(), logits.detach(), rtol=1e-4, atol=1e-4)
            loss = loss + F.cross_entropy(logits, y) / 2
            hits += float((logits.argmax(1) == y).double().mean()) * 50
        assert losses[s] == pytest.approx(float(loss), rel=1e-5)
        assert accs[s] == pytest.approx(hits, abs=1e-4)
        grads = torch.autograd.grad(loss, [w, b])
        buf = list(grads) if buf is None else [0.9 * m + g for m, g in zip(buf, grads, strict=True)]
        for key, m in zip(("weight", "bias"), buf, strict=True):
            expected = step["cls"][key].double() - step["lr"] * m
            torch.testing.assert_close(step["cls_after"][key].double(), expected, rtol=0, atol=1e-6)
    final = loop_run["model"].momentum_classifier.weight
    assert not torch.equal(final, rec.initial["weight"])


def test_momentum_classifier_validation_metrics_match_reference(loop_run) -> None:
    """momentum_val_loss / momentum_val_acc1: the final momentum backbone (eval) and classifier on the val set."""
    model, rows = loop_run["model"], loop_run["rows"]
    x, y = loop_run["val"]
    feats = _features(model.ema.copy_of("backbone"), x, False)
    with torch.no_grad():
        logits = feats @ model.momentum_classifier.weight.double().T + model.momentum_classifier.bias.double()
    assert _logged(rows, "momentum_val_loss") == [pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)]
    acc = float((logits.argmax(1) == y).double().mean() * 100)
    assert _logged(rows, "momentum_val_acc1") == [pytest.approx(acc, abs=1e-4)]


def _weighted_knn(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, k: int, t: float,
                  classes: int) -> torch.Tensor:
    """Class scores of a cosine kNN: the k most similar training rows vote with exp(cos / t); float64, loops."""
    train, test = train.double(), test.double()
    scores = torch.zeros(len(test), classes, dtype=torch.float64)
    for i, q in enumerate(test):
        sims = [float(q @ r) / (q.norm() * r.norm()) for r in train]
        for j in sorted(range(len(sims)), key=lambda j: -sims[j])[:k]:
            scores[i, train_y[j]] += math.exp(sims[j] / t)
    return scores


def test_val_knn_acc1_matches_a_weighted_knn_on_the_banked_features(loop_run) -> None:
    """The banks hold online crop-0 train features (train mode) and val features (eval); val_knn_acc1/acc5
    equal a cosine kNN (k, T 0.07) computed here on them."""
    rec, rows, model = loop_run["rec"], loop_run["rows"], loop_run["model"]
    assert len(rec.banked["train"]) == len(rec.steps) and len(rec.banked["val"]) == math.ceil(VAL / BATCH)
    for step, banked in zip(rec.steps, rec.banked["train"], strict=True):
        torch.testing.assert_close(banked.double(), _features(step["online"], step["batch"][1][0], True),
                                   rtol=1e-5, atol=1e-5)
    x, y = loop_run["val"]
    val = torch.cat(rec.banked["val"])
    torch.testing.assert_close(val.double(), _features(model.backbone, x, False), rtol=1e-5, atol=1e-5)
    train_y = torch.cat([s["batch"][2] for s in rec.steps])
    # the engine hands the kNN this epoch's banks and the configured k, temperature and metric
    ((args, kwargs),) = loop_run["knn_calls"]
    # the training bank comes as the batches it was banked in (the kNN streams them; nothing concatenates it)
    assert torch.equal(torch.cat(args[0]), torch.cat(rec.banked["train"])) and torch.equal(torch.cat(args[1]), train_y)
    assert torch.equal(args[2], val) and torch.equal(args[3], y) and args[4] == model.num_classes == 10
    assert kwargs == {"k": K, "temperature": 0.07, "distance": "cosine"}
    scores = _weighted_knn(torch.cat(rec.banked["train"]), train_y, val, K, 0.07, model.num_classes)
    acc1 = float((scores.argmax(1) == y).double().mean() * 100)
    assert _logged(rows, "val_knn_acc1") == [pytest.approx(acc1, abs=1e-4)]
    assert 0 < acc1 < 100  # neither trivial outcome, so a wrong neighbour set or weighting would show
    # top-5 over 10 classes, at most K = 5 of them voted for: classes tied at score 0 may fall either way
    true = scores.gather(1, y[:, None])
    above, tied = (scores > true).sum(1), (scores == true).sum(1) - 1
    sure, possible = float(((above + tied) < 5).double().mean() * 100), float((above < 5).double().mean() * 100)
    (acc5,) = _logged(rows, "val_knn_acc5")
    assert sure - 1e-4 <= acc5 <= possible + 1e-4 and acc5 >= acc1


# ----------------------------------------------------------------------------------------------------------
# ResNet-50


def _bottleneck_resnet_params(layers: list[int], stem_kernel: int) -> int:
    """Parameters of a bottleneck ResNet without fc, from the architecture (convs without bias, affine BN)."""
    total = 3 * 64 * stem_kernel**2 + 2 * 64
    inplanes = 64
    for planes, blocks in zip((64, 128, 256, 512), layers, strict=True):
        for i in range(blocks):
            width, out = planes, planes * 4
            total += inplanes * width + 2 * width  # 1x1 reduce + BN
            total += 9 * width * width + 2 * width  # 3x3 + BN
            total += width * out + 2 * out  # 1x1 expand + BN
            if i == 0:  # projection shortcut: 1x1 conv + BN
                total += inplanes * out + 2 * out
            inplanes = out
    return total


def test_resnet50_backbone_parameter_count_and_forward() -> None:
    """ResNet-50 without fc: 23,508,032 parameters (ImageNet stem), 2048 features; the CIFAR stem swaps
    the 7x7 stem conv for a 3x3 one; a model built with --backbone resnet50 copies layer4 and runs a step."""
    assert _bottleneck_resnet_params([3, 4, 6, 3], 7) == 23_508_032
    with torch.device("meta"):  # structure only: the count needs no initialised weights
        net, dim = build_backbone("resnet50")
    assert dim == 2048 and sum(p.numel() for p in net.parameters()) == 23_508_032
    cfg = build_cfg(small_argv("block4+projector", "--backbone", "resnet50", "--proj_hidden_dim", "16",
                               "--pred_hidden_dim", "16", "--proj_output_dim", "8"))
    torch.manual_seed(0)
    model = build_model(cfg)
    layer4 = _bottleneck_resnet_params([3, 4, 6, 3], 3) - _bottleneck_resnet_params([3, 4, 6, 0], 3)
    projector = 2048 * 16 + 16 + 2 * 16 + 16 * 8 + 8  # Linear, BN, ReLU, Linear
    assert model.features_dim == 2048 and model.ema.num_momentum_params() == layer4 + projector
    small_stem = sum(p.numel() for p in model.backbone.parameters())
    assert small_stem == _bottleneck_resnet_params([3, 4, 6, 3], 3) == 23_500_352
    gen = torch.Generator().manual_seed(1)
    batch = [torch.arange(2), [torch.randn(2, 3, 8, 8, generator=gen) for _ in range(2)], torch.tensor([0, 1])]
    out = model(batch[1][0])
    assert out["feats"].shape == (2, 2048) and out["logits"].shape == (2, 10)
    assert math.isfinite(float(model.training_step(batch, 0)))


# ----------------------------------------------------------------------------------------------------------
# BN1 and the target pass


@pytest.mark.parametrize("spec", ["all", "block4+projector", "backbone"])
def test_target_pass_leaves_shared_bn1_statistics_bitwise_unchanged(spec: str) -> None:
    """BN1 is shared (never a momentum copy) and these placements run it in the target pass: the online pass
    moves its statistics, the target pass (on the target features, batch statistics) leaves them bitwise as they
    were, and the target z is the projector on those features normalised with their own batch statistics."""
    cfg = build_cfg(small_argv(spec, "--bn_backbone_out"))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    bn = model.feats_bn
    assert model.ema.copy_of("feats_bn") is None  # shared
    before_online = {k: v.clone() for k, v in bn.state_dict().items()}
    snapshots, targets = [], []
    forward = model.momentum_forward

    def snapshot_then_target(x: torch.Tensor) -> dict[str, torch.Tensor]:
        snapshots.append({k: v.clone() for k, v in bn.state_dict().items()})
        out = forward(x)
        targets.append((x, out))
        return out

    model.momentum_forward = snapshot_then_target
    gen = torch.Generator().manual_seed(7)
    crops = [torch.randn(8, 3, 16, 16, generator=gen) for _ in range(2)]
    model.training_step([torch.arange(8), crops, torch.randint(0, 10, (8,), generator=gen)], 0)
    after = bn.state_dict()
    assert len(snapshots) == 2 and int(after["num_batches_tracked"]) == 2
    assert not torch.equal(snapshots[0]["running_mean"], before_online["running_mean"])
    for key in after:
        assert torch.equal(after[key], snapshots[0][key]) and torch.equal(snapshots[1][key], snapshots[0][key]), key
    # the target z went through BN1 with batch statistics and the momentum projector
    x, out = targets[0]
    with torch.no_grad():
        normed = F.batch_norm(out["feats"], None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        momentum_projector = model.ema.copy_of("projector")
        projector = copy.deepcopy(model.projector if momentum_projector is None else momentum_projector)
        torch.testing.assert_close(out["z"], projector(normed))
