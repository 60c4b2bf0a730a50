"""Tests of solo_ema.data: recipes, transforms, datasets (idx parser, image folders) and loaders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms as T

from solo_ema.data import (
    DATASETS,
    FashionMNIST,
    IndexedDataset,
    MultiViewTransform,
    ViewRecipe,
    blur_kernel_size,
    build_dataset,
    build_eval_loader,
    build_pretrain_loader,
    build_view_transform,
    eval_transform,
    num_classes_of,
    read_idx,
    recipes_from_flags,
)

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST idx files not installed at {FMNIST_ROOT} (apt-get install dataset-fashion-mnist)",
)

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
# All random photometric ops off and scale (1, 1): a square image is only resized to crop_size.
PLAIN = {
    "min_scale": 1.0,
    "max_scale": 1.0,
    "color_jitter_prob": 0.0,
    "gray_scale_prob": 0.0,
    "gaussian_prob": 0.0,
    "solarization_prob": 0.0,
    "horizontal_flip_prob": 0.0,
}


def _normalised(pixels: np.ndarray, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """Reference normalisation of an H x W x 3 uint8 array into a 3 x H x W tensor."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _random_pixels(size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB pixels, size x size x 3."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _make_folder(root: Path, counts: dict[str, int], size: int = 20) -> Path:
    """Write `counts[c]` small PNGs per class folder `c`; pixel value encodes the class index (sorted)."""
    for k, (cls, n) in enumerate(sorted(counts.items())):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size), (10 * k, 100, 7 * i)).save(root / cls / f"img{i}.png")
    return root


def _write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    """Write an idx file by hand (magic 0 0 type ndim, big-endian uint32 dims, big-endian data)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    dtype = np.dtype(arr.dtype)
    payload = bytes([0, 0, codes[dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload += arr.astype(dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


# ----------------------------------------------------------------------------- recipes


def test_recipe_dict_round_trip_and_dictconfig():
    r = ViewRecipe(
        crop_size=24, min_scale=0.2, brightness=0.8, gaussian_prob=0.5, solarization_prob=0.2, num_crops=3
    )
    d = r.to_dict()
    assert d["rrc"] == {"enabled": True, "crop_min_scale": 0.2, "crop_max_scale": 1.0}
    assert d["color_jitter"]["brightness"] == 0.8 and d["gaussian_blur"]["prob"] == 0.5
    assert d["equalization"] == {"prob": 0.0} and d["num_crops"] == 3
    assert ViewRecipe.from_dict(d) == r
    assert ViewRecipe.from_dict(OmegaConf.create(d)) == r


def test_recipe_from_head_yaml_node_and_bad_nodes():
    node = OmegaConf.create(
        {
            "rrc": {"enabled": True, "crop_min_scale": 0.08, "crop_max_scale": 1.0},
            "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
            "grayscale": {"prob": 0.2},
            "gaussian_blur": {"prob": 0.0},
            "solarization": {"prob": 0.2},
            "equalization": {"prob": 0.0},
            "horizontal_flip": {"prob": 0.5},
            "crop_size": 32,
            "num_crops": 1,
        }
    )
    assert ViewRecipe.from_dict(node) == ViewRecipe(solarization_prob=0.2)
    with pytest.raises(ValueError, match="equalization"):
        ViewRecipe.from_dict({"equalization": {"prob": 0.5}})
    with pytest.raises(ValueError, match="rrc.enabled"):
        ViewRecipe.from_dict({"rrc": {"enabled": False}})
    with pytest.raises(ValueError, match="gaussian"):
        ViewRecipe.from_dict({"gaussian": {"prob": 0.5}})
    with pytest.raises(ValueError, match="solarization_prob"):
        ViewRecipe(solarization_prob=1.5)


def test_recipes_from_flags_broadcast_and_per_pipeline():
    recipes = recipes_from_flags(
        [1, 1], brightness=[0.7], hue=[0.1, 0.0], solarization_prob=[0.0, 0.2], crop_size=[24]
    )
    assert [r.num_crops for r in recipes] == [1, 1]
    assert [r.brightness for r in recipes] == [0.7, 0.7]
    assert [r.hue for r in recipes] == [0.1, 0.0]
    assert [r.solarization_prob for r in recipes] == [0.0, 0.2]
    assert all(isinstance(r.crop_size, int) and r.crop_size == 24 for r in recipes)
    # Flags not given keep the ViewRecipe defaults.
    assert all(r.gray_scale_prob == ViewRecipe().gray_scale_prob for r in recipes)
    (single,) = recipes_from_flags([2], gaussian_prob=[0.5], min_scale=0.2, crop_size=[64.0])
    assert single.num_crops == 2 and single.gaussian_prob == 0.5 and single.min_scale == 0.2
    assert type(single.crop_size) is int and single.crop_size == 64


def test_recipes_from_flags_errors_name_the_flag():
    with pytest.raises(ValueError) as e:
        recipes_from_flags([1, 1], gaussian_prob=[0.1, 0.2, 0.3])
    assert str(e.value) == "--gaussian_prob: got 3 values for 2 pipelines (give 1 or 2)"
    with pytest.raises(ValueError, match=r"--crop_size: got 2 values for 3 pipelines \(give 1 or 3\)"):
        recipes_from_flags([1, 1, 2], crop_size=[32, 16])
    with pytest.raises(ValueError, match="--bightness"):
        recipes_from_flags([2], bightness=[0.4])
    with pytest.raises(ValueError, match="equalization"):
        recipes_from_flags([2], equalization_prob=[0.3])
    with pytest.raises(ValueError, match="num_crops_per_aug"):
        recipes_from_flags([])


# ----------------------------------------------------------------------------- transforms


def test_constant_image_crop_equals_normalised_colour():
    colour = (200, 31, 128)
    t = build_view_transform(ViewRecipe(crop_size=16, **PLAIN), MEAN, STD)
    out = t(Image.new("RGB", (40, 40), colour))
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, MEAN, STD)])
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand(3, 16, 16), atol=1e-5, rtol=0)


def test_plain_pipeline_is_exact_normalisation_of_pixels():
    pixels = _random_pixels(16)
    out = build_view_transform(ViewRecipe(crop_size=16, **PLAIN), MEAN, STD)(Image.fromarray(pixels))
    torch.testing.assert_close(out, _normalised(pixels), atol=1e-5, rtol=0)


def test_solarization_prob_one_solarizes():
    pixels = _random_pixels(16, seed=1)
    recipe = ViewRecipe(crop_size=16, **{**PLAIN, "solarization_prob": 1.0})
    out = build_view_transform(recipe, MEAN, STD)(Image.fromarray(pixels))
    reference = np.where(pixels >= 128, 255 - pixels, pixels).astype(np.uint8)
    assert (pixels >= 128).any() and not np.array_equal(reference, pixels)
    torch.testing.assert_close(out, _normalised(reference), atol=1e-5, rtol=0)


def test_zero_probability_ops_are_skipped_and_blur_kernel_is_odd():
    plain = build_view_transform(ViewRecipe(crop_size=16, **PLAIN), MEAN, STD)
    assert [type(op) for op in plain.transforms] == [T.RandomResizedCrop, T.ToTensor, T.Normalize]
    rrc = plain.transforms[0]
    assert rrc.interpolation == T.InterpolationMode.BICUBIC and rrc.scale == (1.0, 1.0)

    full = build_view_transform(
        ViewRecipe(crop_size=224, gaussian_prob=0.5, solarization_prob=0.2), MEAN, STD
    )
    types = [type(op) for op in full.transforms]
    assert types == [
        T.RandomResizedCrop,
        T.RandomApply,
        T.RandomGrayscale,
        T.RandomApply,
        T.RandomSolarize,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    blur = full.transforms[3]
    assert blur.p == 0.5 and isinstance(blur.transforms[0], T.GaussianBlur)
    assert blur.transforms[0].kernel_size == (23, 23) and blur.transforms[0].sigma == (0.1, 2.0)
    assert full.transforms[4].threshold == 128 and full.transforms[4].p == 0.2
    assert [blur_kernel_size(s) for s in (32, 64, 96, 224)] == [3, 7, 9, 23]


def test_gaussian_blur_prob_one_blurs():
    pixels = _random_pixels(32, seed=2)
    recipe = ViewRecipe(crop_size=32, **{**PLAIN, "gaussian_prob": 1.0})
    torch.manual_seed(0)
    out = build_view_transform(recipe, MEAN, STD)(Image.fromarray(pixels))
    sharp = _normalised(pixels)
    # Blur averages neighbours: the image gets smoother (smaller neighbour differences) but keeps its mean.
    assert out.diff(dim=-1).abs().mean() < 0.9 * sharp.diff(dim=-1).abs().mean()
    torch.testing.assert_close(out.mean(), sharp.mean(), atol=0.05, rtol=0)


def test_multiview_two_crops_one_pipeline():
    (recipe,) = recipes_from_flags([2], crop_size=[24])
    mv = MultiViewTransform([(build_view_transform(recipe, MEAN, STD), recipe.num_crops)])
    assert mv.num_crops == 2
    crops = mv(Image.fromarray(_random_pixels(40, seed=3)))
    assert isinstance(crops, list) and len(crops) == 2
    assert all(c.shape == (3, 24, 24) for c in crops)
    assert not torch.equal(crops[0], crops[1])  # independent random crops


def test_multiview_pipeline_order_with_different_crop_sizes():
    recipes = recipes_from_flags([1, 2], crop_size=[32, 16], min_scale=[1.0], max_scale=[1.0])
    mv = MultiViewTransform([(build_view_transform(r, MEAN, STD), r.num_crops) for r in recipes])
    crops = mv(Image.fromarray(_random_pixels(32, seed=4)))
    assert mv.num_crops == 3
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32), (3, 16, 16), (3, 16, 16)]


def test_eval_transform_small_and_large():
    pixels = _random_pixels(32, seed=5)
    small = eval_transform(32, MEAN, STD)
    torch.testing.assert_close(small(Image.fromarray(pixels)), _normalised(pixels), atol=1e-5, rtol=0)
    assert small(Image.fromarray(_random_pixels(50))).shape == (3, 32, 32)  # other sizes get resized
    large = eval_transform(224, MEAN, STD)
    resize = next(op for op in large.transforms if isinstance(op, T.Resize))
    assert resize.size == 256
    assert large(Image.new("RGB", (300, 260), (1, 2, 3))).shape == (3, 224, 224)
    assert eval_transform(64, MEAN, STD, resize=72)(Image.new("RGB", (90, 80))).shape == (3, 64, 64)


# ----------------------------------------------------------------------------- idx / Fashion-MNIST


def test_read_idx_hand_written_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "img.gz", images)
    parsed = read_idx(tmp_path / "img.gz")
    assert parsed.dtype == np.uint8 and parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, images)

    ints = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    _write_idx(tmp_path / "ints", ints, compress=False)
    parsed = read_idx(tmp_path / "ints")
    assert parsed.shape == (2, 2) and parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, ints)

    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(ValueError, match="needs 5 data bytes, found 1"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_class_on_tiny_idx_files(tmp_path):
    rng = np.random.default_rng(6)
    train = rng.integers(1, 256, (3, 28, 28), dtype=np.uint8)
    test = rng.integers(1, 256, (2, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([7, 0, 3], dtype=np.uint8))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 1], dtype=np.uint8))

    ds = FashionMNIST(tmp_path, train=True)
    assert ds._images is None  # lazy
    assert len(ds) == 3
    img, label = ds[2]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    assert label == 3 and type(label) is int
    arr = np.asarray(img)
    assert (
        (arr[:2] == 0).all()
        and (arr[-2:] == 0).all()
        and (arr[:, :2] == 0).all()
        and (arr[:, -2:] == 0).all()
    )
    for c in range(3):
        np.testing.assert_array_equal(arr[2:30, 2:30, c], train[2])

    test_ds = FashionMNIST(tmp_path, train=False, transform=T.ToTensor())
    x, y = test_ds[1]
    assert len(test_ds) == 2 and y == 1 and x.shape == (3, 32, 32)

    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        FashionMNIST(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        FashionMNIST(tmp_path / "no_such_dir")


def test_fashion_mnist_label_count_mismatch(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="expected 2 labels"):
        len(FashionMNIST(tmp_path, train=False))


@needs_fmnist
def test_real_fashion_mnist_loaders():
    recipes = recipes_from_flags([1, 1], crop_size=[32, 24], solarization_prob=[0.0, 0.2])
    loader = build_pretrain_loader(
        "fashion_mnist", None, recipes, batch_size=8, num_workers=0, subset=20, seed=1
    )
    assert len(loader) == 2  # 20 images, drop_last
    indexes, crops, targets = next(iter(loader))
    assert indexes.dtype == torch.int64 and indexes.shape == (8,) and indexes.max() < 20
    assert (
        targets.dtype == torch.int64 and targets.shape == (8,) and targets.min() >= 0 and targets.max() <= 9
    )
    assert [tuple(c.shape) for c in crops] == [(8, 3, 32, 32), (8, 3, 24, 24)]
    assert all(c.dtype == torch.float32 for c in crops)
    # Grey images: the three channels stay equal through every augmentation of this recipe.
    torch.testing.assert_close(crops[0][:, 0], crops[0][:, 2])

    evaluation = build_eval_loader(
        "fashion_mnist", None, train=False, batch_size=16, num_workers=0, subset=20
    )
    batches = list(evaluation)
    assert [len(b[1]) for b in batches] == [16, 4]  # no drop_last
    x = torch.cat([b[0] for b in batches])
    info = DATASETS["fashion_mnist"]
    first = evaluation.dataset.indices[0]
    raw = np.asarray(FashionMNIST(train=False)[first][0])
    torch.testing.assert_close(x[0], _normalised(raw, info.mean, info.std), atol=1e-5, rtol=0)
    assert (raw[:2] == 0).all() and raw.max() > 0  # zero padding around a real image
    again = torch.cat([b[0] for b in evaluation])
    assert torch.equal(x, again)  # deterministic, unshuffled


# ----------------------------------------------------------------------------- image folders, errors


def test_image_folder_labels_and_num_classes(tmp_path):
    root = _make_folder(tmp_path / "train", {"zebra": 2, "ant": 3, "mouse": 1})
    ds = build_dataset("custom", root, train=True, transform=None)
    assert ds.classes == ["ant", "mouse", "zebra"]
    assert len(ds) == 6
    labels = sorted({(Path(p).parent.name, y) for p, y in ds.samples})
    assert labels == [("ant", 0), ("mouse", 1), ("zebra", 2)]
    img, y = ds[5]
    assert y == 2 and np.asarray(img)[0, 0, 0] == 20  # the pixel encodes the class written in that folder
    assert num_classes_of("custom", root) == 3
    assert num_classes_of("cifar100", None) == 100 and num_classes_of("fashion_mnist", None) == 10


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10, cifar100.*fashion_mnist"):
        build_dataset("cifar11", None, train=True, transform=None)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("custom", missing, train=True, transform=None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("cifar10", missing, train=True, transform=None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("fashion_mnist", missing, train=True, transform=None)

    root = _make_folder(tmp_path / "data", {"cat": 1, "dog": 1})
    (root / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty_class contains no images"):
        build_dataset("custom", root, train=True, transform=None)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"flat has no class sub-folders"):
        build_dataset("custom", tmp_path / "flat", train=True, transform=None)
    only_text = tmp_path / "text" / "cls"
    only_text.mkdir(parents=True)
    (only_text / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match=r"cls contains no images"):
        build_dataset("custom", tmp_path / "text", train=True, transform=None)


def test_indexed_dataset():
    base = [("a", 10), ("b", 11), ("c", 12)]
    ds = IndexedDataset(base)
    assert len(ds) == 3
    assert [ds[i] for i in range(3)] == [(0, "a", 10), (1, "b", 11), (2, "c", 12)]


def test_pretrain_loader_on_image_folder_batch_format(tmp_path):
    root = _make_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=40)
    recipes = recipes_from_flags([2], crop_size=[24])
    loader = build_pretrain_loader("custom", root, recipes, batch_size=4, num_workers=0)
    assert len(loader) == 2 and loader.drop_last and loader.pin_memory is False
    assert not loader.persistent_workers
    seen = []
    for batch in loader:
        assert isinstance(batch, list) and len(batch) == 3
        indexes, crops, targets = batch
        assert isinstance(crops, list) and len(crops) == 2
        assert all(c.shape == (4, 3, 24, 24) and c.dtype == torch.float32 for c in crops)
        assert indexes.dtype == torch.int64 and targets.dtype == torch.int64
        for i, y in zip(indexes.tolist(), targets.tolist()):
            assert loader.dataset.dataset.samples[i][1] == y  # index points at the image with that target
        seen += indexes.tolist()
    assert len(seen) == 8 and len(set(seen)) == 8

    with pytest.raises(ValueError, match="fewer than batch_size"):
        build_pretrain_loader("custom", root, recipes, batch_size=16, num_workers=0)
    workers = build_pretrain_loader("custom", root, recipes, batch_size=4, num_workers=1)
    assert workers.persistent_workers and workers.num_workers == 1


def test_subset_is_fixed_by_seed_and_eval_loader_order(tmp_path):
    root = _make_folder(tmp_path / "imgs", {"a": 6, "b": 6}, size=16)
    recipes = [ViewRecipe(crop_size=16)]

    def chosen(seed: int) -> list[int]:
        loader = build_pretrain_loader(
            "custom", root, recipes, batch_size=2, num_workers=0, subset=5, seed=seed
        )
        return list(loader.dataset.dataset.indices)

    assert chosen(3) == chosen(3)
    assert len(chosen(3)) == 5 and chosen(3) != chosen(4)
    assert chosen(3) == sorted(chosen(3))  # a subset keeps the dataset order

    loader = build_eval_loader("custom", root, train=False, batch_size=5, num_workers=0)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 2]
    assert torch.cat([y for _, y in batches]).tolist() == [0] * 6 + [1] * 6
    assert batches[0][0].shape == (5, 3, 224, 224) and batches[0][0].dtype == torch.float32
