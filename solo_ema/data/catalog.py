"""The dataset table: one row of facts per dataset, read by the loaders, the engine and every entry point.

Only the standard library is imported here, so a command line can list the datasets without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DALI_DATASETS",
    "DATASETS",
    "DATASET_NAMES",
    "DEFAULT_CIFAR_ROOT",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DEVICE_DATASETS",
    "FOLDER_DATASETS",
    "IMAGENET_DATASETS",
    "LAYOUTS",
    "SMALL_IMAGE_DATASETS",
    "DatasetInfo",
]

# How a dataset is stored: torchvision's CIFAR files, Fashion-MNIST's idx files, an ImageNet folder with
# train/ and val/ splits of class folders, or one folder of class folders per split (custom).
LAYOUTS = ("torchvision", "idx", "imagenet", "folder")

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_CIFAR_ROOT = "datasets"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; num_classes 0 means 'count the class folders'."""

    name: str
    num_classes: int
    image_size: int  # side of the stored (or evaluated) images, and the default crop size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str  # one of LAYOUTS
    default_dir: str | None = None  # the data folder when none is given
    device_data: bool = False  # --device_data can hold the split on the training device
    dali: bool = False  # --dali can read it (DALI reads image folders)

    @property
    def small_images(self) -> bool:
        """32-px images: the ResNet gets the CIFAR stem (3x3 conv, no max-pool) and crops are 32 px."""
        return self.image_size <= 32

    @property
    def image_folder(self) -> bool:
        """Read with an ImageFolder from one sub-folder per class."""
        return self.layout in ("imagenet", "folder")

    @property
    def split_dirs(self) -> tuple[str, str] | None:
        """(train, val) sub-folders of the data folder, for the ImageNet layout."""
        return ("train", "val") if self.layout == "imagenet" else None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "torchvision",
                    default_dir=DEFAULT_CIFAR_ROOT, device_data=True),
        DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "torchvision",
                    default_dir=DEFAULT_CIFAR_ROOT, device_data=True),
        DatasetInfo("fashion_mnist", 10, 32, (0.2860,) * 3, (0.3530,) * 3, "idx",
                    default_dir=DEFAULT_FASHION_MNIST_ROOT, device_data=True),
        DatasetInfo("imagenet100", 100, 224, _IMAGENET_MEAN, _IMAGENET_STD, "imagenet", dali=True),
        DatasetInfo("imagenet", 1000, 224, _IMAGENET_MEAN, _IMAGENET_STD, "imagenet", dali=True),
        DatasetInfo("custom", 0, 224, _IMAGENET_MEAN, _IMAGENET_STD, "folder", device_data=True, dali=True),
    )
}

DATASET_NAMES = tuple(DATASETS)
SMALL_IMAGE_DATASETS = tuple(n for n, d in DATASETS.items() if d.small_images)
FOLDER_DATASETS = tuple(n for n, d in DATASETS.items() if d.image_folder)
IMAGENET_DATASETS = tuple(n for n, d in DATASETS.items() if d.layout == "imagenet")
DEVICE_DATASETS = tuple(n for n, d in DATASETS.items() if d.device_data)
DALI_DATASETS = tuple(n for n, d in DATASETS.items() if d.dali)
