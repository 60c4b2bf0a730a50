"""Data: augmentation recipes, datasets (CIFAR, Fashion-MNIST, image folders) and loaders."""

from solo_ema.data.augment import (
    FLAG_NAMES,
    MultiViewTransform,
    ViewRecipe,
    blur_kernel_size,
    build_view_transform,
    eval_transform,
    recipes_from_flags,
)
from solo_ema.data.datasets import (
    DATASETS,
    DEFAULT_CIFAR_ROOT,
    DEFAULT_FASHION_MNIST_ROOT,
    FOLDER_DATASETS,
    DatasetInfo,
    FashionMNIST,
    IndexedDataset,
    build_dataset,
    check_image_folder,
    num_classes_of,
    read_idx,
)
from solo_ema.data.loaders import build_eval_loader, build_pretrain_loader, pretrain_transform, random_subset

__all__ = [
    "DATASETS",
    "DEFAULT_CIFAR_ROOT",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FLAG_NAMES",
    "FOLDER_DATASETS",
    "DatasetInfo",
    "FashionMNIST",
    "IndexedDataset",
    "MultiViewTransform",
    "ViewRecipe",
    "blur_kernel_size",
    "build_dataset",
    "build_eval_loader",
    "build_pretrain_loader",
    "build_view_transform",
    "check_image_folder",
    "eval_transform",
    "num_classes_of",
    "pretrain_transform",
    "random_subset",
    "read_idx",
    "recipes_from_flags",
]
