"""Datasets: CIFAR-10/100, Fashion-MNIST (from idx files), image folders, and an index-returning wrapper."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "DATASETS",
    "DEFAULT_CIFAR_ROOT",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FOLDER_DATASETS",
    "DatasetInfo",
    "FashionMNIST",
    "IndexedDataset",
    "build_dataset",
    "check_image_folder",
    "num_classes_of",
    "read_idx",
]

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_CIFAR_ROOT = "datasets"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; num_classes 0 means 'count the class folders'."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 32, (0.2860,) * 3, (0.3530,) * 3),
    "imagenet100": DatasetInfo("imagenet100", 100, 224, _IMAGENET_MEAN, _IMAGENET_STD),
    "imagenet": DatasetInfo("imagenet", 1000, 224, _IMAGENET_MEAN, _IMAGENET_STD),
    "custom": DatasetInfo("custom", 0, 224, _IMAGENET_MEAN, _IMAGENET_STD),
}

# Datasets read with torchvision's ImageFolder from a root holding one sub-folder per class.
FOLDER_DATASETS = frozenset({"imagenet100", "imagenet", "custom"})

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


class IndexedDataset(Dataset):
    """Wrap a dataset so that item i is (i, x, y)."""

    def __init__(self, dataset: Dataset) -> None:
        """Keep the wrapped dataset."""
        self.dataset = dataset

    def __len__(self) -> int:
        """Return the length of the wrapped dataset."""
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any, Any]:
        """Return (index, x, y)."""
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
    if name in ("cifar10", "cifar100"):
        root = Path(root if root is not None else DEFAULT_CIFAR_ROOT)
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        if not download and not root.is_dir():
            raise FileNotFoundError(f"{name} folder not found: {root} (pass download=True to fetch it)")
        try:
            return cls(str(root), train=train, transform=transform, download=download)
        except RuntimeError as e:
            raise FileNotFoundError(f"{name} not found under {root} ({e})") from e
    if name == "fashion_mnist":
        return FashionMNIST(root, train=train, transform=transform)
    if root is None:
        raise ValueError(f"dataset '{name}' needs a root folder with one sub-folder per class")
    check_image_folder(root)
    return ImageFolder(str(root), transform=transform)


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
