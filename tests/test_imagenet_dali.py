"""Tests of the ImageNet/ImageNet-100/custom image folders, the method recipes and the DALI loader."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import logged_taus
from PIL import Image

from solo_ema.data import (
    DATASETS,
    IMAGENET_METHODS,
    ImageNet100Folder,
    UnreadableImageError,
    ViewRecipe,
    build_dataset,
    build_eval_loader,
    build_pretrain_loader,
    image_loader,
    imagenet100_classes,
    imagenet_recipes,
    pretrain_transform,
    torchvision_view_params,
)
from solo_ema.data.dali import build_dali_pretrain_loader, dali_available, dali_op_args, dali_view_params
from solo_ema.pretrain import main as pretrain_main

REPO = Path(__file__).resolve().parents[1]
needs_dali = pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI is not installed (pip install -e '.[dali]'): DALI loader not tested"
)
CLASSES = ("ant", "bee", "cow")  # sorted: labels 0, 1, 2
PER_CLASS = 8
MEAN, STD = DATASETS["custom"].mean, DATASETS["custom"].std
# A small DINO-like recipe that turns every op on: 2 large crops of 64 px, 2 small crops of 32 px.
SMALL_DINO = [
    ViewRecipe(crop_size=64, num_crops=2, gaussian_prob=0.5, solarization_prob=0.5),
    ViewRecipe(crop_size=32, num_crops=2, min_scale=0.05, max_scale=0.4, gaussian_prob=1.0),
]
# Everything random off and the whole image: each crop is the (resized) image itself.
PLAIN = ViewRecipe(
    crop_size=16, min_scale=1.0, max_scale=1.0, color_jitter_prob=0.0, gray_scale_prob=0.0,
    horizontal_flip_prob=0.0, num_crops=1,
)


def _colour(k: int, i: int) -> tuple[int, int, int]:
    """The solid colour of image i of class k (distinct for every image)."""
    return (40 + 80 * k, 20 + 25 * i, 200 - 20 * i)


def _write_jpegs(root: Path, classes=CLASSES, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    """Solid-colour JPEGs of varied sizes, one folder per class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = tuple(int(v) for v in rng.integers(24, 90, 2))
            Image.new("RGB", size, _colour(k, i)).save(root / name / f"{i:02d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A custom image folder: 3 classes x 8 JPEGs of 24-90 px."""
    return _write_jpegs(tmp_path_factory.mktemp("jpegs"))


def _bounds() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (0 - mean) / std and (1 - mean) / std, shaped for N x 3 x H x W."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def _check_epoch(loader, samples, classes) -> list[int]:
    """Check every batch of one epoch of a loader of SMALL_DINO crops; return the indexes seen."""
    low, high = _bounds()
    seen = []
    for batch in loader:
        assert isinstance(batch, list) and len(batch) == 3
        indexes, crops, targets = batch
        assert isinstance(crops, list)
        assert [tuple(c.shape) for c in crops] == [(4, 3, 64, 64)] * 2 + [(4, 3, 32, 32)] * 2
        assert all(c.dtype == torch.float32 for c in crops)
        assert indexes.dtype == torch.int64 and targets.dtype == torch.int64
        for c in crops:
            assert torch.isfinite(c).all()
            assert (c >= low - 1e-4).all() and (c <= high + 1e-4).all()
        for i, y in zip(indexes.tolist(), targets.tolist()):
            path, label = samples[i]
            assert label == y and Path(path).parent.name == classes[y]
        seen += indexes.tolist()
    return seen


@needs_dali
def test_both_loaders_yield_the_training_format_with_the_same_labels(folder):
    """torchvision and DALI loaders: [indexes, [crops], targets], shapes, dtypes, ranges, sorted-folder labels."""
    tv = build_pretrain_loader("custom", folder, SMALL_DINO, batch_size=4, num_workers=0)
    dali = build_dali_pretrain_loader("custom", folder, SMALL_DINO, batch_size=4, num_workers=1, device="cpu")
    dataset = tv.dataset.dataset
    assert dataset.classes == list(CLASSES)
    samples = dataset.samples
    assert dali.files == [os.path.relpath(p, folder) for p, _ in samples]  # same list, same order
    assert dali.targets.tolist() == [y for _, y in samples] == [k for k in range(3) for _ in range(PER_CLASS)]
    assert len(tv) == len(dali) == 3 * PER_CLASS // 4
    for loader in (tv, dali):
        seen = _check_epoch(loader, samples, CLASSES)
        assert len(seen) == 3 * PER_CLASS and sorted(seen) == list(range(3 * PER_CLASS))
    # both built from the same recipes: the DALI pipeline's resolved views equal torchvision's ops
    tv_params = [torchvision_view_params(t, n) for t, n in pretrain_transform("custom", SMALL_DINO).pipelines]
    assert dali.view_params == tv_params


@needs_dali
def test_batch_indexes_point_at_the_images_they_come_from(folder):
    """With all randomness off, crop i of a batch has the colour of image indexes[i], on both paths."""
    tv = build_pretrain_loader("custom", folder, [PLAIN], batch_size=6, num_workers=0)
    dali = build_dali_pretrain_loader("custom", folder, [PLAIN], batch_size=6, num_workers=1, device="cpu", seed=3)
    samples = tv.dataset.dataset.samples
    expected = torch.tensor(
        [_colour(CLASSES.index(Path(p).parent.name), int(Path(p).stem)) for p, _ in samples], dtype=torch.float32
    )
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    for loader in (tv, dali):
        for indexes, (crop,), _ in loader:
            rgb = (crop.mean(dim=(2, 3)) * std + mean) * 255
            assert torch.allclose(rgb, expected[indexes], atol=4.0), (rgb, expected[indexes])


def test_resolved_parameters_of_both_paths_are_equal_for_every_method():
    """Every ImageNet method recipe resolves to the same parameter dicts on the torchvision and DALI paths."""
    info = DATASETS["imagenet"]
    resolved = {}
    for method in IMAGENET_METHODS:
        recipes = imagenet_recipes(method)
        tv = [torchvision_view_params(t, n) for t, n in pretrain_transform("imagenet", recipes).pipelines]
        dali = [dali_view_params(r, info.mean, info.std) for r in recipes]
        assert tv == dali, method
        resolved[method] = tv
    assert resolved["mocov2plus"] == resolved["simsiam"]  # the same MoCo v2 augmentations
    assert len({json.dumps(v, sort_keys=True) for v in resolved.values()}) == len(IMAGENET_METHODS) - 1
    byol = resolved["byol"]
    assert [v["gaussian_blur"]["prob"] for v in byol] == [1.0, 0.1]
    assert byol[0]["solarization"] is None and byol[1]["solarization"] == {"prob": 0.2, "threshold": 128.0}
    assert byol[0]["gaussian_blur"]["kernel_size"] == 23 and byol[0]["random_resized_crop"]["scale"] == (0.08, 1.0)
    dino = resolved["dino"]
    assert [(v["crop_size"], v["num_crops"]) for v in dino] == [(224, 1), (224, 1), (96, 6)]
    weak = resolved["ressl"][1]["color_jitter"]
    assert weak["brightness"] == (1.0, 1.0) and weak["hue"] == (0.0, 0.0) and weak["prob"] == 0.8
    # DALI units: hue in degrees, mean and std of 0-255 pixels, window 23 at 224 px
    args = dali_op_args(byol[0])
    assert args["color_twist"]["hue"] == pytest.approx((-36.0, 36.0))
    assert args["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert args["gaussian_blur"]["window_size"] == 23 and args["crop"]["size"] == (224, 224)
    # a different recipe resolves differently on both paths
    changed = replace(imagenet_recipes("byol")[0], hue=0.2)
    assert dali_view_params(changed, info.mean, info.std) != byol[0]
    assert torchvision_view_params(pretrain_transform("imagenet", [changed]).pipelines[0][0]) != byol[0]


def test_imagenet100_keeps_exactly_the_listed_classes(tmp_path):
    """ImageNet-100 over an ImageNet-like folder: listed wnids only, labels by sorted wnid, others ignored."""
    listed = imagenet100_classes()
    assert len(listed) == 100 and len(set(listed)) == 100 and listed[0] == "n02869837"
    order = sorted(listed)
    unlisted = ["n01440764", "n99999999"]
    assert not set(unlisted) & set(listed)

    full = tmp_path / "imagenet" / "train"
    for wnid in [*listed, *unlisted]:
        (full / wnid).mkdir(parents=True)
        Image.new("RGB", (20, 14), (9, 9, 9)).save(full / wnid / f"{wnid}_1.JPEG")
    ds = build_dataset("imagenet100", full, train=True, transform=None)
    assert isinstance(ds, ImageNet100Folder) and ds.classes == order
    assert [y for _, y in ds.samples] == list(range(100))
    assert all(Path(p).parent.name == order[y] for p, y in ds.samples)
    loader = build_eval_loader("imagenet100", full, train=False, batch_size=4, num_workers=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 1, 2, 3]

    part = tmp_path / "part"
    keep = [order[0], order[50], order[99]]
    for wnid in [*keep, *unlisted]:
        (part / wnid).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20, 14), (9, 9, 9)).save(part / wnid / f"{i}.JPEG")
    sub = ImageNet100Folder(part, allow_missing=True)
    assert len(sub) == 6 and sorted({y for _, y in sub.samples}) == [0, 50, 99]
    assert {Path(p).parent.name for p, _ in sub.samples} == set(keep)
    with pytest.raises(FileNotFoundError, match="lacks 97 of the 100"):
        ImageNet100Folder(part)
    with pytest.raises(FileNotFoundError, match="none of the 100"):
        ImageNet100Folder(part / unlisted[0])
    if dali_available():
        dali = build_dali_pretrain_loader("imagenet100", full, [PLAIN], batch_size=4, num_workers=1, device="cpu")
        assert [Path(f).parent.name for f in dali.files] == order and dali.targets.tolist() == list(range(100))


def _corrupt_folders(root: Path) -> dict[str, tuple[Path, Path]]:
    """Two copies of a 9-image folder, one with a non-image .jpg, one with a truncated JPEG: {kind: (root, bad)}."""
    out = {}
    for kind in ("garbage", "truncated"):
        base = _write_jpegs(root / kind, classes=("a", "b"), per_class=4)
        bad = base / "b" / "zz_bad.jpg"
        if kind == "garbage":
            bad.write_bytes(b"this is not an image " * 20)
        else:
            rng = np.random.default_rng(1)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(bad, quality=90)
            data = bad.read_bytes()
            bad.write_bytes(data[: len(data) // 2])
        out[kind] = (base, bad)
    return out


def test_corrupt_images_fail_with_their_path(tmp_path):
    """An unreadable image stops the torchvision loader (even in a worker) with an error naming the file."""
    for _kind, (root, bad) in _corrupt_folders(tmp_path).items():
        with pytest.raises(UnreadableImageError, match=str(bad)) as info:
            image_loader(bad)
        assert info.value.path == str(bad)
        loader = build_pretrain_loader("custom", root, [PLAIN], batch_size=3, num_workers=1)
        with pytest.raises(UnreadableImageError, match=str(bad)):
            for _ in loader:
                pass


@needs_dali
def test_dali_reports_an_undecodable_image_by_path(tmp_path):
    """The DALI loader stops with UnreadableImageError naming the file (not a silent crash or a skip)."""
    for _kind, (root, bad) in _corrupt_folders(tmp_path).items():
        loader = build_dali_pretrain_loader("custom", root, [PLAIN], batch_size=3, num_workers=1, device="cpu")
        with pytest.raises(UnreadableImageError, match=str(bad)) as info:
            for _ in range(2):
                for _batch in loader:
                    pass
        assert info.value.path == str(bad)


def test_cli_dali_flags_and_usage_errors(tmp_path, monkeypatch, capsys):
    """--dali maps to data.format, ImageNet dirs default to train/val, bad setups are one-line usage errors."""
    argv = ["--method", "byol", "--dataset", "imagenet100", "--data_dir", str(tmp_path), "--dali", "--dry_run"]
    assert pretrain_main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["data"]["format"] == "dali" and cfg["data"]["dali_device"] == "auto"
    assert cfg["data"]["train_path"] == str(tmp_path / "train") and cfg["data"]["val_path"] == str(tmp_path / "val")
    assert cfg["data"]["num_classes"] == 100 and cfg["augmentations"][0]["crop_size"] == 224
    assert pretrain_main([*argv[:-2], "--dry_run"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["format"] == "image_folder"

    assert pretrain_main(["--method", "byol", "--dataset", "cifar10", "--dali", "--dry_run"]) == 2
    assert "--dali: DALI reads image folders" in capsys.readouterr().err

    fake = tmp_path / "in100"
    for wnid in sorted(imagenet100_classes())[:3]:
        (fake / "train" / wnid).mkdir(parents=True)
    assert pretrain_main(["--method", "byol", "--dataset", "imagenet100", "--data_dir", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "lacks 97 of the 100" in err and len(err.strip().splitlines()) == 1

    folder = _write_jpegs(tmp_path / "custom", per_class=2)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    assert pretrain_main(["--method", "byol", "--dataset", "custom", "--data_dir", str(folder), "--dali"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[dali]'" in err and "nvidia-dali-cuda130" in err


@needs_dali
def test_cli_trains_a_few_steps_with_dali_on_cpu(folder, tmp_path):
    """python -m solo_ema.pretrain --dali (CPU pipeline) runs 2 BYOL steps and writes finite losses."""
    cmd = [
        sys.executable, "-m", "solo_ema.pretrain", "--method", "byol", "--dataset", "custom",
        "--data_dir", str(folder), "--dali", "--crop_size", "32", "--batch_size", "4", "--max_steps", "2",
        "--num_workers", "1", "--proj_hidden_dim", "64", "--pred_hidden_dim", "64", "--proj_output_dim", "32",
        "--limit_val_batches", "0", "--log_dir", str(tmp_path), "--name", "dali",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "dali" / "config.json").read_text())
    assert config["data"]["format"] == "dali"
    with open(tmp_path / "dali" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_byol_loss_step"]) for r in rows if r.get("train_byol_loss_step")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(0.0 <= v <= 8.0 for v in losses)  # 2 - 2cos in [0, 4] for each of the 2 ordered crop pairs
    taus = [float(r["tau"]) for r in rows if r.get("tau")]
    assert taus == pytest.approx(logged_taus(2), abs=1e-7)  # one EMA update per step, on the cosine schedule
    acc = [float(r["train_acc1_step"]) for r in rows if r.get("train_acc1_step")]
    assert len(acc) == 2 and all(v in (0.0, 25.0, 50.0, 75.0, 100.0) for v in acc)  # hits out of a batch of 4
