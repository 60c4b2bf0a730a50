"""Data: the dataset table, augmentation recipes, datasets (CIFAR, Fashion-MNIST, ImageNet-1K/100 and other image
folders), loaders.

Names are loaded from their module on first use, so ``solo_ema.data.catalog`` (the dataset table) and
``solo_ema.data.views`` (view recipes, the augmentation flag table) are read without loading torch. The DALI
loader lives in `solo_ema.data.dali` (imported on demand: it needs the `dali` extra only to run).
"""

from __future__ import annotations

from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "catalog": ("DATASETS", "DATASET_NAMES", "DEFAULT_CIFAR_ROOT", "DEFAULT_FASHION_MNIST_ROOT", "FOLDER_DATASETS",
                "DatasetInfo"),
    "views": ("AUG_FLAGS", "FLAG_NAMES", "ViewRecipe", "recipes_from_flags"),
    "augment": ("MultiViewTransform", "blur_kernel_size", "build_view_transform", "eval_transform",
                "resolved_view_params", "torchvision_view_params"),
    "datasets": ("FashionMNIST", "ImageNet100Folder", "IndexedDataset", "UnreadableImageError", "build_dataset",
                 "check_image_folder", "check_imagenet100_folder", "image_loader", "imagenet100_classes",
                 "num_classes_of", "read_idx"),
    "loaders": ("build_eval_loader", "build_pretrain_loader", "pretrain_transform", "random_subset"),
    "recipes": ("IMAGENET_METHODS", "imagenet_recipes"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first access."""
    module = _MODULE_OF.get(name)
    if module is None:  # also what `from . import <submodule>` below asks first
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import augment, catalog, datasets, loaders, recipes, views

    modules = {"augment": augment, "catalog": catalog, "datasets": datasets, "loaders": loaders, "recipes": recipes,
               "views": views}
    value = getattr(modules[module], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The exported names and the loaded globals."""
    return sorted(set(globals()) | set(__all__))
