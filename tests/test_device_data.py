"""Tests of solo_ema.data.device: batched ops against torchvision per sample, samplers, determinism, shards."""

from __future__ import annotations

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from solo_ema.data import ViewRecipe, blur_kernel_size, build_dataset
from solo_ema.data.device import (
    RATIO,
    DeviceEvalLoader,
    DevicePretrainLoader,
    ShardSampler,
    ViewParams,
    augment_views,
    load_split,
    resized_crop,
    sample_crop_boxes,
    sample_view_params,
    seed_for,
)

BICUBIC = TF.InterpolationMode.BICUBIC
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# every op on about half of the crops, so both branches of each are compared
HALF = ViewRecipe(crop_size=16, min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
                  color_jitter_prob=0.5, gray_scale_prob=0.5, gaussian_prob=0.5, solarization_prob=0.5,
                  horizontal_flip_prob=0.5)
JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def _reference(image: torch.Tensor, p: ViewParams, i: int, size: int) -> torch.Tensor:
    """One crop by torchvision.transforms.v2.functional, in the torchvision path's op order (flip last)."""
    top, left, h, w = p.boxes[i].tolist()
    x = TF.crop(image, top, left, h, w)  # PIL's order: the width pass, clipped, then the height pass
    x = TF.resize(x, [h, size], interpolation=BICUBIC, antialias=True).clamp(0, 1)
    x = TF.resize(x, [size, size], interpolation=BICUBIC, antialias=True).clamp(0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if p.jitter[i]:
        for op in p.order[i].tolist():
            x = JITTER_OPS[op](x, float(p.factors[i, op]))
    if p.gray[i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur[i]:
        k = blur_kernel_size(size)
        x = TF.gaussian_blur(x, [k, k], [float(p.sigma[i])] * 2)
    if p.solarize[i]:
        x = TF.solarize(x, 128 / 255)
    if p.flip[i]:
        x = TF.horizontal_flip(x)
    return TF.normalize(x, list(MEAN), list(STD))


@pytest.mark.parametrize(("channels", "height", "width", "size"), [(3, 20, 24, 16), (1, 12, 12, 20), (3, 40, 40, 24)])
def test_augment_views_matches_torchvision_per_sample(channels, height, width, size):
    """Crop (shrink and enlarge), jitter in random order, grayscale, blur, solarize, flip, normalise: all ops."""
    g = torch.Generator().manual_seed(channels * 100 + height)
    images = torch.randint(0, 256, (48, channels, height, width), generator=g, dtype=torch.uint8)
    recipe = replace(HALF, crop_size=size)
    params = sample_view_params(recipe, 48, height, width, g)
    assert params.jitter.any() and (~params.jitter).any() and params.blur.any() and params.solarize.any()
    out = augment_views(images, params, size, MEAN, STD, [recipe])
    ref = torch.stack([_reference(images[i].float() / 255, params, i, size) for i in range(48)])
    assert out.shape == (48, 3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_resized_crop_matches_the_pil_path_within_one_grey_level():
    """uint8 noise: the device crop, rounded, equals PIL's bicubic resized crop (the torchvision path) and
    v2's uint8 one within one grey level (they round between the two passes, the device path does not)."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (32, 3, 32, 32), generator=g, dtype=torch.uint8)
    boxes = sample_crop_boxes(32, 32, 32, (0.08, 1.0), RATIO, g)
    ours = (resized_crop(images.float() / 255, boxes, 32) * 255).round().to(torch.uint8)
    for i in range(32):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        ref = T.functional.resized_crop(pil, *boxes[i].tolist(), [32, 32], interpolation=T.InterpolationMode.BICUBIC)
        diff = (ours[i].int() - torch.from_numpy(np.array(ref)).permute(2, 0, 1).int()).abs()
        assert diff.max() <= 1, (i, boxes[i].tolist())
        uint8 = TF.resized_crop(images[i], *boxes[i].tolist(), [32, 32], interpolation=BICUBIC, antialias=True)
        assert (ours[i].int() - uint8.int()).abs().max() <= 1


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


N_DRAWS = 3000
KS_LIMIT = 1.95 * (2 / N_DRAWS) ** 0.5  # two-sample KS at alpha = 0.001


@pytest.mark.parametrize(("height", "width", "scale"), [(32, 32, (0.08, 1.0)), (24, 40, (0.3, 1.0)), (4, 40, (0.9, 1))])
def test_crop_box_sampler_distribution_matches_random_resized_crop(height, width, scale):
    """(top, left, h, w) draws against RandomResizedCrop.get_params: KS per coordinate (last case: all fallback)."""
    torch.manual_seed(0)
    ref = np.array([T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), list(RATIO))
                    for _ in range(N_DRAWS)])
    ours = sample_crop_boxes(N_DRAWS, height, width, scale, RATIO, torch.Generator().manual_seed(1)).numpy()
    for k, name in enumerate(("top", "left", "height", "width")):
        assert _ks(ours[:, k], ref[:, k]) < KS_LIMIT, name
    assert (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()


def test_jitter_blur_and_coin_samplers_match_torchvision():
    """Jitter factors and order (ColorJitter.get_params), blur sigma (GaussianBlur.get_params), coin rates."""
    torch.manual_seed(0)
    jitter = T.ColorJitter(0.4, 0.3, 0.2, 0.1)
    ref_draws = [T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
                 for _ in range(N_DRAWS)]
    ref_order = np.array([d[0].tolist() for d in ref_draws])
    ref_factors = np.array([d[1:] for d in ref_draws])
    ref_sigma = np.array([T.GaussianBlur.get_params(0.1, 2.0) for _ in range(N_DRAWS)])
    recipe = ViewRecipe(brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1, color_jitter_prob=0.8,
                        gray_scale_prob=0.2, gaussian_prob=0.5, solarization_prob=0.1, horizontal_flip_prob=0.5)
    p = sample_view_params(recipe, N_DRAWS, 32, 32, torch.Generator().manual_seed(2))
    for k in range(4):
        assert _ks(p.factors[:, k].double().numpy(), ref_factors[:, k]) < KS_LIMIT, k
        for pos in range(4):  # how often op k sits at position pos: 1/4 in both
            ours, theirs = (p.order[:, pos] == k).float().mean().item(), (ref_order[:, pos] == k).mean()
            assert abs(ours - 0.25) < 0.035 and abs(ours - theirs) < 0.05
    assert sorted(p.order[0].tolist()) == [0, 1, 2, 3]
    assert _ks(p.sigma.double().numpy(), ref_sigma) < KS_LIMIT
    for mask, prob in ((p.jitter, 0.8), (p.gray, 0.2), (p.blur, 0.5), (p.solarize, 0.1), (p.flip, 0.5)):
        assert abs(mask.float().mean().item() - prob) < 4 * (prob * (1 - prob) / N_DRAWS) ** 0.5


@pytest.mark.parametrize(("size", "world"), [(10, 1), (10, 3), (11, 4), (13, 2), (3, 5)])
def test_shards_follow_distributed_sampler_and_cover_the_split(size, world):
    """Per rank and epoch: DistributedSampler's indices (padding included); together they cover every item."""
    shards = []
    for rank in range(world):
        ours = ShardSampler(size, world, rank, shuffle=True, seed=7)
        ref = DistributedSampler(range(size), num_replicas=world, rank=rank, shuffle=True, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert ours.indices().tolist() == list(ref)
        shards.append(ours.indices().tolist())
        assert len(ours) == len(ref)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(size))
    if size % world == 0:
        assert len(flat) == len(set(flat)) == size  # disjoint
    eval_ref = DistributedSampler(range(size), num_replicas=world, rank=world - 1, shuffle=False)
    assert ShardSampler(size, world, world - 1, shuffle=False).indices().tolist() == list(eval_ref)


def _loader(seed: int = 0, n: int = 24) -> DevicePretrainLoader:
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 5
    recipes = [replace(HALF, crop_size=12, num_crops=2), replace(HALF, crop_size=8, num_crops=1)]
    return DevicePretrainLoader(images, labels, recipes, MEAN, STD, batch_size=8, seed=seed)


def test_loader_batches_are_deterministic_under_a_seed_and_change_with_epoch():
    """Same seed: identical batches; another epoch: another permutation; another seed: other crops."""
    a, b = list(_loader()), list(_loader())
    assert len(a) == 3
    for (ia, ca, ya), (ib, cb, yb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        assert all(torch.equal(x, y) for x, y in zip(ca, cb))
    idx, crops, labels = a[0]
    assert [c.shape for c in crops] == [(8, 3, 12, 12), (8, 3, 12, 12), (8, 3, 8, 8)]
    assert not torch.equal(crops[0], crops[1])  # two crops of one pipeline differ
    assert torch.equal(labels, idx % 5)
    assert sorted(torch.cat([x[0] for x in a]).tolist()) == list(range(24))
    later = _loader()
    later.sampler.set_epoch(1)
    first = next(iter(later))
    assert not torch.equal(first[0], idx)
    resumed = _loader()
    batches = iter(resumed)  # Lightning creates the iterator before it sets the epoch of a resumed run
    resumed.sampler.set_epoch(1)
    again = next(batches)
    assert torch.equal(again[0], first[0]) and torch.equal(again[1][0], first[1][0])
    other = next(iter(_loader(seed=1)))
    assert not torch.equal(other[1][0], crops[0])
    streams = {seed_for(s, r, e) for s in (0, 1) for r in (0, 1) for e in (0, 1)}
    assert len(streams) == 8  # the augmentation stream depends on seed, rank and epoch


def test_a_skip_continues_the_epoch_exactly_and_applies_once():
    """skip_batches = b (a resumed epoch): the loader yields batches b.. of the uninterrupted epoch, images and
    crops bitwise (the epoch's generator is fast-forwarded past the skipped batches' draws); the next iteration
    is a whole epoch again. Also in a later epoch, and after set_epoch on an iterator made before it."""
    for epoch in (0, 2):
        whole = _loader()
        whole.set_epoch(epoch)
        expected = list(whole)
        for skip in (1, 2):
            resumed = _loader()
            resumed.skip_batches = skip
            batches = iter(resumed)
            resumed.set_epoch(epoch)
            got = list(batches)
            assert len(got) == len(expected) - skip
            for (ia, ca, ya), (ib, cb, yb) in zip(got, expected[skip:], strict=True):
                assert torch.equal(ia, ib) and torch.equal(ya, yb)
                assert all(torch.equal(x, y) for x, y in zip(ca, cb, strict=True))
            assert len(list(resumed)) == len(expected), "the skip applies to one epoch only"


def test_placed_loader_shards_by_rank_and_eval_loader_normalises():
    """place(): rank 1 of 2 draws its DistributedSampler shard; the eval loader yields normalised images."""
    loader = _loader(n=32).place("cpu", rank=1, world_size=2)
    ref = DistributedSampler(range(32), num_replicas=2, rank=1, shuffle=True, seed=0)
    assert len(loader) == 2
    assert torch.cat([b[0] for b in loader]).tolist() == list(ref)
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    evaluation = list(DeviceEvalLoader(images, torch.arange(5), MEAN, STD, batch_size=2))
    assert [len(y) for _, y in evaluation] == [2, 2, 1]
    expected = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(torch.cat([x for x, _ in evaluation]), expected)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """A gzip idx file of uint8 data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_load_split_holds_the_torchvision_path_images(tmp_path):
    """Fashion-MNIST (idx files) and a custom folder: the same pixels and labels as the datasets, subset included."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    for split, arr, labels in (("train", train, [3, 1, 4, 1, 5, 9]), ("t10k", train[:2], [2, 6])):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", arr)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.array(labels))
    images, labels = load_split("fashion_mnist", tmp_path, True, subset=4, seed=1)
    ds = build_dataset("fashion_mnist", tmp_path, True, None)
    from solo_ema.data import random_subset

    picked = random_subset(ds, 4, 1)
    assert images.shape == (4, 1, 32, 32) and images.dtype == torch.uint8
    for k in range(4):
        img, label = picked[k]
        assert torch.equal(images[k, 0], torch.from_numpy(np.asarray(img)[:, :, 0])) and labels[k] == label

    folder = tmp_path / "custom"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    images, labels = load_split("custom", folder, True)
    ref = build_dataset("custom", folder, True, None)
    assert images.shape == (4, 3, 10, 12) and labels.tolist() == [0, 0, 1, 1]
    assert all(torch.equal(images[k], torch.from_numpy(np.asarray(ref[k][0])).permute(2, 0, 1)) for k in range(4))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "b" / "small.png")
    with pytest.raises(ValueError, match="share one size"):
        load_split("custom", folder, True)


def _tiny_fashion(root: Path, train: int = 8, test: int = 4) -> Path:
    """Fashion-MNIST idx files of random images (labels 0..9 cycling)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for split, n in (("train", train), ("t10k", test)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_pretrain_with_device_data_trains_and_validates(tmp_path, capsys):
    """solo-ema-pretrain --device_data: 2 steps of BYOL on tiny Fashion-MNIST files, online top-1 and kNN logged."""
    import csv
    import json

    from solo_ema.pretrain import main

    data = _tiny_fashion(tmp_path / "fm")
    argv = ["--method", "byol", "--dataset", "fashion_mnist", "--data_dir", str(data), "--device_data",
            "--crop_size", "16", "--batch_size", "4", "--max_epochs", "1", "--accelerator", "cpu",
            "--proj_hidden_dim", "32", "--pred_hidden_dim", "32", "--proj_output_dim", "16", "--knn_eval",
            "--ema_parts", "projector", "--log_dir", str(tmp_path / "runs"), "--name", "d"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    run = tmp_path / "runs" / "d"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train_byol_loss_step"]) for r in rows if r.get("train_byol_loss_step")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert [r["val_acc1"] for r in rows if r.get("val_acc1")] and [r for r in rows if r.get("val_knn_acc1")]
    assert json.loads((run / "config.json").read_text())["data"]["format"] == "device"


@pytest.mark.parametrize(("extra", "message"), [
    (["--dataset", "imagenet", "--data_dir", "/x"], "--device_data: supports"),
    (["--dataset", "custom", "--data_dir", "/x", "--dali"], "--device_data: give either"),
])
def test_device_data_bad_input_is_one_line_exit_2(capsys, extra, message):
    """--device_data on a dataset it does not hold, or with --dali: exit 2, one line naming the flag."""
    from solo_ema.pretrain import main

    assert main(["--method", "byol", "--device_data", "--dry_run", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"solo-ema-pretrain: error: {message}"), err


def test_benchmark_smoke_reports_both_loaders(tmp_path):
    """benchmarks/device_data.py --tiny --no_step: images/s of the worker and the device loader on the same split."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_data.py"
    spec = importlib.util.spec_from_file_location("device_data_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = _tiny_fashion(tmp_path / "fm", train=16)
    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--no_step", "--device", "cpu", "--data_dir", str(data), "--subset", "16",
                       "--json", str(out)]) == 0
    alone = json.loads(out.read_text())["loader_alone"]
    assert alone["workers"] > 0 and alone["device"] > 0
    assert alone["ratio_device_over_workers"] == pytest.approx(alone["device"] / alone["workers"])
