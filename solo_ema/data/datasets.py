"""Datasets: CIFAR-10/100, Fashion-MNIST (from idx files), image folders (ImageNet-1K, ImageNet-100, custom),
and an index-returning wrapper.

Image folders hold one sub-folder per class (``<root>/<class>/<image>``); labels are the positions of the
class names in sorted order. ImageNet-100 is read from a full ImageNet-1K folder (or from a folder that holds
only its 100 classes) by keeping the classes listed in ``imagenet100_classes.txt``; nothing is copied.

An image that cannot be read (corrupt, truncated, not an image) raises ``UnreadableImageError`` naming its
path when it is loaded: training stops with that message, nothing is skipped silently.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from solo_ema.data.catalog import (
    DATASETS,
    DEFAULT_CIFAR_ROOT,
    DEFAULT_FASHION_MNIST_ROOT,
    FOLDER_DATASETS,
    DatasetInfo,
)

__all__ = [
    "DATASETS",
    "DEFAULT_CIFAR_ROOT",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FOLDER_DATASETS",
    "DatasetInfo",
    "FashionMNIST",
    "ImageNet100Folder",
    "IndexedDataset",
    "UnreadableImageError",
    "build_dataset",
    "check_image_folder",
    "check_imagenet100_folder",
    "image_loader",
    "imagenet100_classes",
    "num_classes_of",
    "read_idx",
]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (gzip-compressed if its name ends in .gz) into a numpy array of its shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(x) for x in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: idx shape {shape} needs {expected} data bytes, found {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


class FashionMNIST(Dataset):
    """Fashion-MNIST from its four idx files, as 32x32 RGB PIL images (28x28 zero-padded by 2 px)."""

    _FILES: ClassVar[dict[bool, tuple[str, str]]] = {
        True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        """Check that the files exist; the arrays are read on first use."""
        self.root = Path(root if root is not None else DEFAULT_FASHION_MNIST_ROOT)
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        if not self.root.is_dir():
            raise FileNotFoundError(f"Fashion-MNIST folder not found: {self.root}")
        self.image_file, self.label_file = (self._find(name) for name in self._FILES[train])
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _find(self, name: str) -> Path:
        """Return the path of `name`.gz (or of the uncompressed file) under root."""
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"Fashion-MNIST file not found: {self.root / (name + '.gz')}")

    def _load(self) -> None:
        """Read and check both idx files once."""
        images = read_idx(self.image_file)
        labels = read_idx(self.label_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{self.image_file}: expected uint8 N x H x W images, got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{self.label_file}: expected {len(images)} labels for {self.image_file}, "
                f"got shape {labels.shape}"
            )
        self._images = images
        self._labels = labels.astype(np.int64)

    @property
    def images(self) -> np.ndarray:
        """All images as a uint8 array N x 28 x 28 (read on first access)."""
        if self._images is None:
            self._load()
        return self._images  # type: ignore[return-value]

    @property
    def targets(self) -> np.ndarray:
        """All labels as an int64 array N (read on first access)."""
        if self._labels is None:
            self._load()
        return self._labels  # type: ignore[return-value]

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Return (32x32 RGB image, possibly transformed; int label, possibly transformed)."""
        gray = np.pad(self.images[index], 2)
        img: Any = Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
        target: Any = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class UnreadableImageError(OSError):
    """An image file that cannot be opened or decoded; the message and `path` name the file."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        """Keep the message (a single argument, so DataLoader workers can re-raise it) and the path."""
        super().__init__(message)
        self.path = None if path is None else str(path)


def image_loader(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; any failure raises UnreadableImageError naming the path."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # forces the decode, so a truncated file fails here
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error ... on bad files
        raise UnreadableImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}", path) from exc


_WNID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def imagenet100_classes() -> tuple[str, ...]:
    """The 100 WordNet ids of ImageNet-100 (the CMC subset used by solo-learn), in the file's order."""
    text = resources.files("solo_ema.data").joinpath("imagenet100_classes.txt").read_text(encoding="utf-8")
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    bad = [w for w in wnids if not _WNID.match(w)]
    if bad or len(wnids) != 100 or len(set(wnids)) != 100:
        raise RuntimeError(
            f"imagenet100_classes.txt is damaged: {len(wnids)} ids, {len(set(wnids))} unique, bad ids {bad[:3]}"
        )
    return wnids


def _subset_classes(
    root: str | os.PathLike, keep: Sequence[str], allow_missing: bool
) -> tuple[list[str], dict[str, int]]:
    """Sorted kept classes and {present class: position in the sorted kept list} for a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(keep)
    present = {e.name for e in os.scandir(root) if e.is_dir()}
    found = [c for c in classes if c in present]
    if not found:
        raise FileNotFoundError(
            f"{root} holds none of the {len(classes)} ImageNet-100 class folders (e.g. {root}/{classes[0]}); "
            "give an ImageNet-1K or ImageNet-100 folder, or use --dataset custom for other folders"
        )
    missing = [c for c in classes if c not in present]
    if missing and not allow_missing:
        raise FileNotFoundError(
            f"{root} lacks {len(missing)} of the {len(classes)} ImageNet-100 class folders: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return classes, {c: i for i, c in enumerate(classes) if c in present}


def check_imagenet100_folder(root: str | os.PathLike, allow_missing: bool = False) -> list[str]:
    """Check that `root` holds the ImageNet-100 class folders (it may hold others); return the present ones."""
    _, class_to_idx = _subset_classes(root, imagenet100_classes(), allow_missing)
    return sorted(class_to_idx)


class ImageNet100Folder(ImageFolder):
    """ImageNet-100 over an ImageNet-1K (or ImageNet-100) folder: only the listed classes, labels 0..99.

    Labels are the positions of the wnids in sorted order, so a class keeps its label whichever folder
    the data comes from; ``classes`` is that sorted list of 100 wnids. Folders of other classes are ignored.
    With ``allow_missing=True`` a folder may lack some listed classes (their labels are then unused);
    otherwise a missing class is an error naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        classes: Sequence[str] | None = None,
        allow_missing: bool = False,
    ) -> None:
        """Index the kept class folders of `root`; images are read with `image_loader`."""
        self.keep = tuple(classes) if classes is not None else imagenet100_classes()
        self.allow_missing = allow_missing
        super().__init__(str(root), transform=transform, target_transform=target_transform, loader=image_loader)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """All kept classes (sorted) and the label of each kept class present under `directory`."""
        return _subset_classes(directory, self.keep, self.allow_missing)


class IndexedDataset(Dataset):
    """Wrap a dataset so that item i is (i, x, y).

    A key (i, seed) draws the item's augmentations from torch's generator seeded with `seed` (the caller's
    generator state is left as it was), so a crop depends only on the key: not on the worker, the number of
    workers, or what ran before it.
    """

    def __init__(self, dataset: Dataset) -> None:
        """Keep the wrapped dataset."""
        self.dataset = dataset

    def __len__(self) -> int:
        """Return the length of the wrapped dataset."""
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, Any, Any]:
        """Return (index, x, y) for a key index or (index, seed)."""
        if isinstance(key, tuple):
            index, seed = key
            gen = torch.default_generator  # CPU transforms draw from it (torch.manual_seed costs ~100x more)
            state = gen.get_state()
            gen.manual_seed(seed)
            try:
                x, y = self.dataset[index]
            finally:
                gen.set_state(state)
        else:
            index = key
            x, y = self.dataset[index]
        return index, x, y


def check_image_folder(root: str | os.PathLike) -> list[str]:
    """Check that `root` holds one non-empty sub-folder of images per class; return the sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    extensions = tuple(IMG_EXTENSIONS)
    for name in classes:
        folder = root / name
        has_image = any(
            f.lower().endswith(extensions) for _, _, files in os.walk(folder, followlinks=True) for f in files
        )
        if not has_image:
            raise ValueError(f"class folder {folder} contains no images (extensions {', '.join(extensions)})")
    return classes


def verify_image_headers(root: str | os.PathLike, limit: int = 50_000) -> int:
    """Open the header of every image under root (up to `limit` files); UnreadableImageError names a bad one.

    Returns the number of files checked (0 when the folder holds more than `limit` images: large datasets
    are checked as they are read instead, which also names the file).
    """
    extensions = tuple(IMG_EXTENSIONS)
    paths = [
        os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True) for f in files
        if f.lower().endswith(extensions)
    ]
    if len(paths) > limit:
        return 0
    for path in paths:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 (parsing the header is the check)
        except Exception as exc:
            raise UnreadableImageError(f"cannot read image {path}: {exc}", path) from None
    return len(paths)


def build_dataset(
    name: str,
    root: str | os.PathLike | None,
    train: bool,
    transform: Callable | None,
    download: bool = False,
) -> Dataset:
    """Build a dataset by name; items are (transformed image, int label)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid names: {', '.join(sorted(DATASETS))}")
    layout = DATASETS[name].layout
    if layout == "torchvision":
        root = Path(root if root is not None else DATASETS[name].default_dir)
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        if not download and not root.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {root} (pass download=True to fetch it)")
        try:
            return cls(str(root), train=train, transform=transform, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(f"{name} not found under {root} ({e})") from e
    if layout == "idx":
        return FashionMNIST(root, train=train, transform=transform)
    if root is None:
        raise ValueError(f"dataset '{name}' needs a root folder with one sub-folder per class")
    if name == "imagenet100":
        return ImageNet100Folder(root, transform=transform)
    check_image_folder(root)
    return ImageFolder(str(root), transform=transform, loader=image_loader)


def num_classes_of(name: str, root: str | os.PathLike | None) -> int:
    """Return the number of classes of a dataset (counting class folders for 'custom')."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; valid names: {', '.join(sorted(DATASETS))}")
    info = DATASETS[name]
    if info.num_classes > 0:
        return info.num_classes
    if root is None:
        raise ValueError(f"dataset '{name}' needs a root folder to count its classes")
    return len(check_image_folder(root))
