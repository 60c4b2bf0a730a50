"""Data: augmentation recipes, datasets (CIFAR, Fashion-MNIST, ImageNet-1K/100 and other image folders), loaders.

The DALI loader lives in `solo_ema.data.dali` (imported on demand: it needs the `dali` extra only to run).
"""

from solo_ema.data.augment import (
    FLAG_NAMES,
    MultiViewTransform,
    ViewRecipe,
    blur_kernel_size,
    build_view_transform,
    eval_transform,
    recipes_from_flags,
    resolved_view_params,
    torchvision_view_params,
)
from solo_ema.data.datasets import (
    DATASETS,
    DEFAULT_CIFAR_ROOT,
    DEFAULT_FASHION_MNIST_ROOT,
    FOLDER_DATASETS,
    DatasetInfo,
    FashionMNIST,
    ImageNet100Folder,
    IndexedDataset,
    UnreadableImageError,
    build_dataset,
    check_image_folder,
    check_imagenet100_folder,
    image_loader,
    imagenet100_classes,
    num_classes_of,
    read_idx,
)
from solo_ema.data.loaders import build_eval_loader, build_pretrain_loader, pretrain_transform, random_subset
from solo_ema.data.recipes import IMAGENET_METHODS, imagenet_recipes

__all__ = [
    "DATASETS",
    "DEFAULT_CIFAR_ROOT",
    "DEFAULT_FASHION_MNIST_ROOT",
    "DatasetInfo",
    "FLAG_NAMES",
    "FOLDER_DATASETS",
    "FashionMNIST",
    "IMAGENET_METHODS",
    "ImageNet100Folder",
    "IndexedDataset",
    "MultiViewTransform",
    "UnreadableImageError",
    "ViewRecipe",
    "blur_kernel_size",
    "build_dataset",
    "build_eval_loader",
    "build_pretrain_loader",
    "build_view_transform",
    "check_image_folder",
    "check_imagenet100_folder",
    "eval_transform",
    "image_loader",
    "imagenet100_classes",
    "imagenet_recipes",
    "num_classes_of",
    "pretrain_transform",
    "random_subset",
    "read_idx",
    "recipes_from_flags",
    "resolved_view_params",
    "torchvision_view_params",
]
