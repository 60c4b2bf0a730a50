"""solo-ema-linear: exact backbone loading from a checkpoint, a few training steps, metrics and usage errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from solo_ema.linear import LOG_COLUMNS, load_backbone, main
from solo_ema.pretrain import build_cfg, build_model

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_HEADS = ["--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--proj_output_dim", "32"]


def make_folders(root: Path, classes: int = 3, per_class: int = 6, size: int = 16) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: seeded images whose colour depends on the class."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = (rng.random((size, size, 3)) * 60 + 60 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def save_checkpoint(path: Path, argv: list[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """A Lightning-style checkpoint of a freshly built model whose online backbone differs from its EMA copy."""
    cfg = build_cfg(argv)
    torch.manual_seed(seed)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # online != its momentum copy != a fresh initialisation
        for p in model.backbone.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=gen)
            m.running_var.uniform_(0.5, 2, generator=gen)
    state = model.state_dict()
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": OmegaConf.to_container(cfg, resolve=True)},
                "epoch": 0}, path)
    return state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(data root, checkpoint, its state_dict): BYOL with EMA on everything, a 3-class folder of 16-px images."""
    root = tmp_path_factory.mktemp("linear")
    data = make_folders(root / "data")
    ckpt = root / "last.ckpt"
    argv = ["--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--train_dir", "train",
            "--val_dir", "val", "--crop_size", "16", "--batch_size", "8", "--max_epochs", "1", "--ema_parts", "all",
            "--name", "tiny", *SMALL_HEADS]
    state = save_checkpoint(ckpt, argv)
    return data, ckpt, state


def test_loads_exactly_the_checkpoint_backbone(tiny) -> None:
    """The rebuilt backbone holds exactly the checkpoint's backbone.* tensors (not the EMA copy), frozen, in eval."""
    _, ckpt, state = tiny
    backbone, features_dim, cfg = load_backbone(ckpt)
    saved = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    loaded = backbone.state_dict()
    assert set(loaded) == set(saved) and len(saved) > 0
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    momentum = {k[len("ema.copies.backbone."):]: v for k, v in state.items() if k.startswith("ema.copies.backbone.")}
    assert momentum and not torch.equal(momentum["conv1.weight"], loaded["conv1.weight"])
    assert features_dim == 512 and cfg["name"] == "tiny"
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.conv1.kernel_size == (7, 7)  # 'custom' pretraining used the ImageNet stem


def test_cifar_checkpoint_gets_the_cifar_stem(tmp_path) -> None:
    """A CIFAR checkpoint is rebuilt with the 3x3 stem and no max-pool, and its weights load strictly."""
    ckpt = tmp_path / "cifar.ckpt"
    state = save_checkpoint(ckpt, ["--method", "simclr", "--dataset", "cifar10", "--max_epochs", "1",
                                   "--proj_hidden_dim", "16", "--proj_output_dim", "8"])
    backbone, _, _ = load_backbone(ckpt)
    assert backbone.conv1.kernel_size == (3, 3)
    assert isinstance(backbone.maxpool, torch.nn.Identity)
    assert torch.equal(backbone.conv1.weight, state["backbone.conv1.weight"])


@pytest.mark.parametrize("precompute", [False, True])
def test_linear_trains_a_few_steps_and_reports_top1_top5(tiny, tmp_path, capsys, precompute) -> None:
    """A few steps on the tiny folder: exit 0, top-1 / top-5 in [0, 100], a metrics.csv row per epoch."""
    data, ckpt, _ = tiny
    argv = ["--pretrained_feature_extractor", str(ckpt), "--data_dir", str(data), "--train_dir", "train",
            "--val_dir", "val", "--max_epochs", "3", "--max_steps", "4", "--batch_size", "8", "--num_workers", "0",
            "--log_dir", str(tmp_path / "runs"), "--name", "lin"]
    if precompute:
        argv.append("--precompute_features")
    assert main(argv) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "lin" / "results.json").read_text())
    assert 0.0 <= results["top1"] <= 100.0 and 0.0 <= results["top5"] <= 100.0
    assert results["top1"] <= results["top5"]
    assert results["steps"] == 4 and results["epochs"] == 2  # 18 images / batch 8: 3 steps an epoch, then 1
    assert out.strip().splitlines()[-1].startswith(f"top-1 {results['top1']:.2f} | top-5 {results['top5']:.2f}")
    with (tmp_path / "runs" / "lin" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r["step"]) for r in rows] == [3, 4]
    # the lr each epoch starts with: cosine decay over the 4 steps from 0.1 (epoch 0 at step 0, epoch 1 at step 3)
    lrs = [0.1 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in (0, 3)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(lrs, rel=1e-6)
    assert float(rows[-1]["val_acc1"]) == pytest.approx(results["top1"])


def test_linear_bad_checkpoint_is_one_line_exit_2(tmp_path, capsys) -> None:
    """A missing checkpoint, or one without a config: exit 2 with one error line."""
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    for path in (tmp_path / "missing.ckpt", bad):
        assert main(["--pretrained_feature_extractor", str(path), "--log_dir", str(tmp_path / "runs")]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1 and lines[0].startswith("solo-ema-linear: error: "), err
    assert not (tmp_path / "runs").exists()



@pytest.mark.parametrize(("precompute", "epochs"), [(True, 15), (False, 8)])
def test_linear_separates_a_colour_coded_set_well_above_chance(tmp_path, precompute, epochs) -> None:
    """4 classes of distinct mean colour are linearly separable in the features of a randomly initialised
    backbone: held-out top-1 far above the 25% of chance, the training loss falls well below ln 4."""
    data = make_folders(tmp_path / "data", classes=4, per_class=8)
    ckpt = tmp_path / "init.ckpt"
    cfg = build_cfg(["--method", "byol", "--dataset", "custom", "--data_dir", str(data), "--train_dir", "train",
                     "--val_dir", "val", "--crop_size", "16", "--max_epochs", "1", "--name", "init", *SMALL_HEADS])
    torch.manual_seed(0)
    torch.save({"state_dict": build_model(cfg).state_dict(),
                "hyper_parameters": {"cfg": OmegaConf.to_container(cfg, resolve=True)}}, ckpt)
    argv = ["--pretrained_feature_extractor", str(ckpt), "--max_epochs", str(epochs), "--batch_size", "8",
            "--num_workers", "0", "--log_dir", str(tmp_path / "runs"), "--name", "lin", "--min_scale", "0.5"]
    if precompute:
        argv.append("--precompute_features")
    assert main(argv) == 0
    results = json.loads((tmp_path / "runs" / "lin" / "results.json").read_text())
    with (tmp_path / "runs" / "lin" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert results["top1"] >= 75.0
    assert float(rows[-1]["train_loss"]) < 0.5 * math.log(4) < float(rows[0]["train_loss"])


def test_offline_paper_knn_matches_brute_force_on_the_frozen_features(tiny, tmp_path, capsys) -> None:
    """--knn_metric paper --knn_only: results.json's knn_top1 is the paper metric (raw euclidean, 1/(d+1e-5),
    k = 20) of the test features against the un-augmented training features, recomputed here in float64, on
    images whose class does not show (so the metric decides: the cosine kNN scores differently here)."""
    from torch.utils.data import DataLoader

    from solo_ema.linear import extract_features, make_dataset, test_transform

    _, ckpt, _ = tiny
    rng = np.random.default_rng(3)
    data = tmp_path / "noise"
    for split in ("train", "val"):
        for c in range(4):
            (data / split / f"c{c}").mkdir(parents=True)
            for i in range(8):
                pixels = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(data / split / f"c{c}" / f"{i}.png")
    argv = ["--pretrained_feature_extractor", str(ckpt), "--data_dir", str(data), "--train_dir", "train",
            "--val_dir", "val", "--batch_size", "8", "--num_workers", "0", "--log_dir", str(tmp_path / "runs"),
            "--name", "knn", "--knn_metric", "paper", "--knn_only", "--accelerator", "cpu"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "runs" / "knn" / "results.json").read_text())
    assert "top1" not in results and results["knn_metric"] == "paper" and results["knn_k"] == 20
    backbone, _, _ = load_backbone(ckpt)
    info = {"dataset": "custom", "train_path": str(data / "train"), "val_path": str(data / "val")}
    feats = {}
    for train in (True, False):
        ds = make_dataset(info, train, test_transform("custom", 16), False, None, 5)
        feats[train] = extract_features(backbone, DataLoader(ds, batch_size=8), torch.device("cpu"), None)
    bank, bank_y = (t.double().numpy() for t in feats[True])
    test, test_y = (t.double().numpy() for t in feats[False])

    def top1(paper: bool) -> float:
        hits = 0
        unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
        for q, y in zip(test, test_y):
            votes = np.zeros(4)
            if paper:
                d = np.sqrt(((bank - q) ** 2).sum(axis=1))
                for j in np.argsort(d, kind="stable")[:20]:
                    votes[int(bank_y[j])] += 1.0 / (d[j] + 1e-5)
            else:
                sim = unit @ (q / np.linalg.norm(q))
                for j in np.argsort(-sim, kind="stable")[:20]:
                    votes[int(bank_y[j])] += np.exp(sim[j] / 0.07)
            hits += int(np.argmax(votes) == y)
        return 100.0 * hits / len(test_y)

    assert top1(paper=True) != top1(paper=False)
    assert results["knn_top1"] == pytest.approx(top1(paper=True), abs=1e-9)
    assert main([a for a in argv if a not in ("--knn_metric", "paper")]) == 2
    assert "--knn_only: needs --knn_metric" in capsys.readouterr().err
